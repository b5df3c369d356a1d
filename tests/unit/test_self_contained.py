"""Nothing in the project reads a file outside the repository.

A fresh ``git clone`` has nothing beside it: a test, the daemon or the harness that opens
``../shared/…`` (or climbs above the checkout from ``__file__``) works only on the machine
it was written on. This test scans every file of the project:

- Python: every ``Path(__file__)`` climb (``.parents[n]``, ``.parent.parent…``) must stay
  inside the repository, judged from the file's own depth;
- every file: relative paths (``../x``) are resolved against the file's directory and must
  land inside the repository; the sibling folder's names (``shared/spec``,
  ``shared/interop``) and absolute paths into the development machine's ``/work`` tree
  must not appear at all.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Without git (a tarball): what .gitignore leaves out — local state and build outputs.
SKIP_TOP = {".git", ".venv", "build", "dist", ".pytest_cache", ".ruff_cache", "certs", "data",
            "run"}
RELATIVE = re.compile(r"(?<![\w.])((?:\.\./)+[\w.\-/]*)")
FORBIDDEN = re.compile(r"shared/(?:spec|interop)\b|(?<![\w.])/work/")


def project_files() -> list[Path]:
    """The files a clone has: git's view when this is a checkout, else a walk of the tree."""
    try:
        listed = subprocess.run(
            ["git", "-C", str(REPO), "ls-files", "--cached", "--others", "--exclude-standard"],
            check=True, capture_output=True, text=True, timeout=30).stdout.splitlines()
        files = [REPO / name for name in listed]
    except (OSError, subprocess.SubprocessError):
        files = [p for p in REPO.rglob("*")
                 if p.relative_to(REPO).parts[0] not in SKIP_TOP
                 and "__pycache__" not in p.parts and "results" not in p.parts
                 and not any(part.endswith(".egg-info") for part in p.parts)]
    return sorted(p for p in files if p.is_file())


def text_of(path: Path) -> str | None:
    data = path.read_bytes()
    if b"\0" in data:
        return None
    return data.decode("utf-8", errors="replace")


def file_climbs(tree: ast.AST) -> list[tuple[int, int]]:
    """(line, levels) for each ``Path(__file__)`` climb: ``X.parents[n]`` is n + 1 levels
    above the file, each ``.parent`` one (``resolve()``/``absolute()`` in between keep)."""
    climbs = []
    inside_a_chain = {id(node.value) for node in ast.walk(tree)
                      if isinstance(node, ast.Attribute) and node.attr in ("parent", "parents")}
    for node in ast.walk(tree):
        if id(node) in inside_a_chain:
            continue  # the longer chain around it is judged
        levels, inner = 0, node
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) \
                and node.value.attr == "parents" and isinstance(node.slice, ast.Constant) \
                and isinstance(node.slice.value, int):
            levels, inner = node.slice.value + 1, node.value.value
        while isinstance(inner, ast.Attribute) and inner.attr == "parent":
            levels, inner = levels + 1, inner.value
        if levels == 0:
            continue
        while isinstance(inner, ast.Call) and isinstance(inner.func, ast.Attribute) \
                and inner.func.attr in ("resolve", "absolute"):
            inner = inner.func.value
        if isinstance(inner, ast.Call) and any(
                isinstance(arg, ast.Name) and arg.id == "__file__" for arg in inner.args):
            climbs.append((node.lineno, levels))
    return climbs


FILES = project_files()


def test_the_scan_sees_the_project() -> None:
    names = {p.relative_to(REPO).as_posix() for p in FILES}
    assert {"gateway/policy/negotiation-matrix.csv", "tests/support/matrix.py", "Makefile",
            "testbed/servers.py", "config/gateway.yaml"} <= names


@pytest.mark.parametrize("path", [p for p in FILES if p.suffix == ".py"],
                         ids=lambda p: p.relative_to(REPO).as_posix())
def test_python_stays_inside_the_repository(path: Path) -> None:
    depth = len(path.relative_to(REPO).parts) - 1  # directories between REPO and the file
    for line, levels in file_climbs(ast.parse(path.read_text(encoding="utf-8"))):
        # parents[0] / .parent is the file's own directory: levels - 1 climbs above it.
        assert levels - 1 <= depth, (
            f"{path.relative_to(REPO)}:{line} climbs {levels - 1} directories above its own "
            f"from __file__, out of the repository (it is {depth} deep)")


def test_no_file_points_outside_the_repository() -> None:
    found = []
    for path in FILES:
        if path == Path(__file__).resolve() or (text := text_of(path)) is None:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            where = f"{path.relative_to(REPO)}:{number}: {line.strip()}"
            if FORBIDDEN.search(line):
                found.append(where)
            for target in RELATIVE.findall(line):
                if not (path.parent / target).resolve().is_relative_to(REPO):
                    found.append(where)
    assert not found, "files that read outside the repository:\n" + "\n".join(found)


def test_the_check_catches_a_climb_and_a_sibling_path() -> None:
    """The detectors themselves, on code as the old tests spelled it."""
    old = 'MATRIX = Path(__file__).resolve().parents[3] / "shared" / "spec" / "m.csv"\n'
    assert file_climbs(ast.parse(old)) == [(1, 4)]
    assert file_climbs(ast.parse("p = Path(__file__).parent.parent\n")) == [(1, 2)]
    assert FORBIDDEN.search('"../shared/spec/negotiation-matrix.csv"')
    assert (REPO / "tests" / RELATIVE.findall("see ../../../x/y")[0]).resolve() \
        .is_relative_to(REPO) is False
