"""Which hosts a spec may point the runtime at. Pure.

A tenant writes every URL of its spec, and the runtime's pods dial them from inside the cluster:
a URL naming the node's link-local range or a cloud metadata service would hand the tenant the
node's (or the cloud account's) credentials. `host_problem` refuses those, whatever the spelling:
IPv4 in dotted, decimal, octal or hexadecimal form, IPv6 (IPv4-mapped included), the metadata
services' host names. Loopback stays allowed: it is the pod itself.
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.parse
from typing import Final

__all__ = ["METADATA_HOSTS", "host_problem", "ip_of"]

# Host names of cloud metadata services (GCP, AWS, Azure, OpenStack, Alibaba, Oracle).
METADATA_HOSTS: Final = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.azure.internal",
        "metadata.tencentyun.com",
    }
)
# Not link-local, yet metadata services: AWS's IPv6 endpoint, Alibaba's and Oracle's addresses.
_METADATA_IPS: Final = frozenset(ipaddress.ip_address(a) for a in ("fd00:ec2::254", "100.100.100.200", "192.0.0.192"))


def ip_of(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host literal denotes (any spelling `inet_aton` accepts), or None for a name."""
    text = host.strip("[]")
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        pass
    try:  # 2852039166, 0xa9fea9fe, 0251.0376.0251.0376, 169.254.43518: what a resolver dials
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        return None


def host_problem(url: str) -> str | None:
    """Why the runtime must not dial `url`'s host (link-local or a metadata service), or None."""
    try:
        host = urllib.parse.urlsplit(url).hostname
    except ValueError as exc:
        return f"is not a URL ({exc})"
    if not host:
        return "has no host"
    name = host.rstrip(".").lower()
    if name in METADATA_HOSTS:
        return f"names a cloud metadata service ({name}); refused"
    address = ip_of(name)
    if address is None:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_link_local or address in _METADATA_IPS:
        return f"is a link-local or metadata address ({address}); refused"
    if address.is_unspecified or address.is_multicast:
        return f"is not a host address ({address})"
    return None
