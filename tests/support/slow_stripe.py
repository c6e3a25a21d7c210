"""A proxy in front of localstripe that answers slowly and honours Idempotency-Key.

Real Stripe, when slow, still does the work: the charge happens and only the
answer is late. So the proxy forwards a request at once and holds back the
answer for the configured delay. localstripe ignores ``Idempotency-Key``; the
proxy implements it as Stripe does (the same key gets the first request's
answer, and is never forwarded twice), so tests can count PaymentIntents
created, the way a double charge would show::

    with SlowStripe(stripe_server.url) as slow:
        slow.delay("POST", "/v1/payment_intents", 6.0)
        ... STRIPE_API_BASE = slow.url ...
        slow.calls("POST", "/v1/payment_intents")   # every call, forwarded or replayed
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self
from urllib.parse import parse_qs

import requests

from .servers import HOST, free_port

_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host",
               "content-encoding"}


@dataclass
class Call:
    method: str
    path: str
    idempotency_key: str | None
    forwarded: bool
    metadata_order_id: str | None = None


@dataclass
class _Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class SlowStripe:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.port = free_port()
        self._delays: dict[tuple[str, str], float] = {}
        self._calls: list[Call] = []
        self._answers: dict[str, _Answer] = {}
        self._in_flight: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._busy = 0
        self._server = ThreadingHTTPServer((HOST, self.port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def delay(self, method: str, path: str, seconds: float) -> None:
        """Hold back answers to ``method path`` (exact path) by ``seconds``; 0 removes it."""
        with self._lock:
            if seconds:
                self._delays[(method, path)] = seconds
            else:
                self._delays.pop((method, path), None)

    def calls(self, method: str, path: str) -> list[Call]:
        with self._lock:
            return [c for c in self._calls if c.method == method and c.path == path]

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Wait until every request (even those whose client gave up) is answered."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if self._busy == 0:
                    return
            time.sleep(0.05)
        raise TimeoutError("the slow Stripe proxy is still busy")

    def _forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> _Answer:
        response = requests.request(method, self.upstream + path, headers=headers, data=body,
                                    timeout=30)
        kept = {k: v for k, v in response.headers.items() if k.lower() not in _HOP_BY_HOP}
        return _Answer(response.status_code, kept, response.content)

    def _serve(self, method: str, path: str, headers: dict[str, str], body: bytes) -> _Answer:
        key = headers.get("Idempotency-Key") if method == "POST" else None
        delay = self._delays.get((method, path.split("?")[0]), 0.0)
        order_id = (parse_qs(body.decode(errors="replace")).get("metadata[order_id]") or [None])[0]
        if key is None:
            answer = self._forward(method, path, headers, body)
            forwarded = True
        else:
            with self._lock:
                first = key not in self._answers and key not in self._in_flight
                if first:
                    self._in_flight[key] = threading.Event()
                event = self._in_flight.get(key)
            if first:
                try:
                    answer = self._forward(method, path, headers, body)
                    with self._lock:
                        self._answers[key] = answer
                finally:
                    assert event is not None
                    event.set()
            elif event is not None:
                event.wait(30)
            with self._lock:
                answer = self._answers[key]
            forwarded = first
        with self._lock:
            self._calls.append(Call(method, path.split("?")[0], key, forwarded, order_id))
        if delay:
            time.sleep(delay)
        return answer

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

            def _any(self) -> None:
                with proxy._lock:
                    proxy._busy += 1
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                    body = self.rfile.read(length) if length else b""
                    headers = {k: v for k, v in self.headers.items()
                               if k.lower() not in _HOP_BY_HOP}
                    answer = proxy._serve(self.command, self.path, headers, body)
                    try:
                        self.send_response(answer.status)
                        for name, value in answer.headers.items():
                            self.send_header(name, value)
                        self.send_header("Content-Length", str(len(answer.body)))
                        self.end_headers()
                        self.wfile.write(answer.body)
                    except OSError:
                        pass  # the client gave up waiting: Stripe did the work anyway
                finally:
                    with proxy._lock:
                        proxy._busy -= 1

            do_GET = do_POST = do_DELETE = _any

        return Handler

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
