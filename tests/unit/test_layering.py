"""Imports point one way: addons/ and ops_api/ depend on the core, the runtime wires them together.

A newcomer follows imports to find where a number comes from; a cycle (the core importing an
addon, an addon importing the ops API) would make that path circular.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.paths import ROOT

# The wiring: these modules may import anything.
WIRING = {"agent/runtime.py", "agent/demo.py"}
WIRING_DIRS = ("agent/cli/",)

# Top-level package of a module -> the packages it must not import.
FORBIDDEN = {
    "agent": ("addons", "ops_api", "agent.runtime", "agent.cli", "agent.demo"),
    "addons": ("ops_api", "agent.runtime", "agent.cli", "agent.demo"),
    "ops_api": ("addons", "agent.runtime", "agent.cli", "agent.demo"),
}


def _modules() -> list[Path]:
    return sorted(p for top in FORBIDDEN for p in (ROOT / top).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_from_the_edges_to_the_core(path: Path) -> None:
    rel = path.relative_to(ROOT).as_posix()
    if rel in WIRING or rel.startswith(WIRING_DIRS):
        return
    banned = FORBIDDEN[rel.split("/", 1)[0]]
    wrong = sorted(
        name for name in _imports(path) if any(name == b or name.startswith(b + ".") for b in banned)
    )
    assert not wrong, f"{rel} imports {', '.join(wrong)}: only agent/runtime.py and agent/cli/ wire layers"
