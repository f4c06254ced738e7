"""Held fds as write primitives (issue 12, class 6), attacked from sealed compartments.

- a shared mapping writes through a read-only grant (mmap is MAP_PRIVATE-only for files);
- F_SETFL on a passed fd changes the parent's own file description;
- TIOCSTI and friends type into a terminal the compartment holds.

Each attack test checks what the parent sees (the bytes on disk, its fd's flags, its
terminal's input queue), not only the errno the compartment got.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from filters_attacks import (
    F_GETOWN,
    F_SETFL,
    F_SETOWN,
    HIGH,
    MAP_PRIVATE,
    MAP_SHARED,
    MAP_SHARED_VALIDATE,
    PAGE,
    PROT_READ,
    TIOCSTI,
    AnonymousMemory,
    GrowingDatabase,
    IoctlHolder,
    PassedFdHolder,
    ReadOnlyFile,
    ReadOnlyFileWithFcntl,
    SharedMappingGranted,
    errno_name,
)

from compartments import Fd

pytestmark = pytest.mark.timeout(60)

CONTENT = b"must survive".ljust(PAGE, b".")


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim.bin"
    path.write_bytes(CONTENT)
    return path


@pytest.fixture
def read_only(victim: Path) -> Iterator[ReadOnlyFile]:
    with ReadOnlyFile(str(victim)) as attacker:
        yield attacker


# -- MAP_SHARED through a read-only grant ---------------------------------------------------


def test_shared_writable_mapping_of_a_read_only_grant_leaves_the_file(
    read_only: ReadOnlyFile, victim: Path
) -> None:
    """The issue's example: r+b in setup, allow_file_read() only, raw mmap(MAP_SHARED)."""
    err = read_only.raw_map(MAP_SHARED)
    assert victim.read_bytes() == CONTENT
    assert err == errno.EPERM, errno_name(err)


def test_stdlib_mmap_shared_write_leaves_the_file(victim: Path) -> None:
    """mmap.mmap(fd, n, MAP_SHARED, PROT_WRITE); fcntl is granted so its dup() works."""
    with ReadOnlyFileWithFcntl(str(victim)) as attacker:
        err = attacker.stdlib_map()
    assert victim.read_bytes() == CONTENT
    assert err == errno.EPERM, errno_name(err)


def test_map_shared_validate_is_not_a_private_mapping(
    read_only: ReadOnlyFile, victim: Path
) -> None:
    err = read_only.raw_map(MAP_SHARED_VALIDATE)
    assert victim.read_bytes() == CONTENT
    assert err == errno.EPERM, errno_name(err)


def test_read_only_shared_mapping_cannot_be_made_writable_by_mprotect(
    read_only: ReadOnlyFile, victim: Path
) -> None:
    err = read_only.raw_map(MAP_SHARED, prot=PROT_READ, upgrade=True)
    assert victim.read_bytes() == CONTENT
    assert err == errno.EPERM, errno_name(err)


def test_high_flag_bits_do_not_make_a_shared_mapping_pass_as_private(
    read_only: ReadOnlyFile, victim: Path
) -> None:
    """The kernel ignores unknown high bits of MAP_SHARED; the filter must not see MAP_PRIVATE."""
    err = read_only.raw_map(MAP_SHARED | (MAP_PRIVATE << 32))
    assert victim.read_bytes() == CONTENT
    assert err == errno.EPERM, errno_name(err)


def test_passed_read_write_memfd_cannot_be_mapped_shared() -> None:
    memfd = os.memfd_create("victim")
    try:
        os.write(memfd, CONTENT)
        with PassedFdHolder(Fd(memfd)) as holder:
            err = holder.map_and_write(MAP_SHARED)
        assert os.pread(memfd, len(CONTENT), 0) == CONTENT
        assert err == errno.EPERM, errno_name(err)
    finally:
        os.close(memfd)


# -- controls: what must keep working ---------------------------------------------------------


def test_private_file_mapping_reads_the_file_and_never_writes_it(
    read_only: ReadOnlyFile, victim: Path
) -> None:
    err, seen = read_only.private_map()
    assert (errno_name(err), seen) == ("ok", CONTENT[:16])
    assert victim.read_bytes() == CONTENT


def test_mremap_keeps_a_private_mapping_private(read_only: ReadOnlyFile, victim: Path) -> None:
    """MREMAP_DONTUNMAP moves, growing resizes: neither makes the mapping shared."""
    err = read_only.private_map_moved()
    assert err in (0, errno.EINVAL), errno_name(err)  # EINVAL: a kernel without DONTUNMAP
    assert victim.read_bytes() == CONTENT


def test_remap_file_pages_is_not_granted(read_only: ReadOnlyFile) -> None:
    assert errno_name(read_only.remap_file_pages()) == "EPERM"


def test_shared_anonymous_memory_works_sealed() -> None:
    with AnonymousMemory() as memory:
        assert memory.shared_anonymous() == b"helloworld"


def test_allow_shared_mapping_grants_exactly_the_named_fd(tmp_path: Path) -> None:
    granted, other = tmp_path / "granted.bin", tmp_path / "other.bin"
    granted.write_bytes(CONTENT)
    other.write_bytes(CONTENT)
    with SharedMappingGranted(str(granted), str(other)) as attacker:
        assert errno_name(attacker.raw_map(MAP_SHARED)) == "ok"
        assert errno_name(attacker.raw_map_other(MAP_SHARED)) == "EPERM"
    assert granted.read_bytes().startswith(b"PWNED")
    assert other.read_bytes() == CONTENT


def test_example_database_grows_its_shared_index_after_the_seal(tmp_path: Path) -> None:
    """SQLite maps a new -shm region once the WAL passes 4062 frames: after the seal."""
    with GrowingDatabase(str(tmp_path)) as db:
        assert db.write_batch(6000, 1000) == 6000
    assert (tmp_path / "board.db-shm").stat().st_size > 32 * 1024  # a second region


# -- F_SETFL on a description shared with the parent ------------------------------------------


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    yield read_end, write_end
    os.close(read_end)
    os.close(write_end)


def _flags(fd: int) -> int:
    return fcntl.fcntl(fd, fcntl.F_GETFL)


def test_setfl_o_direct_in_the_channel_block_leaves_the_parents_flags(
    pipe: tuple[int, int],
) -> None:
    """The issue's example: dup3 a shared fd into the block, F_SETFL O_DIRECT there."""
    _, write_end = pipe
    before = _flags(write_end)
    with PassedFdHolder(Fd(write_end)) as holder:
        err = holder.setfl_in_block(F_SETFL, before | os.O_DIRECT)
    assert _flags(write_end) == before
    assert err == errno.EPERM, errno_name(err)


@pytest.mark.parametrize("flag", ["O_APPEND", "O_NOATIME"])
def test_setfl_in_the_channel_block_cannot_change_a_passed_files_flags(
    victim: Path, flag: str
) -> None:
    with open(victim, "r+b", buffering=0) as handle:
        before = _flags(handle.fileno())
        with PassedFdHolder(Fd(handle)) as holder:
            err = holder.setfl_in_block(F_SETFL, before | getattr(os, flag))
        assert _flags(handle.fileno()) == before
    assert err == errno.EPERM, errno_name(err)


def test_setfl_with_high_command_bits_is_still_setfl(pipe: tuple[int, int]) -> None:
    """The kernel truncates fcntl's cmd to 32 bits: F_SETFL | 1 << 32 is F_SETFL."""
    _, write_end = pipe
    before = _flags(write_end)
    with PassedFdHolder(Fd(write_end)) as holder:
        err = holder.setfl_in_block(F_SETFL | HIGH, before | os.O_DIRECT)
    assert _flags(write_end) == before
    assert err == errno.EPERM, errno_name(err)


def test_setfl_through_allow_ioctl_leaves_the_parents_flags(pipe: tuple[int, int]) -> None:
    _, write_end = pipe
    before = _flags(write_end)
    with IoctlHolder(Fd(write_end)) as holder:
        err = holder.fcntl(F_SETFL, before | os.O_DIRECT)
    assert _flags(write_end) == before
    assert err == errno.EPERM, errno_name(err)


@pytest.fixture
def sleeper() -> Iterator[int]:
    """A harmless process for SIGIO to be aimed at (never the test runner itself)."""
    process = subprocess.Popen(["sleep", "60"])
    yield process.pid
    process.kill()
    process.wait()


def test_sigio_cannot_be_aimed_through_a_shared_description(
    pipe: tuple[int, int], sleeper: int
) -> None:
    read_end, _ = pipe
    before = _flags(read_end)
    try:
        with IoctlHolder(Fd(read_end)) as holder:
            steps = holder.arm_sigio(sleeper)
        owner, flags = fcntl.fcntl(read_end, F_GETOWN), _flags(read_end)
    finally:  # disarm before anything can make the pipe readable
        fcntl.fcntl(read_end, F_SETOWN, 0)
        fcntl.fcntl(read_end, fcntl.F_SETFL, before)
    assert (owner, flags) == (0, before)
    assert {step: errno_name(err) for step, err in steps.items()} == dict.fromkeys(steps, "EPERM")


def test_o_nonblock_toggling_still_works(pipe: tuple[int, int]) -> None:
    """Control: the runtime's own need (os.set_blocking) in the block and under allow_ioctl."""
    read_end, write_end = pipe
    with PassedFdHolder(Fd(read_end)) as holder:
        assert errno_name(holder.set_blocking_in_block(False)) == "ok"
        assert not os.get_blocking(read_end)
        assert errno_name(holder.set_blocking_in_block(True)) == "ok"
    with IoctlHolder(Fd(write_end)) as holder:
        assert errno_name(holder.set_blocking(False)) == "ok"
        assert not os.get_blocking(write_end)
        assert errno_name(holder.set_blocking(True)) == "ok"
    assert os.get_blocking(read_end) and os.get_blocking(write_end)


# -- a terminal the compartment holds ---------------------------------------------------------
#
# A compartment's controlling terminal is its parent's (the zygote stays in the parent's
# session), and for its own controlling terminal TIOCSTI needs no capability. So each
# attack runs in a fresh process whose controlling terminal is a new pty, as a parent
# started from a shell is: the compartment it starts holds that pty's slave, and the
# process reads the master (the echo) and the slave's input queue.

REPO = Path(__file__).resolve().parents[2]


def _in_tty_session(method: str, *args: object) -> dict[str, object]:
    code = (
        "import sys; sys.path.insert(0, 'tests/hostile'); import filters_attacks; "
        f"filters_attacks.tty_session({method!r}, *{args!r})"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, timeout=50, check=False
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


@pytest.mark.parametrize("command", [TIOCSTI, TIOCSTI | HIGH], ids=["TIOCSTI", "TIOCSTI|1<<32"])
def test_tiocsti_under_allow_ioctl_types_nothing(command: int) -> None:
    outcome = _in_tty_session("inject", command, b"echo RTINJECT\n")
    assert (outcome["echoed"], outcome["pending"]) == ("", 0)
    assert {errno_name(e) for e in outcome["steps"]} == {"EPERM"}  # type: ignore[attr-defined]


def test_tioclinux_paste_under_allow_ioctl_is_refused() -> None:
    outcome = _in_tty_session("linux_paste")
    assert (outcome["echoed"], outcome["pending"]) == ("", 0)
    steps: dict[str, int] = outcome["steps"]  # type: ignore[assignment]
    assert {step: errno_name(err) for step, err in steps.items()} == dict.fromkeys(steps, "EPERM")


def test_allow_ioctl_still_answers_ordinary_terminal_ioctls() -> None:
    """Control: TCGETS (isatty) is not a terminal-injection command."""
    master, slave = os.openpty()
    try:
        with IoctlHolder(Fd(slave)) as holder:
            assert holder.isatty() is True
    finally:
        os.close(master)
        os.close(slave)
