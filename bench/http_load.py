"""A lean HTTP/1.1 load client for bench/endpoint.py, run in its own process.

The bench's server and client share the machine's cores, so the client's own cost lowers the figure
measured for the server. Python threads on http.client cost about as much CPU per request as the
endpoint itself (its header parsing, and the GIL shared by the threads); this client keeps one
keep-alive connection per simulated client on one asyncio loop (uvloop when installed, as the server
uses) and parses answers with httptools, the parser the server's uvicorn uses. Each request is a
complete POST with its Content-Type, Accept and Content-Length, and each answer is read to its end.

    python bench/http_load.py --port P --connections 8 --seconds 5 --budget 1000 --bodies FILE

FILE is a JSON list of request bodies (text); request i (counted over all connections) sends body i
modulo their number. It stops issuing at --budget requests or after --seconds, whichever comes
first, and prints one JSON object: "latencies" (seconds per request, answered ones), "wall" (first
request to last answer) and "errors" (a non-200 answer with its start, or a failed connection,
which is then reopened; requests not answered 60 s after the end are errors too).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import httptools

ANSWER_TIMEOUT_SECONDS = 60.0


class Connection(asyncio.Protocol):
    """One keep-alive connection; ``request`` sends one request and waits for its whole answer."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.answer: asyncio.Future | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.body: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._settle(ConnectionError(f"unparseable answer: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._settle(ConnectionError(f"connection closed: {exc or 'by the server'}"))

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_result((self.parser.get_status_code(), b"".join(self.body)))

    def _settle(self, error: Exception) -> None:
        if self.answer is not None and not self.answer.done():
            self.answer.set_exception(error)

    async def request(self, payload: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.answer = asyncio.get_running_loop().create_future()
        self.body = []
        self.transport.write(payload)
        return await self.answer


def payloads(bodies: list[str], port: int) -> list[bytes]:
    out = []
    for text in bodies:
        body = text.encode()
        head = (
            f"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: text/csv\r\n"
            f"Accept: text/csv\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        out.append(head.encode() + body)
    return out


async def run(port: int, connections: int, seconds: float, budget: int, bodies: list[str]) -> dict:
    loop = asyncio.get_running_loop()
    requests = payloads(bodies, port)
    latencies: list[float] = []
    errors: list[str] = []
    issued = 0
    last_answer = 0.0
    started = time.perf_counter()
    deadline = started + seconds

    async def client() -> None:
        nonlocal issued, last_answer
        transport, conn = await loop.create_connection(Connection, "127.0.0.1", port)
        try:
            while time.perf_counter() < deadline and issued < budget:
                payload = requests[issued % len(requests)]
                issued += 1
                sent = time.perf_counter()
                try:
                    status, body = await conn.request(payload)
                except ConnectionError as exc:
                    errors.append(str(exc))
                    transport.close()
                    transport, conn = await loop.create_connection(Connection, "127.0.0.1", port)
                    continue
                last_answer = time.perf_counter()
                if status == 200:
                    latencies.append(last_answer - sent)
                else:
                    errors.append(f"{status}: {body[:200]!r}")
        finally:
            transport.close()

    tasks = [asyncio.ensure_future(client()) for _ in range(connections)]
    done, pending = await asyncio.wait(tasks, timeout=seconds + ANSWER_TIMEOUT_SECONDS)
    for task in pending:
        task.cancel()
        errors.append(f"no answer within {ANSWER_TIMEOUT_SECONDS:.0f} s of the end")
    for task in done:
        if task.exception() is not None:
            errors.append(f"{type(task.exception()).__name__}: {task.exception()}")
    return {"latencies": latencies, "wall": max(last_answer, started) - started, "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--budget", type=int, default=10**9)
    parser.add_argument("--bodies", required=True, help="a JSON list of request bodies")
    args = parser.parse_args()
    with open(args.bodies) as f:
        bodies = json.load(f)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run(args.port, args.connections, args.seconds, args.budget, bodies))
    else:
        result = uvloop.run(run(args.port, args.connections, args.seconds, args.budget, bodies))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
