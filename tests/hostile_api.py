"""A bem API that misbehaves on purpose, over real HTTP on loopback.

A small HTTP/1.1 server (raw asyncio streams, so that it can do what no well-behaved server
framework lets it: trickle a body byte by byte, cut it short, send a gzip bomb). Each request is
answered by the upstream simulator when one is given (the truth of what bem holds), then passed
through `fault`, which may rewrite the answer or how it is sent. Every connection is closed after
its answer, so a cut body cannot be mistaken for the next response.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import httpx


@dataclass(frozen=True)
class Reply:
    """An answer and how to send it."""

    status: int = 200
    body: bytes = b"{}"
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/json"})
    trickle: float | None = None
    """Send the body one byte every `trickle` seconds."""
    cut_at: int | None = None
    """Close the connection after this many body bytes (no Content-Length: close-delimited)."""

    def but(self, **changes: object) -> Reply:
        return replace(self, **changes)  # type: ignore[arg-type]


Fault = Callable[[str, Reply], Reply]
"""(request target with query, the answer bem would give) -> the answer sent."""
Answer = Callable[[str, str], Reply | None]
"""(method, request target) -> an answer sent without asking the upstream, or None to ask it."""


def no_fault(_: str, reply: Reply) -> Reply:
    return reply


def ask_upstream(_method: str, _target: str) -> Reply | None:
    return None


class HostileApi:
    """Use as `with HostileApi(simulator_url) as url:`; set `fault` (and `answer`) at any time.
    Requests with a body (a create request's POST) are forwarded with it."""

    def __init__(self, upstream: str | None = None, fault: Fault = no_fault, answer: Answer = ask_upstream) -> None:
        self.upstream = upstream
        self.fault = fault
        self.answer = answer
        self.targets: list[str] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._http: httpx.AsyncClient | None = None
        self._serving: set[asyncio.Task[None]] = set()

    def start(self) -> str:
        self._thread.start()
        port = asyncio.run_coroutine_threadsafe(self._open(), self._loop).result(10)
        return f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    async def _open(self) -> int:
        self._http = httpx.AsyncClient(timeout=30)
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._serving):  # a body still trickling
            task.cancel()
        await asyncio.gather(*self._serving, return_exceptions=True)
        if self._http is not None:
            await self._http.aclose()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._serving.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *header_lines = head.decode("latin-1").split("\r\n")
            method, target = request_line.split(" ")[:2]
            self.targets.append(target)
            headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in header_lines if ": " in line)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            reply = self.answer(method, target) or await self._upstream(method, target, headers, body)
            reply = self.fault(target, reply)
            await _send(writer, reply)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._serving.discard(task)
            writer.close()

    async def _upstream(self, method: str, target: str, headers: dict[str, str], body: bytes) -> Reply:
        if self.upstream is None or self._http is None:
            return Reply()
        forwarded = {k: v for k, v in headers.items() if k in ("x-api-key", "accept", "content-type")}
        answer = await self._http.request(method, self.upstream + target, headers=forwarded, content=body)
        return Reply(answer.status_code, answer.content, {"content-type": "application/json"})


async def _send(writer: asyncio.StreamWriter, reply: Reply) -> None:
    headers = dict(reply.headers)
    if reply.cut_at is None:
        headers["content-length"] = str(len(reply.body))
    lines = [f"HTTP/1.1 {reply.status} X", *(f"{k}: {v}" for k, v in headers.items()), "connection: close"]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    body = reply.body if reply.cut_at is None else reply.body[: reply.cut_at]
    if reply.trickle is None:
        writer.write(body)
        await writer.drain()
        return
    for offset in range(len(body)):
        writer.write(body[offset : offset + 1])
        await writer.drain()
        await asyncio.sleep(reply.trickle)
