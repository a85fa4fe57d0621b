"""Who asked, and at which address: the peer, the proxy's forwarded headers when the peer is trusted, and
the public origin every absolute URL the app writes starts with.

A client can put anything in `Host`, `X-Forwarded-For`, `-Proto` or `-Host`. So the app believes the
forwarded headers only from a peer listed in `forwarded_allow_ips` (a reverse proxy that sets them), and
never writes the `Host` header into a page: a share link or an export built from it would point a room at
whatever site a request named. The origin is, in order: SPTELAB_PUBLIC_URL; a trusted proxy's
X-Forwarded-Host with its X-Forwarded-Proto; else none, and the app writes the path alone (the share box
is made whole by the browser from its own address bar, app/static/keys.js).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.types import Receive, Scope, Send

AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Where the forwarded origin is kept in the request's scope, once the peer was found trusted.
ORIGIN_KEY = "sptelab.forwarded_origin"

# A host name or an IP address, with an optional port: what X-Forwarded-Host may hold.
_HOST = re.compile(r"([A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.?|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?")
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Trusted:
    """The peers whose forwarded headers are believed: `*`, or comma-separated addresses, networks
    (10.0.0.0/8) and literal names (a Unix socket's peer has none)."""

    def __init__(self, spec: str) -> None:
        items = [item.strip() for item in spec.split(",") if item.strip()]
        self.everyone = "*" in items
        self.networks: list[_Network] = []
        self.names: set[str] = set()
        for item in items:
            try:
                self.networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                self.names.add(item)

    def __contains__(self, host: str | None) -> bool:
        if self.everyone:
            return True
        if not host:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return host in self.names
        return any(address in network for network in self.networks)


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> list[str]:
    return [value.decode("latin-1").strip() for key, value in headers if key.lower() == name]


class ForwardedMiddleware:
    """From a trusted peer only: the client address from X-Forwarded-For (the last address not itself a
    trusted proxy), the scheme from X-Forwarded-Proto, and the origin from X-Forwarded-Host. From any
    other peer the headers are ignored, and the client is the socket's peer."""

    def __init__(self, app: AsgiApp, *, trusted: str, enabled: bool = True) -> None:
        self.app = app
        self.trusted = Trusted(trusted)
        self.enabled = enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.enabled:
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        if client is None or client[0] not in self.trusted:
            await self.app(scope, receive, send)
            return
        scope = dict(scope)
        headers = list(scope.get("headers") or [])
        chain = [h.strip() for value in _header(headers, b"x-forwarded-for") for h in value.split(",")]
        chain = [h for h in chain if h]
        if chain:
            untrusted = [h for h in chain if h not in self.trusted]
            scope["client"] = (untrusted[-1] if untrusted else chain[0], 0)
        protos = _header(headers, b"x-forwarded-proto")
        proto = protos[0].split(",")[0].strip().lower() if protos else ""
        if proto in ("http", "https"):
            scope["scheme"] = proto
        hosts = _header(headers, b"x-forwarded-host")
        host = hosts[0].split(",")[0].strip().lower() if hosts else ""
        if host and _HOST.fullmatch(host) and len(host) <= 255:
            scope[ORIGIN_KEY] = f"{scope.get('scheme', 'http')}://{host}"
        await self.app(scope, receive, send)


def public_origin(scope: Mapping[str, Any]) -> str:
    """`scheme://host[:port]` to write in front of an app path, or '' when none is known: the setting,
    else a trusted proxy's forwarded host. Never the request's own Host header."""
    app = scope.get("app")
    settings = getattr(getattr(app, "state", None), "settings", None)
    configured = str(getattr(settings, "public_url", "") or "")
    if configured:
        return configured
    return str(scope.get(ORIGIN_KEY, ""))
