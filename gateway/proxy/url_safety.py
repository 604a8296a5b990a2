"""Backend URL safety enforced where it cannot be bypassed: at connect time.

Admin-entered base URLs are validated as http(s) when saved (``services.validation``)
and redirects are never followed (``forward``). That still leaves a URL whose host
name resolves - today or after a DNS change - to a private, loopback, link-local or
cloud-metadata address (``169.254.169.254``), which would turn the gateway into a way
to reach the operator's internal network with the gateway's own credentials.

With ``BLOCK_PRIVATE_UPSTREAMS`` on (the default in production mode) every new
upstream connection resolves the host itself, refuses any address that is not
globally routable, and connects to the very address it checked, so a DNS answer
that changes between the check and the connect (rebinding) gains nothing. The TLS
server name is still the configured host name, so certificate checks are unchanged.

Refusals raise :class:`BlockedUpstreamAddress`, a ``NewConnectionError``, so callers
see an ordinary connection failure; :func:`blocked_cause` finds it inside the
exception ``requests`` wraps it in.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Any

from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import NameResolutionError, NewConnectionError

log = logging.getLogger("gateway.url_safety")


class BlockedUpstreamAddress(NewConnectionError):
    """The upstream host resolved only to addresses the deny-list refuses."""

    def __init__(self, conn: Any, host: str, addresses: list[str]) -> None:
        self.host = host
        self.addresses = addresses
        super().__init__(conn, f"refused to connect to {host}: {', '.join(addresses)} is not a public address "
                               "(BLOCK_PRIVATE_UPSTREAMS is on)")


_NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the IPv4 address is the last 32 bits
_NAT64_LOCAL_USE = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215: a site's own translator, never global
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated ::a.b.c.d (RFC 4291 2.5.5.1)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for on the way out: IPv4-mapped, 6to4,
    Teredo, NAT64 (a translator forwards ``64:ff9b::7f00:1`` to 127.0.0.1) and
    IPv4-compatible; Python's ``is_global`` judges these by the IPv6 range alone."""
    wrapped = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
    if wrapped is None and (ip in _NAT64_WELL_KNOWN or (ip in _IPV4_COMPATIBLE and int(ip) > 1)):
        wrapped = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return wrapped


def is_blocked(address: str) -> bool:
    """True for anything not globally routable: private, loopback, link-local (and so
    the 169.254.169.254 metadata service), carrier-grade NAT, unique-local IPv6,
    multicast, reserved, unspecified - including IPv4 wrapped in IPv6 (mapped, 6to4,
    Teredo, NAT64, IPv4-compatible) and the local-use NAT64 prefix as a whole."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL_USE:
            return True  # the embedded address's position depends on the site's prefix length
        wrapped = _embedded_ipv4(ip)
        if wrapped is not None:
            return is_blocked(str(wrapped))
    return not ip.is_global or ip.is_multicast


def resolve_allowed(host: str, port: int) -> str:
    """The first resolved address of ``host`` that is allowed; raises ``socket.gaierror``
    when the name does not resolve and ``LookupError`` (with the refused addresses)
    when every address is blocked."""
    infos = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
    refused: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = str(sockaddr[0])
        if is_blocked(address):
            refused.append(address)
            continue
        return address
    raise LookupError(sorted(set(refused)))


class _GuardedMixin:
    """Resolve, check, then connect to the checked address only."""

    _dns_host: str
    port: int

    def _new_conn(self) -> Any:
        host = self._dns_host
        try:
            address = resolve_allowed(host, self.port)
        except socket.gaierror as exc:
            raise NameResolutionError(host, self, exc) from exc  # type: ignore[arg-type]
        except LookupError as exc:
            refused = list(exc.args[0])
            log.error("upstream connection refused: %s:%s resolves to %s, which BLOCK_PRIVATE_UPSTREAMS denies "
                      "(private, loopback, link-local or metadata range)", host, self.port, ", ".join(refused))
            raise BlockedUpstreamAddress(self, host, refused) from None
        self._dns_host = address
        try:
            return super()._new_conn()  # type: ignore[misc]
        finally:
            self._dns_host = host  # TLS server name and Host header keep the configured name


class GuardedHTTPConnection(_GuardedMixin, HTTPConnection):
    pass


class GuardedHTTPSConnection(_GuardedMixin, HTTPSConnection):
    pass


class GuardedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = GuardedHTTPConnection


class GuardedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = GuardedHTTPSConnection


class GuardedAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` whose connections refuse non-public peer addresses."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": GuardedHTTPConnectionPool,
                                                   "https": GuardedHTTPSConnectionPool}

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        # A forward proxy would connect on our behalf, beyond this check.
        raise NewConnectionError(None, "upstream proxies are not supported while BLOCK_PRIVATE_UPSTREAMS is on")  # type: ignore[arg-type]


def blocked_cause(exc: BaseException | None, depth: int = 0) -> BlockedUpstreamAddress | None:
    """The BlockedUpstreamAddress inside ``exc`` (requests wraps it twice), if any."""
    if exc is None or depth > 6:
        return None
    if isinstance(exc, BlockedUpstreamAddress):
        return exc
    nested: list[Any] = [getattr(exc, "reason", None), exc.__cause__, exc.__context__, *exc.args]
    for inner in nested:
        if isinstance(inner, BaseException):
            found = blocked_cause(inner, depth + 1)
            if found is not None:
                return found
    return None
