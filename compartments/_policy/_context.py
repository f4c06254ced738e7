"""SafetyContext: gather RuleSets, refuse conflicts, compile and apply one filter."""

from __future__ import annotations

import errno as errno_module
import os
import threading
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from ..errors import LandlockError, NoRulesEnabledError, RuleConflictError, UnknownSyscallError
from . import _floor, _landlock, _seccomp
from ._base import BasicCapabilities, CPythonRuntime
from ._grants import Grants
from ._imports import COMMON_CODECS, import_preloads
from ._landlock import LandlockPolicy, PathRule, PortRule, Scope
from ._landlock_abi import ACCESS_FS_READ_FILE
from ._rules import RuleSet, SeccompRule, as_ruleset
from ._seccomp import CompiledRule

__all__ = ["COMMON_CODECS", "SafetyContext"]


#: The base sets' grants, merged once per process (a fork inherits them): every
#: compartment's seal starts from them, on its spawn path.
_base_grants: Grants | None = None


class SafetyContext:
    """A default-deny seccomp policy built from named RuleSets.

    Every syscall no enabled RuleSet allows fails with EPERM (see :meth:`with_errno`).
    A foreign architecture, x32 numbers included, kills the process. Applying also loads
    a small floor filter (``compartments._policy._floor``) that refuses terminal injection,
    signal-aiming fcntl/ioctl commands and F_SETFL flags other than O_NONBLOCK, whatever
    the RuleSets allow.

    Landlock: RuleSets may also grant paths (``SystemIO.allow_read_path()`` ...) and TCP
    ports (``Networking.allow_tcp_connect_port()`` ...). Applying then restricts the
    thread with Landlock first, before the seccomp filter (which denies the landlock
    syscalls) is loaded. Once any path is granted, every file access not granted beneath
    a listed path fails with EACCES; once any port is granted, TCP bind and connect to
    any other port do. One path may be granted by one enabled RuleSet only.
    :meth:`with_landlock` chooses what happens on kernels too old for a right
    (``best_effort``) and cuts IPC leaving the sandbox (``scoped``). Landlock binds only
    the calling thread, so :meth:`apply_to_all_threads` refuses Landlock rules while
    other threads run: apply before starting threads.
    """

    def __init__(self) -> None:
        self._grants = Grants()
        self._enabled: list[str] = []
        self._errno = errno_module.EPERM
        self._landlock_best_effort = False
        self._landlock_scope = Scope.NONE
        self._preload: list[str] = []
        self._codecs = "common"
        global _base_grants
        if _base_grants is None:
            for base in (BasicCapabilities(), CPythonRuntime()):
                self._merge(base, yielding=False)
            _base_grants = self._grants.copy()
        self._grants = _base_grants.copy()

    # -- building -------------------------------------------------------------------

    def enable(self, ruleset: RuleSet | str) -> SafetyContext:
        """Add a RuleSet (or a bare syscall name). Atomic: on error nothing changes."""
        resolved = as_ruleset(ruleset)
        self._merge(resolved, yielding=False)
        self._enabled.append(resolved.name)
        return self

    def enable_yielding(self, ruleset: RuleSet) -> SafetyContext:
        """Add a framework RuleSet whose conditions give way to the user's simple rules."""
        self._merge(as_ruleset(ruleset), yielding=True)
        return self

    def with_errno(self, number: int) -> SafetyContext:
        """Answer denied syscalls with this errno instead of EPERM."""
        if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= 4095:
            raise ValueError(f"with_errno() takes an errno from 1 to 4095, got {number!r}")
        self._errno = number
        return self

    def with_landlock(
        self, *, best_effort: bool = False, scoped: bool | Scope = False
    ) -> SafetyContext:
        """Choose how the Landlock part of the policy is applied (replaces earlier choices).

        ``best_effort=True``: rights the running kernel lacks (truncate before ABI 3, TCP
        ports before ABI 4, scoping before ABI 6, everything without Landlock) are
        dropped with a warning instead of raising UnsupportedError.
        ``scoped=True`` (or a :class:`Scope`): deny connecting to abstract unix sockets
        and signalling processes outside this sandbox (ABI 6), even with no path rules.
        """
        if not isinstance(best_effort, bool):
            raise TypeError(f"with_landlock(best_effort=) takes a bool, got {best_effort!r}")
        if not isinstance(scoped, (bool, Scope)):
            raise TypeError(f"with_landlock(scoped=) takes a bool or a Scope, got {scoped!r}")
        self._landlock_best_effort = best_effort
        self._landlock_scope = Scope.ALL if scoped is True else Scope(int(scoped))
        return self

    def preload(
        self, *modules: str, codecs: Literal["common", "all", "none"] = "common"
    ) -> SafetyContext:
        """Import these modules when applying, before the filter is loaded.

        A sealed thread cannot read the files of a module it imports later (inside a
        compartment, the parent serves those reads; a plain SafetyContext has no parent).
        ``codecs``: ``"common"`` (the default, also without any preload() call: see
        :data:`COMMON_CODECS`), ``"all"`` (every stdlib ``encodings`` module, ~150 ms)
        or ``"none"``. Modules accumulate over calls; ``codecs`` is replaced.
        """
        for module in modules:
            if not isinstance(module, str) or not all(p.isidentifier() for p in module.split(".")):
                raise ValueError(f"preload() takes dotted module names, got {module!r}")
        if codecs not in ("common", "all", "none"):
            raise ValueError(f'preload(codecs=) takes "common", "all" or "none", got {codecs!r}')
        self._preload.extend(modules)
        self._codecs = codecs
        return self

    def _import_preloads(self) -> None:
        import_preloads(self._codecs, self._preload)

    def _merge(self, ruleset: RuleSet, *, yielding: bool) -> None:
        name = str(ruleset.name)
        staged = self._grants.copy()
        new_landlock = _landlock_rules_of(ruleset, name)
        _refuse_raw_mmap(ruleset, name)
        try:
            for syscall in ruleset.simple_rules():
                _seccomp_name(syscall, name)
                staged.add_simple(syscall, name)
            for syscall, rules in ruleset.conditional_rules().items():
                _seccomp_name(syscall, name)
                if yielding and syscall in staged.simple:
                    continue
                for rule in rules:
                    if not isinstance(rule, SeccompRule) or rule.syscall != syscall:
                        raise TypeError(
                            f"RuleSet `{name}`: conditional_rules()[{syscall!r}] must hold "
                            f"SeccompRule({syscall!r}, ...) objects, got {rule!r}"
                        )
                    staged.add_conditional(rule, name)
        except RuleConflictError as exc:
            granting_paths = {
                r.ruleset for r in (*staged.landlock, *new_landlock) if isinstance(r, PathRule)
            }
            simple_grant = staged.simple.get(exc.syscall) == exc.simple_from or (
                exc.simple_from == name and exc.syscall in ruleset.simple_rules()
            )
            if simple_grant and exc.simple_from in granting_paths:
                raise _path_grant_conflict(exc) from None
            raise
        _stage_landlock(staged.landlock, new_landlock, name)
        self._grants = staged

    def _readable_under_landlock(self, paths: Iterable[str], ruleset: str) -> None:
        """If the policy restricts files with Landlock, let it read ``paths`` too.

        A Landlock path grant allows open() for every path and leaves the check to
        Landlock, so a compartment's reads under the import roots reach the kernel, not
        the parent: Landlock itself must allow them, read-only. Paths an enabled RuleSet
        already grants keep that grant.
        """
        if not any(isinstance(r, PathRule) for r in self._grants.landlock):
            return
        granted = {os.path.realpath(r.path) for r in self._grants.landlock
                   if isinstance(r, PathRule)}  # fmt: skip
        self._grants.landlock.extend(
            PathRule(path, _landlock.READ_PATH, ruleset, missing_ok=True)
            for path in paths
            if os.path.realpath(path) not in granted
        )

    def _allows(self, syscall: str, args: Sequence[int]) -> bool:
        """Whether the policy lets this exact call run (not counting the floor filter)."""
        if syscall in self._grants.simple:
            return True
        return any(
            rule.errno is None and rule.holds_for(args)
            for _, rule in self._grants.conditional.get(syscall, ())
        )

    def _readable_paths(self) -> list[str]:
        """The paths the enabled RuleSets' Landlock rules let the sealed process read."""
        return [
            r.path for r in self._grants.landlock
            if isinstance(r, PathRule) and r.access & ACCESS_FS_READ_FILE
        ]  # fmt: skip

    # -- inspecting -------------------------------------------------------------------

    @property
    def enabled(self) -> tuple[str, ...]:
        """Names of the RuleSets enabled by the user, in order."""
        return tuple(self._enabled)

    def allowed_syscalls(self) -> dict[str, list[tuple[str, str]]]:
        """syscall → [(condition text or "" for unconditional, RuleSet name)]."""
        table: dict[str, list[tuple[str, str]]] = {}
        for syscall, source in self._grants.simple.items():
            table.setdefault(syscall, []).append(("", source))
        for syscall, rules in self._grants.conditional.items():
            for source, rule in rules:
                table.setdefault(syscall, []).append((rule.describe(), source))
        return dict(sorted(table.items()))

    def describe(self) -> str:
        """A readable table: each allowed syscall, its conditions and its RuleSet."""
        rows = [("syscall", "allowed when", "RuleSet")]
        for syscall, grants in self.allowed_syscalls().items():
            for condition, source in grants:
                rows.append((syscall, condition or "always", source))
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
            for row in rows
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        lines.append(f"(everything else: {errno_module.errorcode.get(self._errno, self._errno)})")
        refused = errno_module.errorcode[_floor.FLOOR_ERRNO]
        lines += [f"(always {refused}, whatever is allowed: {what})" for what in _floor.describe()]
        return "\n".join(lines)

    def export_pfc(self) -> str:
        """libseccomp's pseudo-filter code for this policy, as text (the floor filter
        loaded beside it is ``compartments._policy._floor``, the same for every policy)."""
        return _seccomp.export_pfc(self._build(tsync=False))

    def export_bpf(self) -> bytes:
        """The raw BPF program this policy loads (besides the fixed floor filter)."""
        return _seccomp.export_bpf(self._build(tsync=False))

    # -- applying ---------------------------------------------------------------------

    def apply_to_current_thread(self) -> None:
        """Seal the calling thread (and anything it later starts)."""
        self._apply(tsync=False)

    def apply_to_all_threads(self) -> None:
        """Seal every thread of the process at once (SECCOMP_FILTER_FLAG_TSYNC)."""
        self._apply(tsync=True)

    def _apply(self, *, tsync: bool) -> None:
        flt = self._build(tsync=tsync)
        floor = _floor.build(tsync=tsync)
        self._import_preloads()
        self._apply_landlock(all_threads=tsync)
        _seccomp.load(floor)  # first: the main filter denies seccomp() itself
        _seccomp.load(flt)

    def apply_with_listener(self) -> int:
        """Seal every thread, sending denied syscalls to a user-notification listener.

        Returns the listener fd: whoever holds it must answer each notification (see
        ``_parent._monitor``), and the sealed process must not keep it, or another of its
        threads could let its own denied calls through.
        """
        flt = self._build(tsync=True, default_action=_seccomp.NOTIFY)
        floor = _floor.build(tsync=True)
        self._import_preloads()
        self._apply_landlock(all_threads=True)
        _seccomp.load(floor)  # its EPERMs win over the listener: never notified
        _seccomp.load(flt)
        return _seccomp.notify_fd(flt)

    def _apply_landlock(self, *, all_threads: bool) -> None:
        """Landlock goes first: the seccomp filter loaded next denies its syscalls."""
        policy = LandlockPolicy(scoped=self._landlock_scope)
        policy.extend(self._grants.landlock)
        if not policy:
            return
        if all_threads:
            _refuse_other_threads()
        policy.apply(best_effort=self._landlock_best_effort)

    def _build(self, *, tsync: bool, default_action: int | None = None) -> Any:
        if not self._enabled:
            raise NoRulesEnabledError()
        if default_action is None:
            default_action = _seccomp.errno_action(self._errno)
        return _seccomp.build_filter(
            self._compiled_rules(), default_action=default_action, tsync=tsync
        )

    def _compiled_rules(self) -> Iterable[CompiledRule]:
        for syscall in self._grants.simple:
            yield CompiledRule(syscall, _seccomp.ALLOW)
        for syscall, rules in self._grants.conditional.items():
            for _, rule in rules:
                action = (
                    _seccomp.ALLOW if rule.errno is None else _seccomp.errno_action(rule.errno)
                )
                yield CompiledRule(syscall, action, tuple(c.comparison for c in rule.conditions))


def _landlock_rules_of(ruleset: RuleSet, name: str) -> list[PathRule | PortRule]:
    """The RuleSet's Landlock rules (none for a plain seccomp RuleSet), type-checked."""
    landlock_rules = getattr(ruleset, "landlock_rules", None)
    found: Sequence[object] = landlock_rules() if callable(landlock_rules) else ()
    rules: list[PathRule | PortRule] = []
    for rule in found:
        if not isinstance(rule, (PathRule, PortRule)):
            raise TypeError(
                f"RuleSet `{name}`: landlock_rules() must hold PathRule or PortRule "
                f"objects, got {rule!r}"
            )
        rules.append(rule)
    return rules


def _stage_landlock(staged: list[Any], new: list[PathRule | PortRule], ruleset: str) -> None:
    """Refuse a path an earlier enabled RuleSet grants; check the rest as apply would."""
    owners = {os.path.realpath(r.path): r for r in staged if isinstance(r, PathRule)}
    for rule in new:
        if not isinstance(rule, PathRule):
            continue
        previous = owners.get(os.path.realpath(rule.path))
        if previous is not None:
            raise LandlockError(_duplicate_path_message(previous, rule, ruleset))
    LandlockPolicy().extend([*staged, *new])  # bad access bits or ports: ValueError now
    staged.extend(new)


def _duplicate_path_message(previous: PathRule, rule: PathRule, ruleset: str) -> str:
    alias = "" if previous.path == rule.path else f" (as {previous.path!r})"
    if previous.ruleset == ruleset:
        who = f"two enabled `{ruleset}` RuleSets"
        fix = f"chain both grants on one {ruleset}"
    else:
        who = f"two RuleSets, `{previous.ruleset}` and `{ruleset}`"
        fix = "grant it from one RuleSet only"
    return f"path {rule.path!r}{alias} is granted by {who}: {fix}"


def _refuse_raw_mmap(ruleset: RuleSet, name: str) -> None:
    """mmap for any arguments would undo the base set's guard on held fds: refuse it.

    A conditional mmap rule is OR-ed with the base set's, as every rule is: that is the
    RuleSet author's explicit choice (``SystemIO.allow_shared_mapping(fd)`` is one).
    """
    unconditional = "mmap" in ruleset.simple_rules() or any(
        isinstance(rule, SeccompRule) and not rule.conditions and rule.errno is None
        for rule in ruleset.conditional_rules().get("mmap", ())
    )
    if not unconditional:
        return
    who = 'Enabling "mmap" by name' if name == "mmap" else f"RuleSet `{name}`"
    raise RuleConflictError(
        "mmap",
        "BasicCapabilities",
        name,
        f"{who} allows `mmap` for any arguments, which would allow "
        "MAP_SHARED mappings of held files: a shared mapping of an fd opened for writing "
        "writes the file even where only reading is granted. BasicCapabilities already "
        "allows anonymous and MAP_PRIVATE mappings; for a shared mapping of one fd, use "
        "SystemIO.nothing().allow_shared_mapping(fd).",
    )


def _path_grant_conflict(exc: RuleConflictError) -> RuleConflictError:
    """The conflict message, plus why path grants need the syscall unconditionally."""
    hint = (
        f" `{exc.simple_from}` grants Landlock paths, which allow `{exc.syscall}` for "
        f"any argument and leave the path check to Landlock: drop the argument-checked "
        f"`{exc.syscall}` grant from `{exc.conditional_from}` (allow_open_readonly() "
        f"for open/openat, allow_stdout()/allow_stderr() for write); to read only, "
        f"allow_read_path() alone grants no write."
    )
    return RuleConflictError(exc.syscall, exc.conditional_from, exc.simple_from, str(exc) + hint)


def _refuse_other_threads() -> None:
    """Landlock binds only the calling thread: refuse to leave others outside it."""
    try:
        count = len(os.listdir("/proc/self/task"))  # native threads too
    except OSError:
        count = threading.active_count()
    if count > 1:
        raise LandlockError(
            f"apply_to_all_threads(): Landlock restricts only the calling thread, but "
            f"{count} threads are running and {count - 1} would escape the path/port "
            f"rules. Apply before starting threads, or use apply_to_current_thread()."
        )


def _seccomp_name(syscall: object, ruleset: str) -> None:
    if not isinstance(syscall, str):
        raise TypeError(f"RuleSet `{ruleset}` names a syscall that is not a str: {syscall!r}")
    try:
        _seccomp.syscall_number(syscall)
    except UnknownSyscallError:
        raise UnknownSyscallError(syscall, ruleset) from None
