"""``python -m compartments``: check the kernel, inspect a policy, learn one."""

from __future__ import annotations

import argparse
import ast
import ctypes
import dataclasses
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import _broker, _seccomp

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER = 0x10000000


def _in_child(probe: Callable[[], bool]) -> bool:
    """Run a probe that may load a filter in a throwaway child: never in this process."""
    pid = os.fork()
    if pid == 0:
        try:
            os._exit(0 if probe() else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def _probe_filter(*, tsync: bool = False, notify: bool = False) -> Callable[[], bool]:
    def probe() -> bool:
        from ._context import SafetyContext
        from .rulesets import SystemIO

        ctx = SafetyContext().enable(SystemIO.nothing())
        if notify:
            os.close(ctx.apply_with_listener())
        elif tsync:
            ctx.apply_to_all_threads()
        else:
            ctx.apply_to_current_thread()
        return True

    return probe


def _probe_userns() -> bool:
    os.setgroups([])
    os.setresgid(65534, 65534, 65534)
    os.setresuid(65534, 65534, 65534)
    return bool(_libc.unshare(CLONE_NEWUSER) == 0)


def _libseccomp_row() -> tuple[str, bool, bool, str, str]:
    if not _seccomp.available():
        return (f"{_seccomp.LIBRARY}", False, True, "",
                f"not found: seccomp cannot be used; {_seccomp.INSTALL_HINT}")  # fmt: skip
    version = _seccomp.libseccomp_version()
    return (f"libseccomp {'.'.join(map(str, version))}", version >= (2, 5, 0), True,
            "new enough", "2.5.0 or newer is needed")  # fmt: skip


def check(_args: argparse.Namespace) -> int:
    from ._landlock import abi_version

    abi = abi_version()
    served, served_why = _broker.mode()
    rows = [_libseccomp_row()]
    rows += [
        ("seccomp filters", _in_child(_probe_filter()), True,
         "compartments can be sealed", "nothing can be sealed: compartments cannot run"),
        ("TSYNC (all threads)", _in_child(_probe_filter(tsync=True)), True,
         "a compartment is sealed process-wide", "compartments cannot be sealed safely"),
        ("user notification", _in_child(_probe_filter(notify=True)), False,
         "denials are reported as PolicyViolation; learn mode works",
         "denials are plain EPERM; no learn mode"),
        ("import roots served", served, False,
         "sealed code imports lazily and reads package data under the stdlib and "
         "site-packages", f"{served_why}: stdlib codecs are preloaded, other lazy imports "
         "fail naming the module"),
        (f"Landlock (ABI {abi})", abi > 0, False,
         "path and port grants are enforced" + ("" if abi >= 4 else " (no TCP port rules)"),
         "path and port grants cannot be enforced"),
        ("unprivileged user namespaces", _in_child(_probe_userns), False,
         "Isolate works", "Isolate is unavailable"),
    ]  # fmt: skip
    essentials_missing = False
    for name, ok, essential, if_yes, if_no in rows:
        print(f"{'yes' if ok else 'NO ':3}  {name:30} {if_yes if ok else if_no}")
        essentials_missing |= essential and not ok
    return 1 if essentials_missing else 0


def _target(spec: str) -> Any:
    module_name, _, qualname = spec.partition(":")
    if not module_name or not qualname:
        raise SystemExit(f"expected module:target, got {spec!r}")
    sys.path.insert(0, os.getcwd())
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    return target


def _definition(target: Any) -> Any:
    from ._proxy import CompartmentClass, CompartmentFunction

    if isinstance(target, (CompartmentClass, CompartmentFunction)):
        return target._definition
    raise SystemExit(f"{target!r} is not a @compartment function or class")


def inspect_policy(args: argparse.Namespace) -> int:
    from ._context import SafetyContext
    from .rulesets.runtime import ChannelRuntime

    definition = _definition(_target(args.target))
    if callable(definition.rules):
        print("rules= is a callable evaluated in the child after setup; "
              "it cannot be resolved here", file=sys.stderr)  # fmt: skip
        return 2
    ctx = SafetyContext()
    for ruleset in definition.rules or ["exit_group"]:
        ctx.enable(ruleset)
    ctx.enable_yielding(ChannelRuntime())
    if args.pfc:
        print(ctx.export_pfc())
    elif args.bpf:
        with open(args.bpf, "wb") as out:
            out.write(ctx.export_bpf())
        print(f"wrote {args.bpf}")
    else:
        print(f"compartment `{definition.name}`: RuleSets {', '.join(ctx.enabled) or '(none)'}")
        print(ctx.describe())
    return 0


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def learn(args: argparse.Namespace) -> int:
    from ._proxy import CompartmentClass, CompartmentFunction
    from ._supervised import NEVER, Definition, Supervised

    target = _target(args.target)
    if isinstance(target, (CompartmentFunction, CompartmentClass)):
        definition = dataclasses.replace(target._definition, learn=True, fresh=False)
    elif callable(target):
        definition = Definition(target, (), args.target, None, NEVER, None, False,
                                64 << 20, learn=True)  # fmt: skip
    else:
        raise SystemExit(f"{args.target} is not callable")
    call_args = [_literal(a) for a in args.args]
    if definition.is_class:
        raise SystemExit("learn runs functions; for a class, use @compartment(learn=True)")
    supervised = Supervised(definition, (), {})
    try:
        result = supervised.call("__call__", call_args, {}, None)
        print(f"# {args.target}({', '.join(map(repr, call_args))}) returned {result!r}")
        print(supervised.learned_policy().code)
    finally:
        supervised.violations.observed.clear()  # printed above; not again at close
        supervised.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m compartments",
        description="Privilege-separated Python: check this machine, inspect a compartment's "
        "policy, or learn one from a real run.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check_cmd = commands.add_parser(
        "check", help="what this kernel and libseccomp support, and what follows",
        description="Probe seccomp, TSYNC, user notification, Landlock, user namespaces "
        "and libseccomp (in throwaway child processes). Exits 1 if essentials are missing.",
    )  # fmt: skip
    check_cmd.set_defaults(run=check)
    inspect_cmd = commands.add_parser(
        "inspect", help="print a compartment's resolved policy",
        description="Each allowed syscall, its conditions and the RuleSet it came from, "
        "including the framework's own runtime rules.",
    )  # fmt: skip
    inspect_cmd.add_argument("target", help="module:name of a @compartment function or class")
    export = inspect_cmd.add_mutually_exclusive_group()
    export.add_argument("--pfc", action="store_true", help="print libseccomp pseudo-filter code")
    export.add_argument("--bpf", metavar="FILE", help="write the raw BPF program to FILE")
    inspect_cmd.set_defaults(run=inspect_policy)
    learn_cmd = commands.add_parser(
        "learn", help="run a function UNSAFELY, recording syscalls, and print a policy",
        description="LEARN MODE IS UNSAFE: the function runs in a compartment where every "
        "syscall its policy denies is allowed and recorded. Prints a minimal suggested "
        "policy built from the builtin RuleSets, as Python code.",
    )  # fmt: skip
    learn_cmd.add_argument("target", help="module:name of a module-level function")
    learn_cmd.add_argument("args", nargs="*", help="arguments (Python literals, else strings)")
    learn_cmd.set_defaults(run=learn)
    args = parser.parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
