"""A bounded load generator for zero-downtime checks through the load balancer.

Sends a steady mix of requests (about `rate` per second, spread over a few
threads) to one HTTPS address on loopback, naming the shop in SNI and Host and
verifying its certificate against a given CA, until stopped or until its own
time and request limits run out. Counts every answer by status and path, every
connection error, and which release answered `/api/health/ready`.

    with Load("127.0.0.1", 32768, "shop.paydrop.test", ca, paths) as load:
        ...  # deploy, roll back, stop a host
    print(load.report())
    assert load.failures() == []
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import urllib3

READY_PATH = "/api/health/ready"


@dataclass
class Outcome:
    """One request: when it was sent (seconds since the start), path, status (0: no answer), error text."""

    at: float
    path: str
    status: int
    error: str = ""
    version: str = ""


@dataclass
class Load:
    address: str
    port: int
    server_name: str
    ca_file: str
    paths: list[str]
    rate: float = 50.0
    threads: int = 10
    # Hard bounds, whatever the caller does: the load stops by itself.
    max_seconds: float = 600.0
    max_requests: int = 40000
    timeout: float = 10.0
    outcomes: list[Outcome] = field(default_factory=list)
    # GETs resent once after a kept-alive connection closed without an answer.
    resent: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)
    _started: float = 0.0

    def __post_init__(self) -> None:
        if not self.address.startswith("127.") and self.address != "::1":
            raise ValueError(f"load goes to loopback only, not {self.address}")

    def __enter__(self) -> Load:
        self.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop()

    def start(self) -> None:
        self._started = time.monotonic()
        for index in range(self.threads):
            worker = threading.Thread(target=self._run, args=(index,), daemon=True)
            worker.start()
            self._workers.append(worker)

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(self.timeout + 5)

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def _pool(self) -> urllib3.HTTPSConnectionPool:
        return urllib3.HTTPSConnectionPool(
            self.address, self.port, maxsize=1, block=True,
            server_hostname=self.server_name, assert_hostname=self.server_name,
            cert_reqs="CERT_REQUIRED", ca_certs=self.ca_file,
            timeout=urllib3.Timeout(connect=self.timeout, read=self.timeout), retries=False)

    def _get(self, pool: urllib3.HTTPSConnectionPool, path: str) -> Any:
        return pool.request("GET", path, headers={"Host": self.server_name}, redirect=False, preload_content=True)

    def _run(self, index: int) -> None:
        pool = self._pool()
        reused = False
        interval = self.threads / self.rate
        sent = 0
        next_at = time.monotonic() + index * interval / self.threads
        while not self._stop.is_set():
            if self.elapsed() > self.max_seconds or len(self.outcomes) >= self.max_requests:
                return
            path = self.paths[(index + sent) % len(self.paths)]
            sent += 1
            at = self.elapsed()
            try:
                try:
                    response = self._get(pool, path)
                except urllib3.exceptions.ProtocolError:
                    # HTTP keep-alive's race: the server closed an idle kept-alive connection
                    # (nginx's old workers do after a reload) as this request went out, and no
                    # answer came. Browsers resend such a GET once on a new connection; so do we,
                    # and count it. A server that is really down fails the resend too.
                    if not reused:
                        raise
                    pool.close()
                    pool = self._pool()
                    reused = False
                    with self._lock:
                        self.resent += 1
                    response = self._get(pool, path)
                reused = True
                version = ""
                if path == READY_PATH and response.status == 200:
                    version = str(response.json().get("version", ""))
                outcome = Outcome(at, path, response.status, version=version)
            except Exception as error:  # noqa: BLE001 - every failure is counted, whatever its kind
                outcome = Outcome(at, path, 0, error=f"{type(error).__name__}: {error}")
                pool.close()
                pool = self._pool()
                reused = False
            with self._lock:
                self.outcomes.append(outcome)
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            else:
                next_at = time.monotonic()
        pool.close()

    def failures(self, since: float = 0.0) -> list[Outcome]:
        """Answers other than 2xx, and requests without an answer, sent at or after `since`."""
        with self._lock:
            return [o for o in self.outcomes if o.at >= since and not 200 <= o.status < 300]

    def versions(self, since: float = 0.0) -> list[str]:
        """Releases that answered readiness to requests sent at or after `since`, in the order
        the requests were sent (repeats collapsed). Around a switch the two releases may
        alternate for a moment: nginx's old workers finish the requests already on their
        keep-alive connections while new connections reach the new upstream."""
        seen: list[str] = []
        with self._lock:
            outcomes = sorted(self.outcomes, key=lambda o: o.at)
        for outcome in outcomes:
            if outcome.at >= since and outcome.version and (not seen or seen[-1] != outcome.version):
                seen.append(outcome.version)
        return seen

    def report(self) -> str:
        with self._lock:
            outcomes = list(self.outcomes)
        by_status = collections.Counter(o.status for o in outcomes)
        errors = collections.Counter(o.error.split(":")[0] for o in outcomes if o.error)
        seconds = max(self.elapsed(), 0.001)
        return (f"{len(outcomes)} requests in {seconds:.0f} s ({len(outcomes) / seconds:.0f}/s); "
                f"status {dict(sorted(by_status.items()))}; connection errors {dict(errors)}; "
                f"resent after a closed keep-alive connection {self.resent}; "
                f"releases seen {self.versions()}")
