"""A new engine package from the templates: which files, with which names filled in.

``render_engine_package`` is pure (templates in, ``{relative path: text}``
out); ``new_engine_package`` writes the result into a directory that does
not exist yet or is empty. The generated package is a small convergent
engine (replicated counters) with its client, CLI and tests — the tests
pass as generated.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from string import Template

from legion.errors import ConfigError

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
LEGION_HOME = "https://github.com/legion-framework/legion"
# Template file → path in the generated package ({package} is the import package's name).
FILES = {
    "pyproject.toml.tmpl": "pyproject.toml",
    "README.md.tmpl": "README.md",
    "__init__.py.tmpl": "{package}/__init__.py",
    "counts.py.tmpl": "{package}/counts.py",
    "engine.py.tmpl": "{package}/engine.py",
    "client.py.tmpl": "{package}/client.py",
    "cli.py.tmpl": "{package}/cli.py",
    "conftest.py.tmpl": "tests/conftest.py",
    "test_convergence.py.tmpl": "tests/test_convergence.py",
    "test_cluster.py.tmpl": "tests/test_cluster.py",
}
# Names of the core's own routes and commands an engine must not take.
RESERVED_NAMES = frozenset({"cluster", "node", "engine", "health", "internal"})


def check_engine_name(name: str) -> str:
    """An engine name usable as entry point, route prefix, command and Python identifier; else ConfigError."""
    if not NAME_PATTERN.match(name):
        raise ConfigError(
            f"an engine name is 1-32 lowercase letters, digits or '_', starting with a letter (e.g. counters); got {name!r}"
        )
    if name in RESERVED_NAMES:
        raise ConfigError(f"{name!r} is taken by the core's own routes or commands; pick another engine name")
    return name


def render_engine_package(name: str, directory: Path) -> dict[str, str]:
    """Every file of a new engine package named ``name``, by path relative to its directory."""
    check_engine_name(name)
    title = "".join(part.capitalize() for part in name.split("_"))
    values = {
        "name": name,
        "package": f"legion_{name}",
        "distribution": f"legion-{name.replace('_', '-')}",
        "class_name": f"{title}Engine",
        "client_class": f"{title}Client",
        "directory": str(directory),
        "legion_home": LEGION_HOME,
    }
    templates = resources.files("legion.scaffold") / "templates" / "engine"
    return {
        target.format(package=values["package"]): Template(templates.joinpath(source).read_text()).substitute(values)
        for source, target in FILES.items()
    }


def new_engine_package(name: str, directory: Path) -> list[Path]:
    """Write a new engine package into ``directory`` (absent or empty); the files written."""
    directory = Path(directory).resolve()
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise ConfigError(f"{directory} already exists and is not an empty directory; pick another --dir")
    written = []
    for relative, text in render_engine_package(name, directory).items():
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written
