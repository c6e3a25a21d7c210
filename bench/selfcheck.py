"""QUICK without a sandbox: the harness checks itself on throw-away local
pieces, so `make test` keeps the scripts from rotting without a sandbox.

It starts, on 127.0.0.1 only and for a few seconds: gunicorn with the bench's
hello app (the venv's gunicorn) and nginx (this machine's) with a throw-away
self-signed certificate in front of it, then drives them with the same load
generators, JSON, table and chart code as the real run. It measures nothing
about Paydrop: the sandbox-only parts (fixtures in the database, the app's own
pages, deploy.yml) need `make demo` first."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from . import load, report

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str) -> None:
    for _ in range(100):
        try:
            urllib.request.urlopen(url, timeout=1)  # noqa: S310 - a fixed http://127.0.0.1 URL
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def run(results: dict) -> list[dict]:
    tmp = Path(tempfile.mkdtemp(prefix="paydrop-bench-selfcheck-"))
    tmp.chmod(0o755)  # nginx's workers read the direct file
    app_port, tls_port = _free_port(), _free_port()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost", "-keyout", tmp / "key.pem", "-out", tmp / "cert.pem"],
                   check=True, capture_output=True)
    (tmp / "direct").mkdir()
    (tmp / "direct" / "file.bin").write_bytes(b"x" * 1024 * 1024)
    (tmp / "nginx.conf").write_text(f"""
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
daemon off;
events {{}}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    upstream hello {{ server 127.0.0.1:{app_port}; keepalive 8; }}
    server {{
        listen 127.0.0.1:{tls_port} ssl;
        server_name localhost;
        ssl_certificate {tmp}/cert.pem;
        ssl_certificate_key {tmp}/key.pem;
        location = /nginx-health {{ return 200 "ok\\n"; }}
        location /direct/ {{ alias {tmp}/direct/; }}
        location / {{
            proxy_pass http://hello;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
""")
    gunicorn = Path(sys.executable).parent / "gunicorn"
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    procs = [
        subprocess.Popen([str(gunicorn), "--bind", f"127.0.0.1:{app_port}", "--workers", "1", "--worker-class",
                          "gthread", "--threads", "4", "--chdir", str(HERE), "hello:app"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([nginx, "-c", str(tmp / "nginx.conf"), "-p", str(tmp)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    try:
        _wait(f"http://127.0.0.1:{app_port}/")
        time.sleep(0.5)
        url = f"https://localhost:{tls_port}"
        ca = tmp / "cert.pem"
        pages = load.wrk(url + "/", seconds=1, connections=4)
        paths = tmp / "paths.txt"
        paths.write_text("/direct/file.bin\n")
        files = load.wrk(url, seconds=1, connections=2, paths_file=paths)
        posts = load.send_each(tls_port, ca, [load.Request("POST", f"/{i}", b"{}") for i in range(10)], copies=3,
                               connections=6)
        with load.SteadyLoad(tls_port, ca, "/", rate=20, workers=2, max_seconds=5) as steady:
            time.sleep(1)
        steady_failed = sum(s.status != "200" for s in steady.samples)
        checks = {"pages": pages, "files": files, "posts": posts,
                  "steady": {"requests": len(steady.samples), "failed": steady_failed}}
        results["benchmarks"]["selfcheck"] = checks
        problems = [name for name, r in checks.items() if r.get("failed")]
        if posts["statuses"] != {"200": 30} or not pages["requests"] or not files["bytes_per_s"]:
            problems.append("unexpected answers")
        if problems:
            raise RuntimeError(f"self-check: {problems}: {checks}")
        return [
            report.row("self-check", "wrk: hello through local nginx (TLS)", pages["requests_per_s"], None,
                       "req/s", "-", None),
            report.row("self-check", "wrk: 1 MB file from nginx", round(files["bytes_per_s"] / 1e6, 1), None,
                       "MB/s", "-", None),
            report.row("self-check", "10 POSTs, each 3x concurrently", posts["requests_per_s"], None,
                       "req/s", "-", None),
            report.row("self-check", "steady 20 req/s for 1 s: answers", float(len(steady.samples)), 20.0,
                       "req", "-", None),
        ]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)
