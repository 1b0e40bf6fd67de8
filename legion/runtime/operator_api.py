"""The endpoints for people who run a cluster: metrics and the dashboard.

I/O, and thin like ``http_api``:

- ``GET /metrics``: this node's Prometheus metrics (``node_metrics``), with
  the cluster token like every request — or, on a node started with
  ``--metrics-open``, without it for clients on the loopback interface;
- ``GET /ui/``: the dashboard, static files from ``legion/dashboard_assets``
  (no token: they hold no data; the page asks for the token and sends it
  with each data request);
- ``GET /v1/dashboard``: what the page shows beside the status document —
  each engine's panel (``Engine.dashboard_panel``) and, per live member, its
  engine figures and the partitions it is copying in, gathered from every
  member through ``/internal/figures`` so the page talks to one origin only.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web

from legion.errors import LegionError
from legion.runtime.node_metrics import CONTENT_TYPE, engine_of
from legion.runtime.node_view import StateView

if TYPE_CHECKING:
    from legion.engine import Engine

log = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).resolve().parent.parent / "dashboard_assets"
# The page may load and call nothing but this node: no other origin, no inline script, no framing.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
FIGURES_TIMEOUT_MS = 1_500


class OperatorConfig(Protocol):
    """The node options the operators' endpoints read."""

    metrics_open: bool


class InFlight(Protocol):
    """The partitions a node is copying in right now."""

    in_flight: set[int]


class OperatorHost(StateView, Protocol):
    """What the operators' endpoints use of their node (``legion.runtime.node_view``)."""

    config: OperatorConfig
    engines: dict[str, Engine]
    handoff: InFlight

    def alive(self) -> set[str]: ...


def add_routes(app: web.Application, node: OperatorHost) -> None:
    api = _OperatorApi(node)
    app.router.add_get("/metrics", api.metrics)
    app.router.add_get("/v1/dashboard", api.dashboard)
    app.router.add_get("/internal/figures", api.figures)
    app.router.add_get("/ui", api.to_ui)
    app.router.add_get("/ui/", api.index)
    app.router.add_static("/ui/", ASSETS_DIR, follow_symlinks=False)


def is_loopback(address: str | None) -> bool:
    try:
        return address is not None and ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def public_requests(node: OperatorHost) -> Callable[[web.Request], bool]:
    """Which requests need no token: the dashboard's static files, and /metrics from loopback if opened."""
    metrics_open = node.config.metrics_open

    def public(request: web.Request) -> bool:
        if request.path == "/ui" or request.path.startswith("/ui/"):
            return True
        return metrics_open and request.path == "/metrics" and is_loopback(request.remote)

    return public


def observer(node: OperatorHost) -> Callable[[web.Request, int, float], None]:
    """Records every answered request in the node's metrics, labelled by its route template."""
    engines = node.engines
    metrics = node.metrics
    engine_by_route: dict[str, str] = {}  # a route template names its engine (/v1/<engine>/…): look it up once

    def observe(request: web.Request, status: int, seconds: float) -> None:
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        engine = engine_by_route.get(route)
        if engine is None:
            engine = engine_by_route[route] = engine_of(route, engines)
        metrics.observe_request(route, engine, request.method, status, seconds)

    return observe


class _OperatorApi:
    def __init__(self, node: OperatorHost) -> None:
        self.node = node

    async def metrics(self, request: web.Request) -> web.Response:
        body = await asyncio.to_thread(self.node.metrics.exposition)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def to_ui(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/ui/")

    async def index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(ASSETS_DIR / "index.html", headers=PAGE_HEADERS)

    async def figures(self, request: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(self._own_figures))

    def _own_figures(self) -> dict[str, Any]:
        """This node's engine figures (engine → figure → value) and the partitions it is pulling."""
        engines: dict[str, dict[str, float]] = {}
        for name, engine in self.node.engines.items():
            try:
                engines[name] = {figure: float(value) for figure, value in engine.metrics().items()}
            except Exception:
                # One engine's broken figures must not blank the whole dashboard.
                log.exception("engine %s failed to report its metrics", name)
        return {"engines": engines, "handoffs": sorted(self.node.handoff.in_flight)}

    async def dashboard(self, request: web.Request) -> web.Response:
        node = self.node
        panels = {}
        for name, engine in sorted(node.engines.items()):
            panel = engine.dashboard_panel()
            if panel is not None:
                panels[name] = panel.to_json()
        live = node.alive()
        members = [m for m in node.state.members if m.id in live]
        answers = await asyncio.gather(*(self._figures_of(m.id, m.url) for m in members))
        return web.json_response({"panels": panels, "nodes": dict(zip([m.id for m in members], answers))})

    async def _figures_of(self, node_id: str, url: str) -> dict[str, Any] | None:
        if node_id == self.node.node_id:
            return await asyncio.to_thread(self._own_figures)
        try:
            raw = await self.node.peers.call("GET", url + "/internal/figures", timeout_ms=FIGURES_TIMEOUT_MS)
            return json.loads(raw)
        except (LegionError, ValueError):
            return None  # shown as "no answer"; the member list says whether it is down
