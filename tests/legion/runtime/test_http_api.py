"""Engine routes must live at ``/v1/<engine>`` or below it, nowhere else (checked when a node builds its app)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from aiohttp import web

from legion.engine import HttpResponse, Route
from legion.runtime.http_api import add_routes, is_engine_path


async def handler(req, cluster):  # pragma: no cover - never called
    return HttpResponse()


@pytest.mark.parametrize(
    ("path", "inside"),
    [("/v1/kv", True), ("/v1/kv/{key}", True), ("/v1/kv/_/stats", True), ("/v1/kvx", False), ("/v1/kvx/{key}", False), ("/v1", False), ("/internal/kv", False)],
)
def test_a_route_is_the_engines_when_it_is_its_prefix_or_below(path, inside):
    assert is_engine_path("kv", path) is inside


def test_a_node_refuses_to_serve_an_engine_route_outside_its_prefix():
    engine = SimpleNamespace(name="kv", routes=lambda: [Route("GET", "/v1/kvx/{key}", handler)])
    with pytest.raises(ValueError, match="must be /v1/kv or under /v1/kv/"):
        add_routes(web.Application(), SimpleNamespace(engines={"kv": engine}))  # type: ignore[arg-type]
