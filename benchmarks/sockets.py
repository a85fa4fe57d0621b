"""What one hostile laptop can do to the server's sockets, measured for each candidate HTTP server.

A server that faces a room directly (`docker run -p 8000:8000`) meets clients that send headers without
end, send them a byte at a time, or announce a body and never send it. This script starts the app under
each candidate on loopback, one worker, and measures, with raw sockets:

  big headers    10 connections each sending a request whose header grows to 32 MiB, never finished: the
                 server's memory at its peak (summed over its processes), how much it read of each before
                 it refused or closed, and its answer
  idle           a connection that sends nothing: seconds until the server closes it
  slow headers   a request line, then one 8-byte header line a second, never finished: seconds until the
                 server answers or closes
  slow body      a POST announcing 1000 bytes of body that sends 10 and stalls: seconds until it answers
                 (and with what) or closes
  many headers   a request with 2 000 short headers (about 20 KB): the answer
  500 slow heads 500 connections each holding an unfinished head: their memory, a normal request's
                 answer meanwhile, and how many the server still holds 15 s later
  throughput     4 clients on keep-alive connections asking for /healthz, then for a cached player page,
                 for a few seconds each: requests per second

Every wait is capped (`--cap`, default 40 s); "held" means the server still held the connection then.
Only loopback is used, every loop is bounded in count and time, and each server is stopped at the end.
It is a benchmark, not a test: it always exits 0.

    python3 benchmarks/sockets.py                          # every candidate that is installed
    python3 benchmarks/sockets.py --servers served         # the project's own configuration only
    python3 benchmarks/sockets.py --servers uvicorn-h11,granian --cap 20
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from web_latency import stop_process  # noqa: E402

PY = sys.executable
APP = "app.main:app"

# The candidates: how to start each on a port, and the module it needs.
Command = Callable[[int], list[str]]
CANDIDATES: dict[str, tuple[str, Command]] = {
    # uvicorn as `sptelab serve` ran it before these limits: httptools, no header limit or timeout.
    "uvicorn-httptools": (
        "uvicorn",
        lambda port: [
            *(PY, "-m", "uvicorn", APP, "--http", "httptools"),
            *("--port", str(port), "--no-access-log"),
        ],
    ),
    # uvicorn with h11: h11 refuses a head over 16 KiB; uvicorn's keep-alive timeout only runs between
    # requests.
    "uvicorn-h11": (
        "uvicorn",
        lambda port: [
            *(PY, "-m", "uvicorn", APP, "--http", "h11", "--h11-max-incomplete-event-size", "16384"),
            *("--timeout-keep-alive", "5", "--port", str(port), "--no-access-log"),
        ],
    ),
    # hypercorn: h11 too, plus a timeout on each socket read.
    "hypercorn": (
        "hypercorn",
        lambda port: [
            *(PY, "-m", "hypercorn", APP, "--bind", f"127.0.0.1:{port}"),
            *("--read-timeout", "10", "--keep-alive", "5"),
        ],
    ),
    # granian: hyper's HTTP/1 in Rust, with a deadline on the whole head and a bounded read buffer.
    "granian": (
        "granian",
        lambda port: [
            *(PY, "-m", "granian", "--interface", "asgi", "--http", "1", "--no-ws", "--port", str(port)),
            *("--http1-header-read-timeout", "10000", "--http1-buffer-size", "65536", APP),
        ],
    ),
    # The project's served configuration, as `python -m app` (and so `sptelab serve` and the Docker
    # image) starts it.
    "served": ("granian", lambda port: [PY, "-m", "app"]),
}

BIG_CONNECTIONS = 10
BIG_BYTES = 32 << 20
CHUNK = 64 << 10


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tree_rss_kb(root: int) -> int:
    """VmRSS of a process and all its descendants, in KiB."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    total = 0
    todo = [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/status", encoding="ascii") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]

    def rss_kb(self) -> int:
        return tree_rss_kb(self.process.pid)

    def stop(self) -> None:
        stop_process(self.process)


def start(name: str, log: Path) -> Server:
    _, command = CANDIDATES[name]
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "SPTELAB_HOST": "127.0.0.1", "SPTELAB_PORT": str(port)}
    with log.open("wb") as out:
        process = subprocess.Popen(
            command(port), cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
                if sock.recv(64).startswith(b"HTTP/1.1 200"):
                    return Server(name, port, process)
        except OSError:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{name} did not start:\n{log.read_text(errors='replace')[-1500:]}")


def status_of(answer: bytes) -> str:
    match = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
    return match.group(1).decode() if match else ("closed" if not answer else "garbage")


def read_answer(sock: socket.socket, until: float) -> tuple[bytes, float | None]:
    """What the server sends until it closes or `until` passes; and when it closed (None: still open)."""
    answer = b""
    while True:
        left = until - time.monotonic()
        if left <= 0:
            return answer, None
        sock.settimeout(left)
        try:
            more = sock.recv(65536)
        except TimeoutError:
            return answer, None
        except OSError:
            return answer, time.monotonic()
        if not more:
            return answer, time.monotonic()
        answer += more
        if b"\r\n\r\n" in answer and len(answer) > 12:
            # An answer: the server may keep the connection; the answer is what counts.
            return answer, time.monotonic()


def big_headers(server: Server, cap: float) -> str:
    results: list[tuple[int, str]] = []
    peak = [server.rss_kb()]
    before = peak[0]
    done = threading.Event()

    def one() -> None:
        sent = 0
        answer = b""
        deadline = time.monotonic() + cap
        try:
            with socket.create_connection(("127.0.0.1", server.port), timeout=cap) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: b\r\nX-Big: ")
                block = b"a" * CHUNK
                while sent < BIG_BYTES and time.monotonic() < deadline:
                    try:
                        sock.sendall(block)
                    except OSError:
                        break
                    sent += len(block)
                answer, _ = read_answer(sock, min(deadline, time.monotonic() + 2))
        except OSError:
            pass
        results.append((sent, status_of(answer)))

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], server.rss_kb())
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    threads = [threading.Thread(target=one) for _ in range(BIG_CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    time.sleep(0.5)
    done.set()
    sampler.join()
    sent = max(s for s, _ in results)
    answers = sorted({a for _, a in results})
    return (
        f"peak RSS +{(peak[0] - before) / 1024:.0f} MB; read at most {sent / (1 << 20):.2f} MiB of each;"
        f" answer {'/'.join(answers)}"
    )


def wait_closed(server: Server, first: bytes, trickle: bytes, cap: float, every: float = 1.0) -> str:
    """Send `first`, then `trickle` every `every` seconds (nothing if empty) until the server answers or
    closes, or `cap` passes."""
    start = time.monotonic()
    until = start + cap
    with socket.create_connection(("127.0.0.1", server.port), timeout=cap) as sock:
        if first:
            sock.sendall(first)
        while True:
            step_end = min(until, time.monotonic() + every)
            answer, closed = read_answer(sock, step_end)
            if answer or closed is not None:
                took = (closed or time.monotonic()) - start
                return f"{status_of(answer)} after {took:.1f} s"
            if time.monotonic() >= until:
                return f"held > {cap:.0f} s"
            if trickle:
                try:
                    sock.sendall(trickle)
                except OSError:
                    return f"closed after {time.monotonic() - start:.1f} s"


def many_slow(server: Server, count: int = 500) -> str:
    """`count` connections each holding an unfinished head: the memory they take, whether a normal
    request still gets through meanwhile, and how many the server still holds after 15 s."""
    before = server.rss_kb()
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: b\r\nX-Slow: ")
            socks.append(sock)
        time.sleep(1.0)
        held = server.rss_kb() - before
        start = time.monotonic()
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
            answer, _ = read_answer(sock, time.monotonic() + 10)
        took = (time.monotonic() - start) * 1000
        time.sleep(14.0)
        open_ = 0
        for sock in socks:
            sock.setblocking(False)
            try:
                sock.recv(1)
            except BlockingIOError:
                open_ += 1
            except OSError:
                pass
        return (
            f"+{held / 1024:.0f} MB for {count}; meanwhile /healthz {status_of(answer)} in {took:.0f} ms;"
            f" {open_} still held after 15 s"
        )
    finally:
        for sock in socks:
            sock.close()


def many_headers(server: Server) -> str:
    head = b"GET /healthz HTTP/1.1\r\nHost: b\r\nConnection: close\r\n"
    head += b"".join(b"h%d: v\r\n" % i for i in range(2000)) + b"\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        try:
            sock.sendall(head)
        except OSError:
            return "closed"
        answer, _ = read_answer(sock, time.monotonic() + 10)
    return status_of(answer)


def throughput(server: Server, path: str, seconds: float = 3.0, clients: int = 4) -> str:
    counts = [0] * clients
    errors = [0] * clients
    stop = time.monotonic() + seconds

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        while time.monotonic() < stop:
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
                if response.status == 200:
                    counts[k] += 1
                else:
                    errors[k] += 1
            except (OSError, http.client.HTTPException):
                errors[k] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.close()

    # Warm: the page is built once, then served from the page cache.
    warm = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    warm.request("GET", path)
    warm.getresponse().read()
    warm.close()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    failed = f", {sum(errors)} errors" if sum(errors) else ""
    return f"{sum(counts) / seconds:.0f} req/s{failed}"


def measure(name: str, cap: float, logs: Path) -> dict[str, str]:
    server = start(name, logs / f"sockets-{name}.log")
    try:
        row: dict[str, str] = {"idle RSS": f"{server.rss_kb() / 1024:.0f} MB"}
        row["big headers"] = big_headers(server, cap)
        # The three waits run at once, each on its own connection.
        waits: dict[str, str] = {}
        body_head = (
            b"POST /api/encode HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n" + b'{"scenario"'[:10]
        )
        jobs = {
            "idle": (b"", b""),
            "slow headers": (b"GET /healthz HTTP/1.1\r\nHost: b\r\n", b"X-a: b\r\n"),
            "slow body": (body_head, b""),
        }

        def wait(name: str, first: bytes, trickle: bytes) -> None:
            waits[name] = wait_closed(server, first, trickle, cap)

        threads = [threading.Thread(target=wait, args=(k, *v)) for k, v in jobs.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        row.update(waits)
        row["2000 headers"] = many_headers(server)
        row["500 slow heads"] = many_slow(server)
        row["healthz"] = throughput(server, "/healthz")
        row["player page"] = throughput(server, "/play?scenario=worked-example&variant=lazy&step=5")
        row["still up"] = "yes" if server.process.poll() is None else "no"
        return row
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--servers", default=",".join(CANDIDATES), help="comma-separated candidates")
    parser.add_argument("--cap", type=float, default=40.0, help="the longest wait, in seconds")
    args = parser.parse_args()
    logs = REPO / "test-artifacts"
    logs.mkdir(exist_ok=True)
    for name in args.servers.split(","):
        if name not in CANDIDATES:
            print(f"{name}: not a candidate (candidates: {', '.join(CANDIDATES)})")
            continue
        module = CANDIDATES[name][0]
        if importlib.util.find_spec(module) is None:
            print(f"{name}: skipped, {module} is not installed")
            continue
        print(f"{name}:", flush=True)
        try:
            row = measure(name, args.cap, logs)
        except (RuntimeError, OSError) as error:
            print(f"  failed: {error}")
            continue
        for key, value in row.items():
            print(f"  {key:<14} {value}", flush=True)


if __name__ == "__main__":
    main()
