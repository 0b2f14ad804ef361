"""Where a destination address lies: loopback, this host, the local network, a cloud
metadata service, or the internet.

Rules ask "did the agent talk to the outside" and "did it come back to a
local service", so every network object carries a `scope`. The ranges are
spelled out here rather than taken from ipaddress.is_private, which also
counts documentation and benchmarking ranges (198.18.0.0/15, which the
tests use to stand for the internet) as private.

"host" means an address of one of this host's interfaces, read with
netlink in agentwatch's own network namespace (normally the root one). An
agent in another namespace (`ip netns exec`) has its own addresses, which
are not known here and classify by their range.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

SCOPES = ("loopback", "link_local", "metadata", "private", "shared", "multicast", "host", "external")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Instance metadata and credential endpoints: AWS/GCP/Azure/OCI, AWS IPv6,
# AWS ECS task and EKS pod identity agents, Alibaba Cloud.
METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",
        "fd00:ec2::254",
        "169.254.170.2",
        "169.254.170.23",
        "fd00:ec2::23",
        "100.100.100.200",
    )
)

# In the order they are tried, after metadata, loopback and this host's addresses.
_RANGES: list[tuple[str, list[str]]] = [
    ("link_local", ["169.254.0.0/16", "fe80::/10"]),
    # Limited broadcast never leaves the link either: one-to-many, as multicast.
    ("multicast", ["224.0.0.0/4", "ff00::/8", "255.255.255.255/32"]),
    ("private", ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"]),
    ("shared", ["100.64.0.0/10"]),
]
_LOOPBACK = [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]
_UNSPECIFIED = {ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address("::")}

# Host addresses are read again when older than this, so a new interface is seen.
HOST_REFRESH_SECONDS = 30.0
_CACHE_MAX = 4096


def parse_networks(values: Iterable[str], what: str) -> tuple[IPNetwork, ...]:
    """CIDRs or plain addresses; a bad one raises ValueError naming it."""
    out = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{what}: {value!r} is not an address or CIDR") from None
    return tuple(out)


@dataclass(frozen=True)
class ScopeConfig:
    """Site knowledge: networks that count as internal, and destinations that are expected."""

    internal: tuple[str, ...] = ()  # extra CIDRs classified "private" (a VPC, a corporate range)
    allowlist: tuple[str, ...] = ()  # CIDRs whose destinations carry `allowlisted: true`

    def __post_init__(self) -> None:
        parse_networks(self.internal, "internal network")
        parse_networks(self.allowlist, "allowlisted destination")


def read_host_addresses() -> list[str]:
    """Addresses of this network namespace's interfaces, by netlink; none if netlink fails."""
    try:
        from pyroute2 import IPRoute  # noqa: PLC0415  (netlink only when needed)

        with IPRoute() as ipr:
            out = []
            for msg in ipr.get_addr():
                # IFA_LOCAL is the local end of a point-to-point link, where IFA_ADDRESS is the peer.
                addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
                if addr:
                    out.append(addr)
            return out
    except Exception:  # noqa: BLE001  (no netlink in this sandbox: no host addresses, not a crash)
        return []


def _unmap(addr: IPAddress) -> IPAddress:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class ScopeClassifier:
    """Address text -> (scope, allowlisted), cached.

    host_addresses: the addresses that mean "this host"; None reads them
    from the kernel on first use and every HOST_REFRESH_SECONDS after.
    """

    def __init__(
        self,
        config: ScopeConfig | None = None,
        host_addresses: Iterable[str] | None = None,
        reader: Callable[[], list[str]] = read_host_addresses,
    ) -> None:
        self.config = config or ScopeConfig()
        internal = parse_networks(self.config.internal, "internal network")
        self._allowlist = parse_networks(self.config.allowlist, "allowlisted destination")
        self._ranges = [(scope, [ipaddress.ip_network(n) for n in nets]) for scope, nets in _RANGES]
        self._ranges.insert(0, ("private", list(internal)))
        self._reader = None if host_addresses is not None else reader
        self._host: frozenset[IPAddress] = frozenset()
        self._host_read_at = float("-inf")
        self._cache: dict[str, tuple[str, bool]] = {}
        if host_addresses is not None:
            self._set_host(host_addresses)

    def _set_host(self, addresses: Iterable[str]) -> None:
        host = set()
        for text in addresses:
            try:
                host.add(_unmap(ipaddress.ip_address(text.split("%", 1)[0])))
            except ValueError:
                continue
        self._host = frozenset(host)
        self._cache.clear()

    def refresh(self) -> None:
        """Read this host's addresses again (a no-op when they were given)."""
        if self._reader is not None:
            self._set_host(self._reader())
            self._host_read_at = time.monotonic()

    @property
    def host_addresses(self) -> frozenset[IPAddress]:
        self._maybe_refresh()
        return self._host

    def _maybe_refresh(self) -> None:
        if self._reader is not None and time.monotonic() - self._host_read_at >= HOST_REFRESH_SECONDS:
            self.refresh()

    def classify(self, text: str) -> tuple[str, bool]:
        """(scope, allowlisted) of an address; text that is no address is external."""
        self._maybe_refresh()
        hit = self._cache.get(text)
        if hit is not None:
            return hit
        try:
            addr = _unmap(ipaddress.ip_address(text))
        except ValueError:
            return "external", False
        result = (self._scope(addr), any(addr in net for net in self._allowlist))
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[text] = result
        return result

    def scope(self, text: str) -> str:
        return self.classify(text)[0]

    def _scope(self, addr: IPAddress) -> str:
        if addr in METADATA:
            return "metadata"
        if any(addr in net for net in _LOOPBACK):
            return "loopback"
        if addr in _UNSPECIFIED or addr in self._host:
            return "host"
        for scope, nets in self._ranges:
            if any(addr in net for net in nets):
                return scope
        return "external"

    def annotate(self, network: dict) -> dict:
        """Add `scope` and `allowlisted` for network["daddr"] to a record's network object."""
        network["scope"], network["allowlisted"] = self.classify(network["daddr"])
        return network
