"""The sockets of the served configuration against a hostile client, over loopback.

The server is the one `python -m app`, `sptelab serve` and the Docker image run (app/serving.py: granian,
one worker, the settings' limits), serving the real app plus three probe routes (tests/sockets_probe.py)
that show what a handler sees: the client address, and whether `request.is_disconnected()` turns true
when the client goes away mid-request. The timeouts are set small (1 s) so that every wait here is short;
every wait is bounded, and the server is stopped at the end.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("granian")

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
STARTUP_TIMEOUT_S = 30.0
# The limits of the test's servers, and how long a test waits at most for the server to act on them.
HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
HEADER_BYTES = 16_384
PATIENCE_S = 10.0
PREFIX = "/p"


@dataclass
class Served:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=PATIENCE_S)

    def ask(self, head: bytes, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
        """One request on a fresh connection (closed after the answer): status, headers, body."""
        with self.connect() as sock:
            sock.sendall(head + body)
            answer, _ = read_until_closed(sock, time.monotonic() + PATIENCE_S)
        return parse(answer)

    def get(self, target: str, *headers: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", "Connection: close", *headers, "", ""]
        return self.ask("\r\n".join(lines).encode("latin-1"))


def read_until_closed(sock: socket.socket, until: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes the connection or `until` passes; and whether it
    closed."""
    answer = b""
    while True:
        left = until - time.monotonic()
        if left <= 0:
            return answer, False
        sock.settimeout(left)
        try:
            more = sock.recv(65536)
        except TimeoutError:
            return answer, False
        except OSError:
            return answer, True
        if not more:
            return answer, True
        answer += more


def parse(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", head)
    assert match, answer[:200]
    headers: dict[str, str] = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = dechunk(body)
    return int(match.group(1)), headers, body


def dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2 :]
    return out


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _start(name: str, env: dict[str, str]) -> Iterator[Served]:
    ARTIFACTS.mkdir(exist_ok=True)
    log = ARTIFACTS / f"sockets-{name}.log"
    port = _free_port()
    code = (
        "from app.serving import serve; from app.settings import get_settings;"
        " serve(get_settings(), 'sockets_probe:probe_app')"
    )
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SPTELAB_")},
        "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}",
        "PYTHONUNBUFFERED": "1",
        "SPTELAB_HOST": "127.0.0.1",
        "SPTELAB_PORT": str(port),
        "SPTELAB_HEADER_TIMEOUT": str(HEADER_TIMEOUT_S),
        "SPTELAB_BODY_TIMEOUT": str(BODY_TIMEOUT_S),
        "SPTELAB_HEADER_BYTES": str(HEADER_BYTES),
        **env,
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-c", code], cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            env=environment,
        )  # fmt: skip
    served = Served(port, process, log)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            try:
                if served.get(f"{env.get('SPTELAB_ROOT_PATH', '')}/healthz")[0] == 200:
                    break
            except (OSError, AssertionError):
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the server did not start:\n{log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.1)
        yield served
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def server() -> Iterator[Served]:
    """The served app with small timeouts, trusting the proxy headers of loopback (the default)."""
    yield from _start("tight", {"SPTELAB_FORWARDED_ALLOW_IPS": "127.0.0.1"})


@pytest.fixture(scope="module")
def prefixed() -> Iterator[Served]:
    """The served app under a root path, behind a proxy that is not loopback (so loopback is not
    trusted)."""
    yield from _start("prefixed", {"SPTELAB_ROOT_PATH": PREFIX, "SPTELAB_FORWARDED_ALLOW_IPS": "10.9.9.9"})


def assert_refused(answer: bytes, closed: bool, statuses: tuple[int, ...]) -> None:
    """Refused: one of `statuses`, or the connection closed without an answer."""
    if answer:
        assert parse(answer)[0] in statuses, answer[:300]
    else:
        assert closed, "the server neither answered nor closed the connection"


# ---------------------------------------------------------------------------------------------------------
# Hostile heads and bodies


def test_an_oversized_header_is_refused(server: Served) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: ")
        sent = 0
        try:
            while sent < 4 * HEADER_BYTES:  # four times the limit, and never finished
                sock.sendall(b"a" * 4096)
                sent += 4096
        except OSError:
            pass  # the server refused and closed while we were still sending
        answer, closed = read_until_closed(sock, time.monotonic() + PATIENCE_S)
    assert_refused(answer, closed, (431, 400))
    assert server.get("/healthz")[0] == 200


def test_too_many_headers_are_refused(server: Served) -> None:
    # 150 short lines: far within the byte limit, over the count.
    lines = "".join(f"X-H{i}: v\r\n" for i in range(150))
    head = f"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{lines}\r\n".encode()
    assert len(head) < HEADER_BYTES
    with server.connect() as sock:
        sock.sendall(head)
        answer, closed = read_until_closed(sock, time.monotonic() + PATIENCE_S)
    assert_refused(answer, closed, (431,))
    # A browser's fifteen or so are fine.
    few = "".join(f"X-H{i}: v\r\n" for i in range(15))
    assert (
        server.ask(f"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{few}\r\n".encode())[0] == 200
    )


def test_a_slow_head_is_timed_out(server: Served) -> None:
    """A header line every 0.3 s, never finished: the head's deadline counts from its start, so the
    trickle does not keep the connection."""
    with server.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        until = time.monotonic() + PATIENCE_S
        closed = False
        answer = b""
        while time.monotonic() < until and not closed and not answer:
            try:
                sock.sendall(b"X-a: b\r\n")
            except OSError:
                closed = True
                break
            answer, closed = read_until_closed(sock, time.monotonic() + 0.3)
    assert_refused(answer, closed, (408, 400))


def test_a_slow_body_is_timed_out(server: Served) -> None:
    head = (
        b"POST /api/encode HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n"
    )
    with server.connect() as sock:
        sock.sendall(head + b'{"scenari')
        answer, closed = read_until_closed(sock, time.monotonic() + PATIENCE_S)
    assert_refused(answer, closed, (408,))
    if answer:
        _, headers, body = parse(answer)
        assert headers.get("connection") == "close"
        assert "did not arrive within 1 seconds" in json.loads(body)["detail"]


def test_an_idle_connection_is_closed(server: Served) -> None:
    with server.connect() as sock:
        answer, closed = read_until_closed(sock, time.monotonic() + PATIENCE_S)
    assert closed and answer == b""


def test_a_kept_alive_connection_that_goes_quiet_is_closed(server: Served) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        answer, closed = read_until_closed(sock, time.monotonic() + PATIENCE_S)
    assert closed and parse(answer)[0] == 200


# ---------------------------------------------------------------------------------------------------------
# What a handler sees


def test_a_handler_sees_the_client_go_away(server: Served) -> None:
    """A scheduler cancels a dropped request's work on `request.is_disconnected()`: it must turn true
    while the handler still runs, once the client closes its connection."""
    key = f"k{time.monotonic_ns()}"
    with server.connect() as sock:
        sock.sendall(f"GET /_probe/wait?id={key} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        deadline = time.monotonic() + PATIENCE_S
        while server.get(f"/_probe/ended?id={key}")[2] != b'{"ended":"running"}':
            assert time.monotonic() < deadline, "the handler never started"
            time.sleep(0.05)
    deadline = time.monotonic() + PATIENCE_S
    while True:
        ended = json.loads(server.get(f"/_probe/ended?id={key}")[2])["ended"]
        if ended != "running" or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert ended == "disconnected"


def test_the_client_is_the_peer_or_a_trusted_proxys_forwarded_one(server: Served, prefixed: Served) -> None:
    def host(served: Served, target: str, *headers: str) -> str:
        status, _, body = served.get(target, *headers)
        assert status == 200
        value: str = json.loads(body)["host"]
        return value

    assert host(server, "/_probe/client") == "127.0.0.1"
    # Loopback is trusted by `server`: its X-Forwarded-For names the client.
    assert host(server, "/_probe/client", "X-Forwarded-For: 203.0.113.9") == "203.0.113.9"
    # ... the last untrusted address of the chain: the client cannot choose it by prepending.
    assert host(server, "/_probe/client", "X-Forwarded-For: 6.6.6.6, 203.0.113.9") == "203.0.113.9"
    # `prefixed` trusts 10.9.9.9 only: a loopback client's header is ignored.
    assert host(prefixed, f"{PREFIX}/_probe/client", "X-Forwarded-For: 203.0.113.9") == "127.0.0.1"


# ---------------------------------------------------------------------------------------------------------
# The root path, HEAD and the Host header under the real server


def test_the_root_path_works_behind_a_proxy_that_strips_it(prefixed: Served) -> None:
    # The proxy strips /p before passing the request on; the app writes /p in front of every URL.
    status, _, body = prefixed.get("/play?scenario=worked-example&step=2")
    assert status == 200
    hrefs = re.findall(rb'href="([^"#][^"]*)"', body)
    assert hrefs and all(h.startswith(f"{PREFIX}/".encode()) for h in hrefs), hrefs[:5]
    assert prefixed.get("/static/keys.js")[0] == 200
    assert json.loads(prefixed.get("/api/decode?s=1.!!!")[2]).keys() == {"detail"}
    # A request that still carries the prefix is the same page.
    assert prefixed.get(f"{PREFIX}/play?scenario=worked-example&step=2")[2] == body


def test_head_is_get_without_the_body(server: Served) -> None:
    for target in ("/", "/healthz", "/static/keys.js", "/play?scenario=worked-example&step=3"):
        get_status, get_headers, get_body = server.get(target)
        head_status, head_headers, head_body = server.get(target, method="HEAD")
        assert (head_status, head_body) == (get_status, b""), target
        assert head_headers.get("content-type") == get_headers.get("content-type"), target
        if "content-length" in head_headers:
            assert int(head_headers["content-length"]) == len(get_body), target


def test_a_forged_host_never_reaches_a_page(server: Served, prefixed: Served) -> None:
    """No public URL is configured: the share box and the export's link are the path alone. Neither a
    forged Host nor, from a peer that is not a trusted proxy, a forged X-Forwarded-Host gets in."""
    targets = ("/play?scenario=worked-example&step=3", "/export.svg?scenario=worked-example&step=3")
    cases = (
        (server, ("Host: evil.example",)),
        (prefixed, ("Host: evil.example", "X-Forwarded-Host: evil.example")),
    )
    for served, forged in cases:
        for target in targets:
            head = "\r\n".join([f"GET {target} HTTP/1.1", *forged, "Connection: close", "", ""])
            status, _, body = served.ask(head.encode())
            assert status == 200 and b"evil.example" not in body, target
    # A trusted proxy names the public host.
    status, _, body = server.get(
        targets[0], "X-Forwarded-Host: sptelab.example.org", "X-Forwarded-Proto: https"
    )
    assert status == 200 and b'value="https://sptelab.example.org/play?scenario=worked-example' in body
