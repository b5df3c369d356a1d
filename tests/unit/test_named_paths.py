"""Every repository path and every ``python -m`` module the documentation, the docstrings and
the comments name exists: when a file moves (bench/ into bench/tools/, the test bed out of
tests/) a page still pointing at the old place fails here instead of sending a reader to
nothing."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# A path from the repository root, as prose writes it (bench/tools/sm_cost.py, docs/sip.md).
NAMED_PATH = re.compile(
    r"(?<![\w/.\-])((?:gateway|bench|testbed|tests|demo|docs|deploy|docker|config)/"
    r"[\w/.\-]*\w\.(?:py|md|cfg|yaml|yml|csv|lua|sh|json))\b")
# A module run as a program (python -m bench.tools.sm_cost); upper-case placeholders
# such as bench.tools.NAME are not names.
NAMED_MODULE = re.compile(r"python3? -m ((?:bench|gateway|demo|testbed)(?:\.[a-z_][a-z0-9_]*)+)")
GENERATED = ("bench/results/",)  # written by `make bench`, not in the repository


def tracked_text_files() -> list[Path]:
    listed = subprocess.run(["git", "ls-files", "*.md", "*.py", "Makefile"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split()
    return [REPO / name for name in listed if (REPO / name).is_file()]


def module_exists(dotted: str) -> bool:
    base = REPO.joinpath(*dotted.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def missing_names(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    missing = [name for name in NAMED_PATH.findall(text)
               if not name.startswith(GENERATED) and not (REPO / name).exists()
               and not (path.parent / name).exists()]
    return missing + [name for name in NAMED_MODULE.findall(text) if not module_exists(name)]


def test_named_paths_and_modules_exist() -> None:
    files = tracked_text_files()
    if not files:
        pytest.skip("not a git checkout: nothing to list")
    wrong = [f"{path.relative_to(REPO)} names {name}, which does not exist"
             for path in files for name in missing_names(path)]
    assert not wrong, "\n".join(wrong)


def test_a_moved_path_is_caught(tmp_path: Path) -> None:
    gone_path, gone_module = "bench/" + "relay_proc.py", "bench." + "sm_cost"  # not here
    page = tmp_path / "page.md"
    page.write_text(f"Run `python -m {gone_module}` ({gone_path} reads /proc); "
                    "`python -m bench.tools.sm_cost`, bench/procfs.py and "
                    "`python -m bench.tools.NAME` are fine.\n")
    assert missing_names(page) == [gone_path, gone_module]
