"""A small, real HTTP stand-in for the SOM / DASHER identifier service.

``start_identifier_server()`` runs a :class:`IdentifierServer`
(``http.server.ThreadingHTTPServer`` on 127.0.0.1, a free port) in a daemon
thread and returns ``(url, server)``; ``url`` ends in ``/identifiers`` and is
the only path answered (others get 404).  Call ``server.stop()`` when done.

Request (POST, JSON)::

    {"identifiers": [{"id": ..., "id_source": ..., "id_timestamp": ...,
                      "items": [{"id": ..., "id_source": ..., "id_timestamp": ...}]}]}

Answer (200, JSON), one entry per entity and per item, in request order::

    {"results": [{"id": ..., "id_source": ..., "suid": "661f32", "jitter": -19,
                  "jittered_timestamp": "...",
                  "items": [{"id": ..., "id_source": ..., "suid": "0a1b2c3d",
                             "jitter": -19, "jittered_timestamp": "..."}]}]}

Assumption about the shape: it follows what ``som.api.identifiers`` (the
client the original sendit used) consumed: ``response["results"]`` is a list
of entities with ``id``, ``id_source``, ``suid``, ``jitter`` and
``jittered_timestamp``, each with ``items`` carrying the same fields (see
the example in som's ``replace_identifiers`` docstring, where the entity and
its item share one ``jitter``).  ``jittered_timestamp`` is ``null`` when no
``id_timestamp`` was sent.  Codes are deterministic (SHA-256 of the server's
``salt``, ``id_source`` and ``id``), so split requests get the same ``suid``
for the same patient, like the real (stateful) service.  The jitter is one
per patient in ``[-33, -3]`` (the range the service's Swagger documents).

Knobs (thread-safe): ``fail_next(n, status=503, retry_after=None)`` (with a
``Retry-After`` header when given), ``stall_next(n, seconds)``,
``answer_next(payload)`` (a canned 200 answer),
``max_items`` (more items in one entity -> 413), ``token`` (when set, a
matching ``Authorization: Bearer`` header is required, else 401).
``request_count`` counts every POST received (including failed ones),
``bodies`` keeps the parsed JSON of each and ``times`` the wall-clock time
(``time.time()``) each arrived.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PATH = "/identifiers"


class IdentifierServer(ThreadingHTTPServer):
    """The fake identifier service; see the module docstring."""

    daemon_threads = True

    def __init__(self, salt: str = "test-service", max_items: int = 1000) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.salt = salt
        self.max_items = max_items
        self.token: str | None = None
        self.lock = threading.Lock()
        self.request_count = 0
        self.bodies: list[Any] = []
        self.times: list[float] = []
        self._fail: list[tuple[int, str | None]] = []
        self._stall: list[float] = []
        self._answers: list[Any] = []
        self._released = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}{PATH}"

    def fail_next(self, n: int, status: int = 503, retry_after: str | None = None) -> None:
        """Answer the next ``n`` requests with HTTP ``status`` (and ``Retry-After``, if given)."""
        with self.lock:
            self._fail.extend([(status, retry_after)] * n)

    def stall_next(self, n: int, seconds: float) -> None:
        """Wait ``seconds`` before answering each of the next ``n`` requests."""
        with self.lock:
            self._stall.extend([seconds] * n)

    def answer_next(self, payload: Any) -> None:
        """Answer the next request with HTTP 200 and ``payload`` (e.g. a malformed answer)."""
        with self.lock:
            self._answers.append(payload)

    def reset(self) -> None:
        """Clear knobs and counters."""
        with self.lock:
            self._fail.clear()
            self._stall.clear()
            self._answers.clear()
            self.bodies.clear()
            self.times.clear()
            self.request_count = 0

    def code(self, kind: str, source: str, ident: str, width: int) -> str:
        digest = hashlib.sha256(f"{self.salt}\0{kind}\0{source}\0{ident}".encode()).hexdigest()
        return digest[:width]

    def jitter(self, source: str, ident: str) -> int:
        return -3 - int(self.code("jitter", source, ident, 8), 16) % 31

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Release stalled handlers, stop serving and close the socket."""
        self._released.set()
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _shift(stamp: Any, days: int) -> str | None:
    if not isinstance(stamp, str) or not stamp:
        return None
    try:
        when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (when + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%S%z")


class _Handler(BaseHTTPRequestHandler):
    server: IdentifierServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
        return

    def _send(self, status: int, payload: Any, retry_after: str | None = None) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            if retry_after is not None:
                self.send_header("Retry-After", retry_after)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout tests)

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        srv = self.server
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw or b"null")
        except ValueError:
            body = None
        with srv.lock:
            srv.request_count += 1
            srv.bodies.append(body)
            srv.times.append(time.time())
            fail = srv._fail.pop(0) if srv._fail else None
            stall = srv._stall.pop(0) if srv._stall else None
            canned = srv._answers.pop(0) if srv._answers else None
        if stall:
            srv._released.wait(stall)
        if self.path != PATH:
            self._send(404, {"error": "not found"})
            return
        if fail is not None:
            self._send(fail[0], {"error": "injected failure"}, fail[1])
            return
        if canned is not None:
            self._send(200, canned)
            return
        if srv.token and self.headers.get("Authorization") != f"Bearer {srv.token}":
            self._send(401, {"error": "unauthorized"})
            return
        if not isinstance(body, dict) or not isinstance(body.get("identifiers"), list):
            self._send(400, {"error": "expected {'identifiers': [...]}"})
            return
        results = []
        for entity in body["identifiers"]:
            if not isinstance(entity, dict) or "id" not in entity:
                self._send(400, {"error": "entity without id"})
                return
            items = entity.get("items") or []
            if len(items) > srv.max_items:
                self._send(413, {"error": f"more than {srv.max_items} items in one entity"})
                return
            source = str(entity.get("id_source", ""))
            jitter = srv.jitter(source, str(entity["id"]))
            answered = []
            for item in items:
                isource = str(item.get("id_source", ""))
                answered.append(
                    {
                        "id": item.get("id"),
                        "id_source": isource,
                        "suid": srv.code("item", isource, f"{entity['id']}\0{item.get('id')}", 8),
                        "jitter": jitter,
                        "jittered_timestamp": _shift(item.get("id_timestamp"), jitter),
                    }
                )
            results.append(
                {
                    "id": entity["id"],
                    "id_source": source,
                    "suid": srv.code("entity", source, str(entity["id"]), 6),
                    "jitter": jitter,
                    "jittered_timestamp": _shift(entity.get("id_timestamp"), jitter),
                    "items": answered,
                }
            )
        self._send(200, {"results": results})


def start_identifier_server(
    salt: str = "test-service", max_items: int = 1000
) -> tuple[str, IdentifierServer]:
    """Start the fake service; return ``(url, server)``.  Call ``server.stop()`` after."""
    server = IdentifierServer(salt=salt, max_items=max_items)
    server.start()
    return server.url, server
