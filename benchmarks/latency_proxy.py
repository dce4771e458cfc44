"""A TCP forwarder on 127.0.0.1 that delays every client-to-server byte by a fixed time.

It models a network with ``--delay`` seconds of one-way latency towards the
server: every request (an HTTP/1.1 request or a gRPC message over HTTP/2)
reaches the server ``--delay`` seconds later than it was sent, so each
request-response round trip costs ``--delay`` more, while requests sent
concurrently (several connections, or streams on one HTTP/2 connection) overlap
as they would on a real link.  Bytes are forwarded in order, bandwidth is not
limited, and the server-to-client direction is not delayed.

The proxy has a bounded lifetime (``--lifetime`` seconds, default 900): it exits
then even if its parent forgot it.  It prints ``listening on 127.0.0.1:PORT``
once ready.

Run: ``python benchmarks/latency_proxy.py --upstream 127.0.0.1:8081 [--port 0]
[--delay 0.05] [--lifetime 900]``; :class:`ProxyProcess` starts it as a
subprocess (its own process group) for the benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

CHUNK = 1 << 16
QUEUE_CHUNKS = 1024
"""Chunks in flight per connection and direction (64 MiB), then reading pauses."""
READY_TIMEOUT = 10.0


async def _delayed_pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float
) -> None:
    """Copy ``reader`` to ``writer``, each chunk ``delay`` seconds after it arrived."""
    loop = asyncio.get_running_loop()
    line: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)

    async def send() -> None:
        while True:
            due, data = await line.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                return
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(send())
    try:
        while True:
            data = await reader.read(CHUNK)
            await line.put((loop.time() + delay, data))
            if not data:
                break
        await sender
    finally:
        sender.cancel()
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()


async def _handle(
    client_r: asyncio.StreamReader,
    client_w: asyncio.StreamWriter,
    upstream: tuple[str, int],
    delay: float,
) -> None:
    try:
        server_r, server_w = await asyncio.open_connection(*upstream)
    except OSError:
        client_w.close()
        return
    for w in (client_w, server_w):
        sock = w.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        await asyncio.gather(
            _delayed_pipe(client_r, server_w, delay),
            _delayed_pipe(server_r, client_w, 0.0),
        )
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        for w in (client_w, server_w):
            w.close()


async def serve(upstream: tuple[str, int], port: int, delay: float, lifetime: float) -> None:
    """Listen on ``127.0.0.1:port`` and forward to ``upstream`` for ``lifetime`` seconds."""

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _handle(r, w, upstream, delay)

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=512)
    bound = server.sockets[0].getsockname()[1]
    print(f"listening on 127.0.0.1:{bound}", flush=True)
    async with server:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.serve_forever(), timeout=lifetime)


def main(argv: list[str] | None = None) -> int:
    """Run the proxy until ``--lifetime`` seconds have passed (or it is signalled)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--upstream", required=True, help="HOST:PORT of the real server")
    p.add_argument("--port", type=int, default=0, help="port to listen on (0: a free one)")
    p.add_argument("--delay", type=float, default=0.05, help="seconds added (default 0.05)")
    p.add_argument("--lifetime", type=float, default=900.0, help="seconds before exiting")
    args = p.parse_args(argv)
    host, _, port = str(args.upstream).rpartition(":")
    asyncio.run(serve((host or "127.0.0.1", int(port)), args.port, args.delay, args.lifetime))
    return 0


@dataclass
class ProxyProcess:
    """The proxy as a subprocess in its own process group (so it never shares our GIL)."""

    upstream: str
    delay: float = 0.05
    lifetime: float = 900.0
    port: int = 0
    proc: subprocess.Popen[str] | None = field(default=None, repr=False)

    def start(self) -> ProxyProcess:
        """Start it and wait for its ``listening on`` line."""
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--upstream", self.upstream,
            "--delay", str(self.delay),
            "--lifetime", str(self.lifetime),
        ]  # fmt: skip
        self.proc = subprocess.Popen(  # noqa: S603 - fixed argv
            cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
            start_new_session=True,
        )  # fmt: skip
        out: IO[str] | None = self.proc.stdout
        deadline = time.monotonic() + READY_TIMEOUT
        line = out.readline() if out is not None else ""
        if not line.startswith("listening on") or time.monotonic() > deadline:
            self.stop()
            raise RuntimeError(f"latency proxy to {self.upstream} did not start: {line!r}")
        self.port = int(line.rsplit(":", 1)[1])
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        """Terminate its process group and wait for it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None


if __name__ == "__main__":
    sys.exit(main())
