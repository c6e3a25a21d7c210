"""Serve a WSGI app from a real threaded HTTP server on 127.0.0.1 (for browsers,
localstripe's webhooks and concurrency tests)."""

from __future__ import annotations

import threading
from typing import Any

from werkzeug.serving import make_server

from .servers import HOST, free_port, wait_for_port


class LiveServer:
    def __init__(self, app: Any, port: int | None = None) -> None:
        self.port = port or free_port()
        self._server = make_server(HOST, self.port, app, threaded=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name=f"live-server-{self.port}")

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> LiveServer:
        self._thread.start()
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
