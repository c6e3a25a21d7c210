"""The nginx rate limits' client key (roles/nginx/templates/paydrop-client-key.conf.j2):
an IPv4 client per address, an IPv6 client per /64, for every text form of an
address, compared with Python's `ipaddress`.

Two ways: the map's regexes evaluated here, over every way of writing an
address (each zero run compressed or not), and the snippet run by a real nginx
(the control node's, a system dependency of the tests) that takes the client
address from X-Real-IP, writes it in its own text form and echoes the key.
"""

from __future__ import annotations

import http.client
import ipaddress
import random
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import jinja2
import pytest

from tests.support.servers import free_port, wait_for_port

TEMPLATES = Path(__file__).resolve().parents[2] / "roles/nginx/templates"
SNIPPET = "paydrop-client-key.conf.j2"
BINARY = "$binary_remote_addr"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def snippet() -> str:
    # Rendered as the role renders it (it has no variables of its own).
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             autoescape=False)  # noqa: S701 - nginx configuration, not HTML
    return env.get_template(SNIPPET).render()


def expected_key(ip: IPAddress) -> bytes:
    """What the limits must count: the address (binary, as nginx's
    $binary_remote_addr) for IPv4 and IPv4-mapped IPv6, else the /64's four groups."""
    if isinstance(ip, ipaddress.IPv4Address) or ip.ipv4_mapped is not None:
        return ip.packed
    network = ipaddress.IPv6Network((ip, 64), strict=False)
    return ":".join(f"{int(group, 16):x}" for group in network.exploded.split(":")[:4]).encode()


def nginx_text(ip: IPAddress) -> str:
    """$remote_addr as nginx writes it (ngx_inet6_ntop): RFC 5952, except that an
    address whose first five or more groups are zero may end in a dotted quad."""
    if isinstance(ip, ipaddress.IPv4Address):
        return str(ip)
    words = [int.from_bytes(ip.packed[i:i + 2], "big") for i in range(0, 16, 2)]
    leading_zeros = next((i for i, word in enumerate(words) if word), 8)
    longest = max((len(run) for run in re.findall(r"0+", "".join("0" if w == 0 else "x" for w in words))),
                  default=0)
    p = ip.packed
    if leading_zeros == longest and (
            (longest == 5 and words[5] == 0xFFFF) or longest == 6
            or (longest == 7 and p[14] != 0 and p[15] != 1)):
        return ("::ffff:" if longest == 5 else "::") + str(ipaddress.IPv4Address(p[12:]))
    return ip.compressed


def spellings(ip: ipaddress.IPv6Address) -> Iterator[str]:
    """Every hex-only way of writing ``ip`` without leading zeros: uncompressed,
    and with any one run of zero groups (of one or more) written as "::"."""
    groups = [f"{int(group, 16):x}" for group in ip.exploded.split(":")]
    yield ":".join(groups)
    for start in range(8):
        for end in range(start + 1, 9):
            if all(group == "0" for group in groups[start:end]):
                yield ":".join(groups[:start]) + "::" + ":".join(groups[end:])


def addresses(seed: int = 64) -> list[IPAddress]:
    rng = random.Random(seed)
    found: list[IPAddress] = [ipaddress.ip_address(text) for text in (
        "::", "::1", "::2", "::102", "1::", "1:2:3:4:5:6:7:8", "::ffff:192.0.2.1",
        "::ffff:0:192.0.2.1", "::192.0.2.1", "64:ff9b::192.0.2.1", "fe80::1", "2001:db8::",
        "2001:db8:0:0:1::", "2001:db8:0:1::1", "2001:db8:1::1:0:0:1", "0:0:1::", "0:1::", "a:0:0:b::",
        "0:0:0:a:b:c:d:e", "0:0:a:b:c:d:e:f", "0:a:b:c:d:e:f:1", "a:0:b:c:d:e:f:1", "a:0:0:b:c:d:e:f",
        "a:b:0:c:d:e:f:1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "192.0.2.1", "0.0.0.0",  # noqa: S104 - mapped, never bound
        "10.0.0.1")]
    # Every pattern of zero and non-zero groups: "::" in every place it can go.
    for pattern in range(256):
        for _ in range(3):
            words = [0 if not pattern >> i & 1 else rng.choice(
                (rng.randrange(1, 16), rng.randrange(16, 1 << 16))) for i in range(8)]
            found.append(ipaddress.IPv6Address(b"".join(w.to_bytes(2, "big") for w in words)))
    found += [ipaddress.IPv6Address(rng.getrandbits(128)) for _ in range(500)]
    found += [ipaddress.IPv4Address(rng.getrandbits(32)) for _ in range(200)]
    return found


def evaluate(text: str, remote_addr: str, binary: bytes) -> bytes:
    """The value nginx's map gives ``remote_addr``: regexes in order, first match."""
    body = re.search(r"map \$remote_addr \$paydrop_client_key \{(.*?)\n\}", text, re.S)
    assert body, "the snippet defines $paydrop_client_key from $remote_addr"
    entries = re.findall(r'^\s*("~[^"]+"|default)\s+(\S+);', body.group(1), re.M)
    assert len(entries) == len([line for line in body.group(1).splitlines()
                                if line.strip() and not line.strip().startswith("#")])
    for pattern, value in entries:
        match = None if pattern == "default" else re.search(pattern[2:-1], remote_addr)
        if pattern != "default" and match is None:
            continue
        if value == BINARY:
            return binary
        assert match is not None and BINARY not in value
        return match.expand(re.sub(r"\$(\d)", r"\\\1", value)).encode()
    raise AssertionError(f"no entry and no default for {remote_addr}")


def test_the_map_gives_each_ipv6_client_its_64_in_every_spelling() -> None:
    text = snippet()
    checked = 0
    for ip in addresses():
        forms = {nginx_text(ip)}
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
            forms |= set(spellings(ip))
        for form in forms:
            assert evaluate(text, form, ip.packed) == expected_key(ip), (form, str(ip))
            checked += 1
    assert checked > 5000


def test_a_64_shares_one_key_and_its_neighbours_do_not() -> None:
    text = snippet()

    def key(address: str) -> bytes:
        ip = ipaddress.ip_address(address)
        return evaluate(text, nginx_text(ip), ip.packed)

    assert key("2001:db8:1:2::1") == key("2001:db8:1:2:ffff:ffff:ffff:ffff") == key("2001:db8:1:2:a::b")
    assert key("2001:db8:1:2::1") != key("2001:db8:1:3::1")
    assert key("2001:db8::1") == key("2001:db8::2") != key("2001:db8:0:1::1")
    assert key("192.0.2.1") != key("192.0.2.2")


@pytest.fixture(scope="module")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    prefix = tmp_path_factory.mktemp("nginx")
    port = free_port()
    (prefix / "nginx.conf").write_text(f"""
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
{snippet()}
    set_real_ip_from 127.0.0.1;
    real_ip_header X-Real-IP;
    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 100000;
        location / {{
            default_type application/octet-stream;
            return 200 "$remote_addr\\n$paydrop_client_key";
        }}
    }}
}}
""")
    proc = subprocess.Popen(["nginx", "-e", str(prefix / "error.log"), "-p", str(prefix),
                             "-c", str(prefix / "nginx.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for_port(port, proc=proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_nginx_runs_the_map_to_the_same_keys(nginx: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", nginx, timeout=10)
    checked = 0
    for ip in addresses(seed=6):
        # However the client's address was written, nginx parses it and then
        # writes it its own way before the map sees it.
        for form in {str(ip), ip.exploded, ip.exploded.upper()}:
            connection.request("GET", "/", headers={"X-Real-IP": form})
            response = connection.getresponse()
            body = response.read()
            assert response.status == 200
            remote_addr, _, key = body.partition(b"\n")
            assert remote_addr.decode() == nginx_text(ip), form
            assert key == expected_key(ip), (form, remote_addr)
            checked += 1
    connection.close()
    assert checked > 2500
