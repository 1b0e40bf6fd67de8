"""Request ids travel across hops: a peer call made for a request carries that request's id.

Two real aiohttp servers on 127.0.0.1 with the node's own middleware chain and
``PeerClient``: a "front" node whose handlers call a "back" node, which echoes
the ``X-Request-Id`` it received. No node processes, so it runs in milliseconds.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web

from legion.engine import current_request_id
from legion.errors import Unavailable
from legion.replication import Operation
from legion.runtime.http_api import _stream_ops
from legion.runtime.replica_sender import ReplicaSender
from legion.runtime.transport import REQUEST_ID_HEADER, PeerClient, make_middlewares

TOKEN = "secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@asynccontextmanager
async def serve(routes: Callable[[web.Application], None]) -> AsyncIterator[str]:
    app = web.Application(middlewares=make_middlewares(TOKEN))
    routes(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def echo(request: web.Request) -> web.Response:
    return web.json_response({"seen": request.headers.get(REQUEST_ID_HEADER)})


def run(scenario: Callable[[PeerClient, str, str], Awaitable[None]]) -> None:
    """Start back (echo) and front (forwarding to back) servers and run ``scenario(peers, front, back)``."""

    async def main() -> None:
        peers = PeerClient(TOKEN)
        await peers.start()
        recorded: list[str | None] = []

        async def apply(request: web.Request) -> web.Response:
            recorded.append(request.headers.get(REQUEST_ID_HEADER))
            return web.Response(body=b"\x82\xa7applied\x01\xa6errors\x80", content_type="application/msgpack")

        def back_routes(app: web.Application) -> None:
            app.router.add_get("/echo", echo)
            app.router.add_post("/internal/apply", apply)

        async with serve(back_routes) as back:

            async def forward(request: web.Request) -> web.Response:
                direct = json.loads(await peers.call("GET", back + "/echo"))
                # A task the handler starts inherits the request's context.
                spawned = json.loads(await asyncio.create_task(peers.call("GET", back + "/echo")))
                return web.json_response({"direct": direct["seen"], "spawned": spawned["seen"]})

            async def start_sender(request: web.Request) -> web.Response:
                sender = ReplicaSender(peers, back)
                op = Operation("kv", 0, b"k", 1, "n1", "delete")
                await sender.send(op, time.monotonic() + 5)
                await sender.send(op, time.monotonic() + 5)
                sender.close()
                return web.json_response({"recorded": recorded})

            def front_routes(app: web.Application) -> None:
                app.router.add_get("/forward", forward)
                app.router.add_get("/sender", start_sender)

            async with serve(front_routes) as front:
                try:
                    await scenario(peers, front, back)
                finally:
                    await peers.close()

    asyncio.run(main())


async def get(url: str, headers: dict[str, str]) -> tuple[dict, str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(url, headers=headers) as response:
            assert response.status == 200, await response.text()
            return await response.json(), response.headers[REQUEST_ID_HEADER]


def test_a_peer_call_carries_the_id_the_client_sent():
    async def scenario(peers: PeerClient, front: str, back: str) -> None:
        body, answered = await get(front + "/forward", {**AUTH, REQUEST_ID_HEADER: "client-chose-this"})
        assert body == {"direct": "client-chose-this", "spawned": "client-chose-this"}
        assert answered == "client-chose-this"

    run(scenario)


def test_a_request_without_an_id_gets_one_and_its_peer_calls_carry_it():
    async def scenario(peers: PeerClient, front: str, back: str) -> None:
        body, answered = await get(front + "/forward", AUTH)
        assert answered and body == {"direct": answered, "spawned": answered}
        other, answered_again = await get(front + "/forward", AUTH)
        assert answered_again != answered and other["direct"] == answered_again

    run(scenario)


def test_calls_outside_any_request_carry_no_id_unless_given_one():
    async def scenario(peers: PeerClient, front: str, back: str) -> None:
        assert current_request_id() == ""
        assert json.loads(await peers.call("GET", back + "/echo"))["seen"] is None
        assert json.loads(await peers.call("GET", back + "/echo", request_id="explicit"))["seen"] == "explicit"

    run(scenario)


def test_a_replica_sender_started_by_one_request_does_not_tag_later_batches_with_its_id():
    async def scenario(peers: PeerClient, front: str, back: str) -> None:
        body, _ = await get(front + "/sender", {**AUTH, REQUEST_ID_HEADER: "first-request"})
        assert body["recorded"] == [None, None]

    run(scenario)


def test_a_fold_that_fails_midway_is_an_error_for_the_receiver_not_a_hang_nor_a_shorter_fold():
    def failing_fold():
        for n in range(3):
            yield Operation("kv", 0, b"k%d" % n, n + 1, "n1", "delete")
        raise OSError("the engine's storage failed")

    async def fold(request: web.Request) -> web.StreamResponse:
        return await _stream_ops(request, failing_fold)

    async def main() -> None:
        peers = PeerClient(TOKEN)
        await peers.start()
        try:
            async with serve(lambda app: app.router.add_get("/internal/fold", fold)) as url:
                received: list[Operation] = []

                async def receive() -> None:
                    async for batch in peers.stream_ops(url + "/internal/fold", read_timeout_ms=60_000):
                        received.extend(batch)

                # Before, the sender waited for ever for the end of the fold and the receiver for its next chunk.
                try:
                    await asyncio.wait_for(receive(), timeout=20)
                except Unavailable as exc:
                    assert "ClientPayloadError" in exc.message
                else:
                    raise AssertionError(f"a failed fold ended like a whole one after {len(received)} operations")
        finally:
            await peers.close()

    asyncio.run(main())
