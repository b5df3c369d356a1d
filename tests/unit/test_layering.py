"""Which of the repository's packages may import which: the gateway stands alone; the test
bed (testbed/), the benchmarks (bench/) and the demo build on the gateway and the test bed
but never on the test suite, so a test can be changed or removed without breaking them;
and only the gateway goes into the wheel."""

from __future__ import annotations

import ast
import fnmatch
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def imported_packages(path: Path) -> set[tuple[int, str]]:
    """(line, top-level package) of every absolute import in ``path``, function-level
    imports included."""
    found: set[tuple[int, str]] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update((node.lineno, alias.name.partition(".")[0]) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.lineno, node.module.partition(".")[0]))
    return found


FORBIDDEN = {
    "gateway": {"tests", "testbed", "bench", "demo"},
    "testbed": {"tests", "bench", "demo"},
    "bench": {"tests", "demo"},
    "demo": {"tests", "bench"},
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_stay_in_their_layer(package: str) -> None:
    files = sorted((REPO / package).rglob("*.py"))
    assert files, f"nothing to check under {package}/"
    wrong = [f"{path.relative_to(REPO)}:{line} imports {name}"
             for path in files for line, name in sorted(imported_packages(path))
             if name in FORBIDDEN[package]]
    assert not wrong, "\n".join(wrong)


def test_the_walk_sees_function_level_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from tests.unit import s2s_world\n    import bench.run\n")
    assert imported_packages(module) == {(2, "tests"), (3, "bench")}


def test_only_the_gateway_goes_into_the_wheel() -> None:
    packaging = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    include = packaging["packages"]["find"]["include"]
    for name in ("testbed", "tests", "bench", "demo"):
        assert not any(fnmatch.fnmatch(name, pattern) for pattern in include), (name, include)
    assert any(fnmatch.fnmatch("gateway.xmpp", pattern) for pattern in include), include
