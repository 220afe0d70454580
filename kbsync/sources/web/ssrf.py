"""The SSRF guard: only globally routable unicast addresses are fetched (unless `allow_private_hosts`), and the
socket connects to the very address that was checked (`PinnedTransport`), so a DNS answer that changes between
the check and the connect (DNS rebinding) cannot point a request at an internal host."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterable
from urllib.parse import urlsplit

import httpcore
import httpx

from kbsync.errors import SourceUnavailable
from kbsync.sources.web.deadline import DeadlineStream, bounded
from kbsync.sources.web.scope import Refused
from kbsync.sources.web.urls import DEFAULT_PORTS

__all__ = ["AddressGuard", "PinnedTransport", "describe", "is_public"]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def is_public(address: Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def describe(address: Address) -> str:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for name in ("loopback", "link_local", "private", "multicast", "unspecified", "reserved"):
        if getattr(address, f"is_{name}"):
            return name.replace("_", "-")
    return "non-public"


class AddressGuard:
    """One crawl's DNS answers (each host resolved once) and the checks on them."""

    def __init__(self, *, allow_private: bool, source_id: str) -> None:
        self.allow_private = allow_private
        self.source_id = source_id
        self._lock = threading.Lock()
        self._dns: dict[tuple[str, int], list[Address]] = {}

    def check(self, url: str) -> None:
        """Refuse a host that resolves to a non-public address (unless private hosts are allowed)."""
        if self.allow_private:
            return
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or DEFAULT_PORTS.get(parts.scheme, 80)
        for address in self.resolve(host, port, url):
            if not is_public(address):
                raise Refused(
                    f"refused: {host} resolves to {address}, a {describe(address)} address "
                    "(set allow_private_hosts = true only for intranet docs)",
                    source=self.source_id,
                    url=url,
                )

    def resolve(self, host: str, port: int, url: str) -> list[Address]:
        with self._lock:
            known = self._dns.get((host, port))
        if known is not None:
            return known
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise SourceUnavailable(f"cannot resolve {host}: {exc}", source=self.source_id, url=url) from exc
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        with self._lock:
            self._dns[(host, port)] = addresses
        return addresses

    def pinned(self, host: str, port: int) -> str:
        """The address to connect to for `host:port`: the first one `check` saw (resolved now only when no check
        ran, and then checked too)."""
        addresses = self.resolve(host, port, f"{host}:{port}")
        if not addresses:
            raise SourceUnavailable(f"cannot resolve {host}: no address", source=self.source_id, url=host)
        if not self.allow_private:
            for address in addresses:
                if not is_public(address):
                    raise Refused(
                        f"refused: {host} resolves to {address}, a {describe(address)} address",
                        source=self.source_id,
                        url=host,
                    )
        return str(addresses[0])

    def check_peer(self, response: httpx.Response, url: str) -> None:
        """The address the socket really connected to: a second line behind pinning (and the only one for a
        client passed in from outside)."""
        if self.allow_private:
            return
        stream = response.extensions.get("network_stream")
        peer = stream.get_extra_info("server_addr") if stream is not None else None
        if not peer:
            return
        address = ipaddress.ip_address(str(peer[0]).split("%")[0])
        if not is_public(address):
            raise Refused(
                f"refused: connected to {address}, a {describe(address)} address", source=self.source_id, url=url
            )


class _PinnedBackend(httpcore.SyncBackend):
    """Opens TCP connections to the guard's address for the host; TLS still verifies and sends SNI for the host
    name (httpcore takes both from the request's origin, not from the socket), and the Host header is unchanged.
    Every socket operation is bounded by the current request's total deadline (kbsync.sources.web.deadline)."""

    def __init__(self, guard: AddressGuard) -> None:
        self._guard = guard

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        address = self._guard.pinned(host, port)
        stream = super().connect_tcp(address, port, bounded(timeout), local_address, socket_options)
        return DeadlineStream(stream)


class PinnedTransport(httpx.HTTPTransport):
    """An httpx transport whose connections go to the addresses `guard` resolved and checked."""

    def __init__(self, guard: AddressGuard, *, limits: httpx.Limits) -> None:
        super().__init__(limits=limits, trust_env=False)
        # httpx builds its httpcore pool without a way to pass a network backend: build the same pool with one.
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_PinnedBackend(guard),
        )
