"""A compromised compartment looks for the parent's secrets: environment, /proc."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from escape_compartments import Database, Parser, WebServer

import compartments._parent._supervisor as supervisor

SECRET_NAME = "COMPARTMENTS_ESCAPE_SECRET"
SECRET = "s3cr3t-token-7f9a1c"


@pytest.fixture
def secret_in_parent(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A secret in the parent's environment from before the zygote starts."""
    supervisor._stop_everything()  # the zygote is a lazy singleton: start a new one
    monkeypatch.setenv(SECRET_NAME, SECRET)
    monkeypatch.setattr(supervisor, "_zygote", None)
    yield
    supervisor._stop_everything()


@pytest.fixture
def three(secret_in_parent: None, tmp_path: Path) -> Iterator[dict[str, Any]]:
    path = tmp_path / "db"
    path.write_bytes(b"x")
    with WebServer() as web, Database(str(path)) as db, Parser() as parser:
        yield {"web": web, "db": db, "parser": parser}


def test_no_compartment_sees_the_parents_secret(three: dict[str, Any]) -> None:
    zygote = supervisor._zygote
    assert zygote is not None
    zygote_environ = Path(f"/proc/{zygote.process.pid}/environ").read_bytes()
    assert SECRET.encode() not in zygote_environ  # scrubbed before the zygote ran
    for kind, subject in three.items():
        seen = subject.environment()
        assert SECRET_NAME not in seen and SECRET not in seen.values(), kind
        allowed = supervisor.ENV_ALLOWLIST
        assert all(k in allowed or k.startswith("LC_") for k in seen), (kind, sorted(seen))


def test_no_compartment_can_read_the_parents_or_zygotes_environ(three: dict[str, Any]) -> None:
    ctx = {"parent": os.getpid()}
    for kind, subject in three.items():
        outcome = subject.attempt("parent_environment", ctx)
        assert outcome == {
            "open(/proc/parent/environ)": 1,
            "open(/proc/zygote/environ)": 1,
        }, kind  # EPERM
        assert subject.ping()
