"""``legion.scaffold``: every template renders into valid files; bad names and occupied directories are refused."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from legion.errors import ConfigError
from legion.scaffold import check_engine_name, new_engine_package, render_engine_package


@pytest.mark.parametrize("name", ["counters", "geo_sets"])
def test_every_file_renders_with_its_names_filled_in_and_the_python_compiles(name: str, tmp_path: Path):
    files = render_engine_package(name, tmp_path)
    package = f"legion_{name}"
    assert set(files) == {
        "pyproject.toml", "README.md", "tests/conftest.py", "tests/test_convergence.py", "tests/test_cluster.py",
        *(f"{package}/{module}.py" for module in ("__init__", "counts", "engine", "client", "cli")),
    }  # fmt: skip
    for path, text in files.items():
        assert "${" not in text, path
        if path.endswith(".py"):
            compile(text, path, "exec")
    project = tomllib.loads(files["pyproject.toml"])
    assert project["project"]["entry-points"]["legion.engines"] == {name: f"{package}.engine:{''.join(p.capitalize() for p in name.split('_'))}Engine"}
    assert "legion>=0.1" in project["project"]["dependencies"]
    assert f'name = "{name}"' not in files[f"{package}/engine.py"]  # the name comes from counts.ENGINE_NAME
    assert f'ENGINE_NAME = "{name}"' in files[f"{package}/counts.py"]


@pytest.mark.parametrize("bad", ["", "Counters", "1st", "with-dash", "x" * 33, "cluster", "engine"])
def test_names_that_cannot_be_an_engine_are_refused_saying_why(bad: str):
    with pytest.raises(ConfigError, match="engine name|taken"):
        check_engine_name(bad)


def test_a_directory_that_holds_anything_is_left_alone(tmp_path: Path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not an empty directory"):
        new_engine_package("counters", tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]
    written = new_engine_package("counters", tmp_path / "fresh")
    assert len(written) == 10 and all(path.is_file() for path in written)


def test_the_command_refuses_a_bad_name_with_one_line(legion_cli):
    result = legion_cli("engine", "new", "Bad-Name")
    assert result.returncode == 1 and result.stderr.startswith("error: an engine name is")
