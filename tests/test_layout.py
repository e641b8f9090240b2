"""The test suite's own layout: test files share helper modules, never each other, and the
modules ``make test-fast`` runs load no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.pure  # no torch: part of `make test-fast`

TESTS = Path(__file__).resolve().parent


def test_no_test_file_imports_another():
    offenders = []
    for path in sorted(TESTS.glob("*.py")):
        tree = ast.parse(path.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        # Scripts the tests run in a subprocess are strings: check those too.
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for line in node.value.splitlines():
                    words = line.split()
                    if words[:1] in (["import"], ["from"]) and len(words) > 1:
                        names.append(words[1])
        offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0].startswith("test_")]
    assert offenders == []


def test_the_pure_test_modules_import_no_torch():
    """What ``make test-fast`` runs loads neither torch nor scikit-learn, conftest included."""
    tests = Path(__file__).resolve().parent
    pure = sorted(
        p.stem
        for p in tests.glob("test_*.py")
        if "\npytestmark = pytest.mark.pure" in p.read_text()
    )
    assert "test_unlearning" in pure and len(pure) >= 8
    code = (
        f"import sys; sys.path.insert(0, {str(tests)!r}); import conftest, "
        + ", ".join(pure)
        + "; print(sorted(m for m in ('torch', 'sklearn', 'timm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
