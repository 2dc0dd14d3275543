"""What goes on the wire: the URL under a base path, the query and the headers the API client's
`httpx.AsyncClient` builds, checked here over real HTTP."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from aiohttp import web

from exporter.bem.client import BemClient, ListQuery


def test_paths_queries_and_headers_under_a_base_path() -> None:
    seen: list[tuple[str, str, dict[str, str]]] = []
    hosts: list[str] = []

    async def record(request: web.Request) -> web.Response:
        seen.append((request.method, request.raw_path, dict(request.headers)))
        if request.path.endswith("/trace"):
            return web.json_response({"functionCalls": [], "events": []})
        return web.json_response({"calls": [], "totalCount": 0})

    async def main() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", record)
        runner = web.AppRunner(app)
        await runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        await web.SockSite(runner, sock).start()
        hosts.append(f"127.0.0.1:{sock.getsockname()[1]}")
        url = f"http://{hosts[0]}/bem/api/"
        try:
            async with BemClient(url, "the-key", "v3", timeout=5, max_concurrency=2, max_rps=100) as client:
                await client.list_calls(ListQuery(workflow_names=("claims triage", "a&b")))
                await client.get_trace("c/1 ?#")
        finally:
            await runner.cleanup()

    asyncio.run(main())
    (list_method, list_path, headers), (trace_method, trace_path, _) = seen
    assert (list_method, trace_method) == ("GET", "GET")
    assert list_path == "/bem/api/v3/calls?limit=100&sortOrder=asc&workflowNames=claims+triage%2Ca%26b"
    assert trace_path == "/bem/api/v3/calls/c%2F1%20%3F%23/trace"
    lower: dict[str, Any] = {k.lower(): v for k, v in headers.items()}
    assert lower["x-api-key"] == "the-key"
    assert lower["user-agent"].startswith("bem-exporter/")
    assert lower["accept"] == "application/json"
    assert "gzip" in lower["accept-encoding"]
    assert lower["host"] == hosts[0]
