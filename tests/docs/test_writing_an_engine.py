"""``docs/writing-an-engine.md`` stays true: its Python samples run, and the tests it cites exist.

Every fenced ```python block of the guide is executed, in order, in one
namespace (a later block may use what an earlier one defined), in a
temporary directory; a block's own asserts and ``check_convergence`` calls
are its checks. Every ``tests/…py`` file the guide names must exist, and
every test function it names (`` `test_…` ``) must be defined in the test suite.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "writing-an-engine.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
SAMPLES_MIN = 4


def python_blocks(text: str) -> list[tuple[int, str]]:
    """Each ```python block's code and the line it starts on."""
    return [(text.count("\n", 0, match.start()) + 2, match.group(1)) for match in BLOCK.finditer(text)]


def test_every_python_sample_of_the_guide_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks(GUIDE.read_text())
    assert len(blocks) >= SAMPLES_MIN
    namespace: dict[str, object] = {"__name__": "writing_an_engine"}
    for line, code in blocks:
        exec(compile(code, f"{GUIDE}:{line}", "exec"), namespace)  # noqa: S102 - the guide is ours
    assert "GrowOnlySet" in namespace


def test_the_tests_the_guide_cites_exist():
    text = GUIDE.read_text()
    files = set(re.findall(r"`(tests/[\w/]+\.py)`", text))
    assert files, "the guide cites no test file"
    assert sorted(f for f in files if not (ROOT / f).is_file()) == []
    names = set(re.findall(r"`(test_\w+)`", text))
    defined = "\n".join(path.read_text() for path in (ROOT / "tests").rglob("test_*.py"))
    assert sorted(name for name in names if f"def {name}(" not in defined) == []
