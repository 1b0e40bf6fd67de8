"""Runtime components see their node only through the narrow host protocol each declares (``legion.runtime.node_view``).

Read from the source with ``ast``: every attribute a component reads off its
node (``node.x``, ``self.node.x``) is a member of its host protocol; no
module of the runtime but the node's own imports ``legion.runtime.node``;
and the node provides every member of every host protocol.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path
from typing import Protocol

import pytest

import legion.runtime
from legion.runtime.node import Node

RUNTIME = Path(legion.runtime.__file__).parent
HOSTS = {
    "coordinator": "CoordinatorHost",
    "gossiper": "GossiperHost",
    "handoff_receiver": "HandoffHost",
    "anti_entropy": "AntiEntropyHost",
    "state_publisher": "PublisherHost",
    "etcd_register": "RegisterHost",
    "snapshot_fetcher": "FetcherHost",
    "operator_api": "OperatorHost",
    "http_api": "ApiHost",
}


def protocol_members(protocol: type) -> set[str]:
    names: set[str] = set()
    for klass in protocol.__mro__:
        if klass in (object, Protocol) or not getattr(klass, "_is_protocol", False):
            continue
        names |= set(klass.__dict__.get("__annotations__", {}))
        names |= {n for n, v in klass.__dict__.items() if inspect.isfunction(v) and not n.startswith("_")}
    return names


def read_off_node(source: str) -> set[str]:
    """Attribute names read off ``node`` or ``self.node`` anywhere in ``source``."""
    found = set()
    for item in ast.walk(ast.parse(source)):
        if not isinstance(item, ast.Attribute):
            continue
        base = item.value
        if isinstance(base, ast.Name) and base.id == "node":
            found.add(item.attr)
        elif isinstance(base, ast.Attribute) and base.attr == "node" and isinstance(base.value, ast.Name) and base.value.id == "self":
            found.add(item.attr)
    return found


def node_members() -> set[str]:
    """What a ``Node`` has: its methods and properties, and every ``self.x`` its methods assign."""
    tree = ast.parse((RUNTIME / "node.py").read_text())
    node_class = next(c for c in ast.walk(tree) if isinstance(c, ast.ClassDef) and c.name == "Node")
    assigned = {
        target.attr
        for item in ast.walk(node_class)
        if isinstance(item, (ast.Assign, ast.AnnAssign))
        for target in (item.targets if isinstance(item, ast.Assign) else [item.target])
        for target in (target.elts if isinstance(target, ast.Tuple) else [target])
        if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self"
    }
    return assigned | {name for name in dir(Node) if not name.startswith("__")}


@pytest.mark.parametrize("module, host", sorted(HOSTS.items()))
def test_a_component_reads_only_what_its_host_protocol_declares(module: str, host: str):
    protocol = getattr(importlib.import_module(f"legion.runtime.{module}"), host)
    undeclared = read_off_node((RUNTIME / f"{module}.py").read_text()) - protocol_members(protocol)
    assert undeclared == set(), f"{module} reads {sorted(undeclared)} off its node; declare them in {host} or pass them in"


def test_no_runtime_module_but_the_node_imports_the_node_module():
    importers = []
    for path in sorted(RUNTIME.rglob("*.py")):
        if path.name == "node.py" and path.parent == RUNTIME:
            continue
        for item in ast.walk(ast.parse(path.read_text())):
            names = [item.module] if isinstance(item, ast.ImportFrom) else [a.name for a in item.names] if isinstance(item, ast.Import) else []
            if "legion.runtime.node" in names:
                importers.append(str(path.relative_to(RUNTIME)))
    assert importers == []


@pytest.mark.parametrize("module, host", sorted(HOSTS.items()))
def test_the_node_provides_every_member_of_each_host_protocol(module: str, host: str):
    protocol = getattr(importlib.import_module(f"legion.runtime.{module}"), host)
    assert protocol_members(protocol) - node_members() == set()


def test_a_read_the_protocol_does_not_declare_is_caught():
    assert read_off_node("def f(node):\n    return node.secret + self.node.other\n") == {"secret", "other"}
