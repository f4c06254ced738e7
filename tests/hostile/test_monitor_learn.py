"""Learn mode's generated policy is built from a structure: paths from a compartment
show up in comments only, escaped, and the code is exactly one import and ``rules``."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from typing import Any

import monitor_learn_attacks as attacks
import pytest

INJECTIONS = {
    "statement": "\n]\nINJECTED = 1\nrules = [#",
    "quotes_backslashes_hash": "/tmp/a\"b'c\\\\\"]\nINJECTED = 2 # \\",
    "carriage_return": "/tmp/x\r]\rINJECTED = 3\r#",
    "unicode_line_separators": "/tmp/y\u2028]\u2029INJECTED = 4\u2028#\u0085\x0c",
    "escape_sequences": "/tmp/z\x1b]0;title\x07\n\x7fINJECTED = 5",
}


@pytest.fixture(autouse=True)
def _close() -> Iterator[None]:
    yield
    attacks.open_paths.close()
    attacks.start_a_thread.close()


def _policy_for(paths: list[str]) -> Any:
    attacks.open_paths(paths)
    policy = attacks.open_paths.learned_policy()
    attacks.open_paths.close()
    return policy


def assert_only_the_policy(code: str) -> None:
    tree = ast.parse(code)
    assert len(tree.body) == 2, ast.dump(tree)
    imports, assign = tree.body
    assert isinstance(imports, ast.ImportFrom) and imports.module == "compartments.rulesets"
    assert isinstance(assign, ast.Assign) and isinstance(assign.value, ast.List)
    assert [ast.unparse(t) for t in assign.targets] == ["rules"]
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    assert names <= {"rules", *(a.name for a in imports.names)}, names
    for element in assign.value.elts:  # builtin grant chains or raw syscall names
        assert isinstance(element, (ast.Call, ast.Constant)), ast.dump(element)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", list(INJECTIONS.values()), ids=list(INJECTIONS))
def test_a_path_cannot_write_a_statement_into_the_learned_policy(path: str) -> None:
    policy = _policy_for(["/etc/hostname", path])
    assert_only_the_policy(policy.code)
    assert not set(policy.code) & set("\r\x0c\x1b\x07\x7f\x85\u2028\u2029")  # shown as escapes
    namespace: dict[str, Any] = {}
    exec(policy.code, namespace)
    assert not any(name.startswith("INJECTED") for name in namespace)
    assert namespace["rules"] == list(policy.rulesets)


@pytest.mark.timeout(60)
def test_every_hostile_path_at_once_stays_in_comments() -> None:
    policy = _policy_for(list(INJECTIONS.values()))
    assert_only_the_policy(policy.code)
    for line in policy.code.splitlines():  # splitlines also splits at U+2028 and \x85
        assert "INJECTED" not in line or (line.lstrip().startswith(("#", ".")) and "  # " in line)


@pytest.mark.timeout(60)
def test_learned_policy_for_a_thread_never_names_raw_clone3() -> None:
    assert attacks.start_a_thread() == 1
    policy = attacks.start_a_thread.learned_policy()
    assert "clone3" not in [r for r in policy.rulesets if isinstance(r, str)]
    assert ".allow_create()" in policy.code
    assert_only_the_policy(policy.code)
