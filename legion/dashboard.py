"""What an engine contributes to an operator's view of the cluster: its panel on the dashboard.

Pure declarations, no I/O. The dashboard (``/ui/`` on every node, static
files in ``legion/dashboard_assets``) draws the ring and the members itself;
each engine may add one panel by returning a ``DashboardPanel`` from
``Engine.dashboard_panel()``. A panel is *declarative* — the page renders it,
no engine code runs in the browser:

- ``figures``: names of figures from ``Engine.metrics()`` to show, per node
  and summed over the cluster, each with a label (``{"keys": "keys stored"}``);
- ``lookups``: small forms. Each names its input fields and a path template
  on this cluster (``/v1/kv/{key}``); the page fills the template with the
  percent-encoded inputs, sends a GET with the token the user signed in with,
  and shows the answer.

Figure names are also how ``/metrics`` exports them: ``legion_<engine>_<figure>``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

FIGURE_NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
FIELD_PATTERN = re.compile(r"\{([a-z][a-z0-9_]*)\}")
LOOKUP_FIELDS_MAX = 4


def check_figure_name(name: str) -> str:
    """``name`` if it can be a figure (and part of a Prometheus metric name); ValueError otherwise (a bug)."""
    if not isinstance(name, str) or not FIGURE_NAME_PATTERN.match(name):
        raise ValueError(f"engine figure name {name!r} must be lower-case letters, digits and '_', starting with a letter")
    return name


@dataclass(frozen=True, slots=True)
class PanelLookup:
    """A form on an engine's panel: ``fields`` fill ``path`` (``/v1/<engine>/…{field}…``), the page GETs it."""

    label: str
    path: str
    fields: Sequence[str]

    def __post_init__(self) -> None:
        named = FIELD_PATTERN.findall(self.path)
        if not self.path.startswith("/v1/") or sorted(named) != sorted(self.fields):
            raise ValueError(f"lookup path {self.path!r} must start with /v1/ and name exactly the fields {list(self.fields)}")
        if not 1 <= len(self.fields) <= LOOKUP_FIELDS_MAX:
            raise ValueError(f"a lookup has 1 to {LOOKUP_FIELDS_MAX} fields")
        object.__setattr__(self, "fields", tuple(self.fields))


@dataclass(frozen=True, slots=True)
class DashboardPanel:
    """An engine's panel: a title, the figures to show (name → label) and its lookup forms."""

    title: str
    figures: Mapping[str, str] = field(default_factory=dict)
    lookups: Sequence[PanelLookup] = ()

    def __post_init__(self) -> None:
        for name in self.figures:
            check_figure_name(name)
        object.__setattr__(self, "lookups", tuple(self.lookups))

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "figures": dict(self.figures),
            "lookups": [{"label": lk.label, "path": lk.path, "fields": list(lk.fields)} for lk in self.lookups],
        }
