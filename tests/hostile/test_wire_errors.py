"""Class 1 of issue 12: exceptions rebuilt from a hostile compartment's error reply.

The parent must only rebuild allowlisted builtins, from checked values. These run in the
pytest process itself, so an attack that segfaults the parent kills the test run.
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from typing import Any

import pytest
from wire_attacks import ErrorForger

from compartments import control
from compartments.errors import RemoteError

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def forger() -> Iterator[Any]:
    with ErrorForger() as compartment_:
        yield control(compartment_).with_timeout(20)


def _shown(error: BaseException) -> str:
    """Everything a caller might do to look at an error: each would crash on a bad one."""
    return "".join(
        [str(error), repr(error), *traceback.format_exception(error), *map(str, error.args)]
    )


def _raised(call: Any) -> BaseException:
    with pytest.raises(BaseException) as info:
        call()
    return info.value


def test_a_unicode_decode_error_starting_before_its_object_does_not_crash_the_parent(
    forger: Any,
) -> None:
    error = _raised(forger.unicode_decode_error_before_its_object)
    _shown(error)  # before the fix: SIGSEGV in UnicodeDecodeError.__str__ (gh-123378)
    assert isinstance(error, RemoteError) and error.remote_type == "UnicodeDecodeError"


def test_a_unicode_encode_error_starting_before_its_object_comes_back_as_remote_error(
    forger: Any,
) -> None:
    error = _raised(forger.unicode_encode_error_before_its_object)
    _shown(error)  # before the fix: str() raised SystemError (an out-of-range read)
    assert isinstance(error, RemoteError) and error.remote_type == "UnicodeEncodeError"


def test_a_unicode_translate_error_past_its_object_comes_back_as_remote_error(
    forger: Any,
) -> None:
    error = _raised(forger.unicode_translate_error_past_its_object)
    _shown(error)
    assert isinstance(error, RemoteError) and error.remote_type == "UnicodeTranslateError"


def test_an_oserror_with_a_garbage_errno_and_a_huge_filename_is_not_rebuilt(
    forger: Any,
) -> None:
    error = _raised(forger.oserror_with_garbage_errno_and_filename)
    assert isinstance(error, RemoteError) and not isinstance(error, OSError)
    assert len(_shown(error)) < 64 * 1024


def test_a_builtin_error_with_huge_args_stays_bounded_and_catchable(forger: Any) -> None:
    with pytest.raises(ValueError) as info:  # 8 args of 1 MiB each
        forger.value_error_with_huge_args()
    assert len(str(info.value)) < 8 * 20 * 1024  # each arg cut to 16 Ki chars
    assert "more characters]" in str(info.value)
