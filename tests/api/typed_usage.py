"""A user's module, type-checked by ``make lint`` with mypy --strict and pyright strict:
every decorator form keeps the decorated object's types. Not run; checked.

Each ``assert_type`` fails the checker if a type is lost (to Any, too), and each ignore
comment on a wrong call fails it (an unused ignore) if the call stopped being an error.
"""
# pyright: strict, reportUnnecessaryTypeIgnoreComment=true

from __future__ import annotations

import concurrent.futures
from typing import TYPE_CHECKING

import compartments
from compartments import compartment, control
from compartments.rulesets import SystemIO

if TYPE_CHECKING:
    from typing_extensions import assert_type
else:

    def assert_type(value: object, _type: object) -> object:
        return value


@compartment(rules=[SystemIO.nothing()])
def parse(data: bytes) -> dict[str, int]:
    return {"length": len(data)}


@compartment
def double(value: int) -> int:
    return 2 * value


@compartment(rules=[], timeout=5)
class Store:
    def __init__(self, path: str) -> None:
        self.path = path

    def get(self, key: str) -> int:
        return len(key)

    def close(self) -> str:
        return "the user's own close"


def functions() -> None:
    assert_type(parse(b"x"), dict[str, int])
    assert_type(parse.submit(b"x"), concurrent.futures.Future[dict[str, int]])
    assert_type(parse.submit(b"x").result(), dict[str, int])
    assert_type(double(2), int)
    assert_type(parse.with_timeout(1.0)(b"x"), dict[str, int])
    assert_type(control(parse).pid, int | None)
    parse("not bytes")  # type: ignore[arg-type]


async def awaiting() -> None:
    assert_type(await parse.aio(b"x"), dict[str, int])
    assert_type(await double.aio(3), int)


def classes() -> None:
    store = Store("/tmp/store")
    assert_type(store, Store)
    assert_type(store.get("key"), int)
    assert_type(store.close(), str)
    controls = control(store)
    assert_type(controls, compartments.Control[Store])
    assert_type(controls.with_timeout(2.0), Store)
    assert_type(controls.pid, int | None)
    assert_type(controls.restarts, int)
    with control(Store("/tmp/other")) as other:
        assert_type(other, compartments.Control[Store])
    store.get(1)  # type: ignore[arg-type]
    Store(path=3)  # type: ignore[arg-type]
