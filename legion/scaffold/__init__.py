"""Scaffolding: ``legion engine new NAME`` writes a working engine package to start from.

``engine_package`` renders the templates in ``templates/engine/`` (package
data, ``string.Template`` placeholders such as ``${name}``) into a new
directory: an installable package whose engine, client, CLI and tests work
as generated. Quickstart::

    from legion.scaffold import new_engine_package
    new_engine_package("counters", Path("legion-counters"))
"""

from legion.scaffold.engine_package import check_engine_name, new_engine_package, render_engine_package

__all__ = ["check_engine_name", "new_engine_package", "render_engine_package"]
