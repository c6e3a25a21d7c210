"""Load generators of make bench, all aimed at 127.0.0.1 and bounded in time
or count: wrk (closed loop, fixed connections, fixed duration) for pages and
downloads; Python clients for signed webhooks (each event exactly N times)
and for a steady request rate during releases."""

from __future__ import annotations

import http.client
import json
import queue
import shutil
import ssl
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

WRK_SCRIPT = Path(__file__).resolve().parent / "wrk" / "report.lua"


def need_wrk() -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("make bench needs wrk (Debian package `wrk`): apt-get install wrk")


def wrk(url: str, *, seconds: float, connections: int, threads: int = 2, host: str | None = None,
        paths_file: Path | None = None, headers: dict[str, str] | None = None) -> dict:
    """One closed-loop wrk run: throughput, bytes/s, p50/p99 and failed requests."""
    cmd = ["wrk", "-t", str(min(threads, connections)), "-c", str(connections), "-d", f"{seconds}s",
           "--timeout", "10s", "-s", str(WRK_SCRIPT)]
    if host:
        cmd += ["-H", f"Host: {host}"]
    for name, value in (headers or {}).items():
        cmd += ["-H", f"{name}: {value}"]
    cmd.append(url)
    if paths_file:
        cmd += ["--", str(paths_file)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=True)
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{done.stdout}\n{done.stderr}")
    raw = json.loads(line.removeprefix("BENCH_JSON "))
    seconds_run = raw["duration_us"] / 1e6
    failed = raw["errors_status"] + raw["errors_connect"] + raw["errors_read"] + raw["errors_write"] \
        + raw["errors_timeout"]
    return {
        "requests": raw["requests"],
        "seconds": round(seconds_run, 2),
        "requests_per_s": round(raw["requests"] / seconds_run, 1),
        "bytes_per_s": round(raw["bytes"] / seconds_run),
        "p50_ms": round(raw["p50_us"] / 1000, 2),
        "p99_ms": round(raw["p99_us"] / 1000, 2),
        "failed": failed,
        "connections": connections,
    }


def tls_context(ca: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca))


@dataclass
class Request:
    method: str
    path: str
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def send_each(port: int, ca: Path, requests: list[Request], *, copies: int = 1, connections: int = 16,
              deadline_s: float = 240) -> dict:
    """Send every request `copies` times: one lane per copy, each lane walks the
    list in the same order on its own connections, so the copies of a request
    arrive at nearly the same moment (a retrying Stripe, racing itself)."""
    per_lane = max(1, connections // copies)
    context = tls_context(ca)
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    lock = threading.Lock()
    lanes = []
    for _ in range(copies):
        q: queue.SimpleQueue[Request] = queue.SimpleQueue()
        for r in requests:
            q.put(r)
        lanes.append(q)
    stop_at = time.monotonic() + deadline_s

    def worker(q: queue.SimpleQueue[Request]) -> None:
        conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=30)
        try:
            while time.monotonic() < stop_at:
                try:
                    r = q.get_nowait()
                except queue.Empty:
                    return
                started = time.perf_counter()
                try:
                    conn.request(r.method, r.path, body=r.body, headers=r.headers)
                    answer = conn.getresponse()
                    answer.read()
                    status = str(answer.status)
                except (OSError, http.client.HTTPException) as exc:
                    status = type(exc).__name__
                    conn.close()
                    conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=30)
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    statuses[status] += 1
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(q,)) for q in lanes for _ in range(per_lane)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    latencies.sort()
    sent = len(latencies)
    return {
        "requests": sent,
        "expected": len(requests) * copies,
        "seconds": round(seconds, 2),
        "requests_per_s": round(sent / seconds, 1),
        "p50_ms": round(latencies[sent // 2] * 1000, 2) if sent else None,
        "p99_ms": round(latencies[min(sent - 1, int(sent * 0.99))] * 1000, 2) if sent else None,
        "statuses": dict(statuses),
        "connections": per_lane * copies,
    }


@dataclass
class Sample:
    at: float
    status: str
    release: str
    retried: bool = False


class SteadyLoad:
    """GETs of one path at a fixed rate (open loop: a slow answer does not slow
    the schedule), each answer's status and X-Release recorded; stops by
    itself after max_seconds."""

    def __init__(self, port: int, ca: Path, path: str = "/", rate: float = 50, workers: int = 8,
                 max_seconds: float = 600) -> None:
        self.port, self.path, self.rate, self.workers = port, path, rate, workers
        self.context = tls_context(ca)
        self.samples: list[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.max_seconds = max_seconds

    def __enter__(self) -> SteadyLoad:
        self.t0 = time.monotonic()
        for i in range(self.workers):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def _run(self, index: int) -> None:
        interval = self.workers / self.rate
        next_at = self.t0 + index * (interval / self.workers)
        conn = http.client.HTTPSConnection("localhost", self.port, context=self.context, timeout=10)
        while not self._stop.is_set() and time.monotonic() - self.t0 < self.max_seconds:
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
            next_at += interval
            at = time.monotonic()
            retried = False
            for attempt in (1, 2):
                try:
                    conn.request("GET", self.path)
                    answer = conn.getresponse()
                    answer.read()
                    status, release = str(answer.status), answer.getheader("X-Release", "")
                    break
                except (OSError, http.client.HTTPException) as exc:
                    status, release = type(exc).__name__, ""
                    conn.close()
                    conn = http.client.HTTPSConnection("localhost", self.port, context=self.context, timeout=10)
                    # A keep-alive connection the server closed as the request left
                    # (nginx's old workers close idle ones at a reload): browsers
                    # retry such a GET once on a new connection (RFC 9112, 9.3.1).
                    if attempt == 1 and isinstance(exc, http.client.RemoteDisconnected | ConnectionResetError):
                        retried = True
                        continue
                    break
            with self._lock:
                self.samples.append(Sample(at, status, release, retried))
        conn.close()

    def between(self, start: float, end: float) -> list[Sample]:
        with self._lock:
            return [s for s in self.samples if start <= s.at <= end]
