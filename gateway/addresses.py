"""Client addresses: who is asking (``client_ip``) and whether an address is inside an
allow-list of networks (``address_allowed``) - one rule for every allow-list: a key's
and a user's ``ip_allowlist`` on the proxy, ``METRICS_ALLOW`` on ``/metrics``.

An IPv4 client reaching a dual-stack listener appears as an IPv4-mapped IPv6 address
(``::ffff:127.0.0.1``); it is matched as the IPv4 address it is, so ``127.0.0.0/8``
admits it, as an operator writing that list means. Malformed entries never match;
a malformed client address matches nothing.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from flask import request


def client_ip() -> str:
    """The client's address (ProxyFix has already applied TRUSTED_PROXY_COUNT); never empty,
    because an empty key makes Flask-Limiter silently skip the limit."""
    return request.remote_addr or "unknown"


def limit_identity(ip: str) -> str:
    """The identity per-address limits count under: an IPv4 address as itself, an IPv6
    address as its /64. One IPv6 subscriber (a host, a home, a cloud VM) is routinely
    given a whole /64, so counting single addresses would hand it 2**64 fresh limits.
    IPv4-mapped addresses count as the IPv4 address; anything unparsable as itself."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return ip or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def address_allowed(ip: str, networks: Iterable[str]) -> bool:
    """True when ``ip`` is inside one of ``networks`` (CIDR or single addresses)."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    for entry in networks:
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False
