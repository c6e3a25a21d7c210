"""A tiny SMTP server that keeps every message it receives (no TLS, no auth).

``fail_next(n)`` makes it refuse the next ``n`` messages with a temporary
error (451), as a mail server under load or being restarted does;
``stall(seconds)`` makes it wait that long before greeting each connection, as
a mail server that accepts connections but answers slowly does.
"""

from __future__ import annotations

import email
import email.policy
import socketserver
import threading
import time
from email.message import EmailMessage as Message

from .servers import HOST


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def _send(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        if self.server.sink.stall_seconds:
            time.sleep(self.server.sink.stall_seconds)
        self._send("220 fake-smtp ready")
        data_mode = False
        lines: list[bytes] = []
        while True:
            raw = self.rfile.readline()
            if not raw:
                return
            if data_mode:
                if raw.rstrip(b"\r\n") == b".":
                    data_mode = False
                    message = email.message_from_bytes(b"".join(lines), policy=email.policy.default)
                    self.server.sink.add(message)
                    lines = []
                    self._send("250 queued")
                else:
                    lines.append(raw[1:] if raw.startswith(b"..") else raw)
                continue
            verb = raw.decode(errors="replace").strip().split(" ", 1)[0].upper()
            if verb == "EHLO":
                self._send("250-fake-smtp")
                self._send("250 8BITMIME")
            elif verb == "MAIL" and self.server.sink.take_failure():
                self._send("451 4.3.0 try again later")
            elif verb in ("HELO", "MAIL", "RCPT", "RSET", "NOOP"):
                self._send("250 ok")
            elif verb == "DATA":
                data_mode = True
                self._send("354 end with .")
            elif verb == "QUIT":
                self._send("221 bye")
                return
            else:
                self._send("502 not implemented")


class _Sink:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.refused = 0
        self.stall_seconds = 0.0
        self._failures = 0
        self._cond = threading.Condition()

    def take_failure(self) -> bool:
        with self._cond:
            if self._failures <= 0:
                return False
            self._failures -= 1
            self.refused += 1
            return True

    def add(self, message: Message) -> None:
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    sink: _Sink


class FakeSmtpServer:
    def __init__(self) -> None:
        self._server = _Server((HOST, 0), _Handler)
        self._server.sink = _Sink()
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def messages(self) -> list[Message]:
        return self._server.sink.messages

    def fail_next(self, count: int) -> None:
        with self._server.sink._cond:
            self._server.sink._failures = count

    def stall(self, seconds: float) -> None:
        self._server.sink.stall_seconds = seconds

    @property
    def refused(self) -> int:
        return self._server.sink.refused

    def start(self) -> FakeSmtpServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def wait_for(self, count: int = 1, timeout: float = 10.0) -> list[Message]:
        deadline = time.monotonic() + timeout
        sink = self._server.sink
        with sink._cond:
            while len(sink.messages) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{len(sink.messages)} of {count} messages arrived")
                sink._cond.wait(remaining)
            return list(sink.messages)
