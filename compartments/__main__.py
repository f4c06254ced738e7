"""``python -m compartments``: check the kernel, inspect a policy, learn one."""

from __future__ import annotations

import argparse
import ast
import ctypes
import dataclasses
import functools
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ._parent import _broker
from ._policy import _seccomp
from ._text import printable
from .errors import CompartmentsError

PROG = "python -m compartments"

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
        from ._policy._context import SafetyContext
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
        return (_seccomp.LIBRARY, False, True, "",
                f"not found: seccomp cannot be used; {_seccomp.INSTALL_HINT}")  # fmt: skip
    version = _seccomp.libseccomp_version()
    return (f"libseccomp {'.'.join(map(str, version))}", version >= (2, 5, 0), True,
            "new enough", "2.5.0 or newer is needed")  # fmt: skip


def check(_args: argparse.Namespace) -> int:
    from ._policy._landlock import abi_version

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


class CliError(Exception):
    """A failure the CLI reports as one line on stderr, without a traceback."""


def _target(spec: str) -> Any:
    module_name, _, qualname = spec.partition(":")
    if not module_name or not qualname:
        raise CliError(f"expected module:name, got {printable(spec)!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise CliError(f"cannot import {printable(module_name)!r}: {_one_line(exc)}") from None
    for depth, part in enumerate(qualname.split(".")):
        try:
            target = getattr(target, part)
        except AttributeError:
            owner = ".".join([module_name, *qualname.split(".")[:depth]])
            raise CliError(f"{printable(owner)!r} has no attribute {printable(part)!r}") from None
    return target


def _one_line(exc: BaseException) -> str:
    return printable(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__, 300)


def _definition(target: Any) -> Any:
    from ._parent._proxy import CompartmentClass, CompartmentFunction

    if isinstance(target, (CompartmentClass, CompartmentFunction)):
        return target._definition
    raise CliError(f"{printable(repr(target), 100)} is not a @compartment function or class")


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _resolved_rules(spec: str, definition: Any, call_args: list[Any]) -> list[Any]:
    """A callable rules= is evaluated after setup: in a throwaway sealed compartment."""
    from ._parent._resolve import RulesOf
    from ._policy._rules import ruleset_from_data

    module, _, qualname = spec.partition(":")
    name = printable(definition.name)
    try:
        resolver: Any = RulesOf(module, qualname, call_args)  # a Proxy
        with resolver:
            data = resolver.policy()
    except Exception as exc:
        kind = "class's constructor" if definition.is_class else "setup"
        hint = (f"; give the {kind} arguments after the target (Python literals)"
                if isinstance(exc, TypeError) and "argument" in str(exc) else "")  # fmt: skip
        raise CliError(
            f"`{name}` computes its rules= after setup, so its setup ran in a throwaway "
            f"compartment, which failed: {_one_line(exc)}{hint}"
        ) from None
    try:
        return [ruleset_from_data(item) for item in data]
    except Exception as exc:
        raise CliError(f"`{name}`: the throwaway compartment sent an unreadable policy: "
                       f"{_one_line(exc)}") from None  # fmt: skip


def _compartment_context(rulesets: Sequence[Any]) -> Any:
    """The policy exactly as a compartment's child builds it before sealing."""
    from ._child._sealing import sealing_context

    return sealing_context(rulesets, os.getpid())


def inspect_policy(args: argparse.Namespace) -> int:
    from ._policy import _explain

    definition = _definition(_target(args.target))
    call_args = [_literal(a) for a in args.args]
    if callable(definition.rules):
        rulesets = _resolved_rules(args.target, definition, call_args)
    elif call_args:
        raise CliError(f"`{printable(definition.name)}` has fixed rules: arguments are only "
                       "for a compartment whose rules= is a callable")  # fmt: skip
    else:
        rulesets = list(definition.rules)
    try:
        ctx = _compartment_context(rulesets)
    except CompartmentsError as exc:
        raise CliError(f"`{printable(definition.name)}`: {_one_line(exc)}") from None
    if args.pfc:
        print(ctx.export_pfc())
    elif args.bpf:
        with open(args.bpf, "wb") as out:
            out.write(ctx.export_bpf())
        print(f"wrote {args.bpf}")
    elif args.json:
        print(json.dumps(_explain.policy_data(ctx, definition.name), indent=2))
    else:
        print(_explain.policy_text(ctx, definition.name))
    return 0


def list_rulesets(args: argparse.Namespace) -> int:
    from .rulesets._catalog import catalog, catalog_text

    entries = catalog(args.only or "")
    if not entries:
        raise CliError(f"no builtin RuleSet or method {printable(args.only)!r}")
    print(json.dumps(entries, indent=2) if args.json else catalog_text(entries))
    return 0


def _learn_program(args: argparse.Namespace) -> int:
    """Run a whole program with every compartment in learn mode, as minijail's and SAPI's
    policy generators do: each compartment prints its learned policy when it closes."""
    import runpy

    from ._parent._learn import learn_everything

    if args.module:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())  # as python -m does
        try:
            found = importlib.util.find_spec(args.module)
        except Exception as exc:
            raise CliError(f"cannot run {printable(args.module)!r}: {_one_line(exc)}") from None
        if found is None:
            raise CliError(f"cannot run {printable(args.module)!r}: no such module")
    learn_everything()
    if args.module:
        sys.argv = [args.module, *args.args]
        run: Callable[[], object] = functools.partial(
            runpy.run_module, args.module, run_name="__main__", alter_sys=True
        )
    else:
        script = os.path.abspath(args.target)
        sys.argv = [script, *args.args]
        sys.path.insert(0, os.path.dirname(script))
        run = functools.partial(runpy.run_path, script, run_name="__main__")
    print(f"# {PROG} learn: every compartment runs UNSAFE in learn mode; each prints its "
          "learned policy to stderr when it closes", file=sys.stderr)  # fmt: skip
    try:
        run()
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            return stop.code or 0
        print(stop.code, file=sys.stderr)  # as the interpreter does with sys.exit("why")
        return 1
    return 0


def _is_program(args: argparse.Namespace) -> bool:
    if args.module:
        if args.target is not None:
            args.args.insert(0, args.target)
        return True
    if args.target is None:
        raise CliError("give module:function, a script.py or -m module")
    if ":" not in args.target:
        if not os.path.isfile(args.target):
            raise CliError(f"{printable(args.target)!r} is neither module:function nor a file")
        return True
    return False


def learn(args: argparse.Namespace) -> int:
    from ._parent._definition import NEVER, Definition
    from ._parent._proxy import CompartmentClass, CompartmentFunction
    from ._parent._supervised import Supervised

    if _is_program(args):
        return _learn_program(args)
    target = _target(args.target)
    if isinstance(target, (CompartmentFunction, CompartmentClass)):
        definition = dataclasses.replace(target._definition, learn=True, fresh=False)
    elif callable(target):
        definition = Definition(target, (), args.target, None, NEVER, None, False,
                                64 << 20, learn=True)  # fmt: skip
    else:
        raise CliError(f"{printable(args.target)} is not callable")
    call_args = [_literal(a) for a in args.args]
    if definition.is_class:
        raise CliError("learn runs functions; for a class, use @compartment(learn=True)")
    supervised = Supervised(definition, (), {})
    shown = f"{printable(args.target)}({', '.join(printable(repr(a), 100) for a in call_args)})"
    code = 0
    try:
        try:
            result = supervised.call("__call__", call_args, {}, None)
            print(f"# {shown} returned {printable(repr(result), 200)}")
        except Exception as exc:  # the policy of what it did until then is still worth it
            print(f"# {shown} raised {_one_line(exc)}")
            code = 1
        policy = supervised.learned_policy()
        if policy.rulesets or policy.calls:
            print(policy.code)
        else:
            print("# it made no syscall beyond the base set: it needs no grant, "
                  "rules=[SystemIO.nothing()] (or no rules=) seals it")  # fmt: skip
    finally:
        supervised.violations.observed.clear()  # printed above; not again at close
        supervised.close()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Privilege-separated Python: check this machine, inspect a compartment's "
        "policy, list the builtin RuleSets, or learn a policy from a real run.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check_cmd = commands.add_parser(
        "check", help="what this kernel and libseccomp support, and what follows",
        description="Probe libseccomp, seccomp, TSYNC, user notification, Landlock and user "
        "namespaces (in throwaway child processes). Exits 1 if essentials are missing.",
    )  # fmt: skip
    check_cmd.set_defaults(run=check)
    inspect_cmd = commands.add_parser(
        "inspect", help="print a compartment's resolved policy",
        description="Each allowed syscall, its conditions (decoded: fcntl(fd, F_SETLK)) and "
        "the RuleSet it came from, including the framework's own runtime rules, then the "
        "Landlock paths, ports and scope. A compartment whose rules= is a callable "
        "computes them after setup: its setup runs in a throwaway sealed compartment, "
        "with ARGS as the constructor's arguments.",
    )  # fmt: skip
    inspect_cmd.add_argument("target", help="module:name of a @compartment function or class")
    inspect_cmd.add_argument(
        "args", nargs="*", help="constructor arguments for a callable rules= (Python literals, "
        "else strings)",
    )  # fmt: skip
    export = inspect_cmd.add_mutually_exclusive_group()
    export.add_argument("--json", action="store_true", help="print the policy as JSON")
    export.add_argument("--pfc", action="store_true", help="print libseccomp pseudo-filter code")
    export.add_argument("--bpf", metavar="FILE", help="write the raw BPF program to FILE")
    inspect_cmd.set_defaults(run=inspect_policy)
    rulesets_cmd = commands.add_parser(
        "rulesets", help="list every builtin RuleSet method and exactly what it allows",
        description="Each builtin RuleSet method, built for real (an fd, path or port "
        "parameter is shown by its name), with the syscalls, conditions and Landlock "
        "rights it adds beyond nothing(), as systemd-analyze syscall-filter lists groups.",
    )  # fmt: skip
    rulesets_cmd.add_argument("only", nargs="?", help="one RuleSet (SystemIO) or method "
                              "(SystemIO.allow_read_path)")  # fmt: skip
    rulesets_cmd.add_argument("--json", action="store_true", help="print the list as JSON")
    rulesets_cmd.set_defaults(run=list_rulesets)
    learn_cmd = commands.add_parser(
        "learn", help="run a function UNSAFELY, recording syscalls, and print a policy",
        description="LEARN MODE IS UNSAFE: the function runs in a compartment where every "
        "syscall its policy denies is allowed and recorded. Prints a minimal suggested "
        "policy built from the builtin RuleSets, as Python code, also when the function "
        "raises (then exits 1). With a script.py or -m MODULE, runs that program with "
        "every compartment in learn mode; each prints its policy to stderr at close.",
    )  # fmt: skip
    learn_cmd.add_argument("-m", dest="module", metavar="MODULE",
                           help="run MODULE as a program (as python -m MODULE does), every "
                           "compartment in learn mode")  # fmt: skip
    learn_cmd.add_argument("target", nargs="?", help="module:name of a module-level function, "
                           "or a script.py to run, every compartment in learn mode")  # fmt: skip
    learn_cmd.add_argument("args", nargs=argparse.REMAINDER,
                           help="the function's arguments (Python literals, else strings), "
                           "or the program's")  # fmt: skip
    learn_cmd.set_defaults(run=learn)
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
        sys.stdout.flush()
    except BrokenPipeError:
        _discard_stdout()
        print(f"{PROG} {args.command}: output closed early (broken pipe)", file=sys.stderr)
        return 1
    except CliError as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return code


def _discard_stdout() -> None:
    """After EPIPE, point stdout at /dev/null: the interpreter flushes it again at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
