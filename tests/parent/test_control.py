"""A proxy's public names are the user's; the framework's are in ``compartments.control``."""

from __future__ import annotations

import inspect
import os
import pydoc

import pytest

import compartments
from compartments import Violation, compartment, control
from compartments.errors import CompartmentClosed
from compartments.rulesets import SystemIO

pytestmark = pytest.mark.timeout(60)


@compartment(rules=[SystemIO.nothing()])
class FrameworkNames:
    """A class whose methods use every name the framework once kept for itself."""

    def pid(self) -> str:
        return "the user's pid"

    def close(self) -> str:
        return "the user's close"

    def aio(self) -> str:
        return "the user's aio"

    def violations(self) -> int:
        return 3

    def restarts(self) -> list[int]:
        return [1, 2]

    def with_timeout(self, seconds: float) -> float:
        return seconds * 2

    def learned_policy(self) -> str:
        return "the user's policy"


@compartment(rules=[SystemIO.nothing()])
class Documented:
    """Keeps one value."""

    def __init__(self, value: int) -> None:
        self.value = value

    def get(self) -> int:
        """Return the value."""
        return self.value

    def scaled(self, factor: int, *, offset: int = 0) -> int:
        """The value times ``factor``, plus ``offset``."""
        return self.value * factor + offset

    @staticmethod
    def constant(base: int) -> int:
        return base + 1

    def own_pid(self) -> int:
        return os.getpid()

    def open_a_file(self) -> str:
        with open("/etc/hostname") as handle:
            return handle.read()


@compartment(rules=[SystemIO.nothing()])
def echo(value: int) -> int:
    return value


@pytest.mark.parametrize(
    ("method", "args", "expected"),
    [
        ("pid", (), "the user's pid"),
        ("close", (), "the user's close"),
        ("aio", (), "the user's aio"),
        ("violations", (), 3),
        ("restarts", (), [1, 2]),
        ("with_timeout", (1.5,), 3.0),
        ("learned_policy", (), "the user's policy"),
    ],
)
def test_a_method_named_like_a_framework_control_is_a_remote_call(
    method: str, args: tuple[object, ...], expected: object
) -> None:
    with FrameworkNames() as proxy:
        assert getattr(proxy, method)(*args) == expected


def test_a_users_close_leaves_the_child_running() -> None:
    with FrameworkNames() as proxy:
        proxy.close()
        assert proxy.pid() == "the user's pid"


def test_control_reports_the_childs_pid() -> None:
    with Documented(1) as proxy:
        assert control(proxy).pid == proxy.own_pid()


def test_control_reports_restarts_and_violations() -> None:
    with Documented(1) as proxy:
        assert control(proxy).restarts == 0
        with pytest.raises(PermissionError):
            proxy.open_a_file()
        violations = control(proxy).violations
        assert violations and all(isinstance(v, Violation) for v in violations)


def test_control_with_timeout_gives_a_proxy_of_the_same_child() -> None:
    with Documented(4) as proxy:
        quicker = control(proxy).with_timeout(5.0)
        assert type(quicker) is type(proxy)
        assert quicker.get() == 4
        assert control(quicker).pid == control(proxy).pid


def test_control_close_stops_the_child() -> None:
    proxy = Documented(1)
    control(proxy).close()
    assert control(proxy).pid is None
    with pytest.raises(CompartmentClosed):
        proxy.get()


def test_with_proxy_stops_the_child() -> None:
    with Documented(1) as proxy:
        assert control(proxy).pid is not None
    assert control(proxy).pid is None


def test_a_framework_name_the_class_lacks_points_at_control() -> None:
    with Documented(1) as proxy, pytest.raises(AttributeError, match=r"control\(proxy\)\.pid"):
        proxy.pid  # noqa: B018


def test_control_refuses_what_is_not_a_compartment() -> None:
    with pytest.raises(TypeError, match="compartment proxy"):
        control(object())


def test_control_of_a_function_has_its_pid() -> None:
    echo(1)
    assert control(echo).pid == echo.pid


def test_function_wrappers_keep_their_own_attributes() -> None:
    assert echo.submit(3).result(10) == 3
    assert echo.with_timeout(5.0)(4) == 4
    assert callable(echo.aio)


def test_proxy_methods_have_the_real_signature() -> None:
    with Documented(1) as proxy:
        assert str(inspect.signature(proxy.scaled)) == (
            "(factor: 'int', *, offset: 'int' = 0) -> 'int'"  # this module's annotations
        )
        assert str(inspect.signature(proxy.constant)) == "(base: 'int') -> 'int'"
        assert proxy.constant(1) == 2


def test_dir_lists_the_remote_methods() -> None:
    with Documented(1) as proxy:
        public = {name for name in dir(proxy) if not name.startswith("_")}
        assert public == {"constant", "get", "open_a_file", "own_pid", "scaled"}


def test_help_shows_the_methods_docstrings() -> None:
    with Documented(1) as proxy:
        text = pydoc.render_doc(proxy, renderer=pydoc.plaintext)
        assert "Return the value." in text
        assert "The value times ``factor``" in text


def test_a_proxy_is_an_instance_of_its_decorated_class() -> None:
    with Documented(1) as proxy:
        assert isinstance(proxy, Documented)
        assert not isinstance(proxy, FrameworkNames)
        assert isinstance(proxy, compartments.Proxy)
