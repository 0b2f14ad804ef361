"""tracer.netscope: where a destination lies."""

from __future__ import annotations

import ipaddress

import pytest

from tracer import netscope
from tracer.netscope import ScopeClassifier, ScopeConfig

NO_HOST: list[str] = []


@pytest.mark.parametrize(
    "addr, scope",
    [
        ("127.0.0.1", "loopback"), ("127.255.255.254", "loopback"), ("::1", "loopback"),
        ("169.254.1.1", "link_local"), ("169.254.255.255", "link_local"), ("fe80::1", "link_local"),
        ("febf::1", "link_local"),
        ("169.254.169.254", "metadata"), ("fd00:ec2::254", "metadata"), ("100.100.100.200", "metadata"),
        ("169.254.170.2", "metadata"),
        ("10.0.0.1", "private"), ("10.255.255.255", "private"), ("172.16.0.1", "private"),
        ("172.31.255.255", "private"), ("192.168.0.1", "private"), ("fc00::1", "private"), ("fd99::2", "private"),
        ("100.64.0.1", "shared"), ("100.127.255.255", "shared"),
        ("224.0.0.251", "multicast"), ("239.255.255.250", "multicast"), ("ff02::fb", "multicast"),
        ("255.255.255.255", "multicast"),
        ("0.0.0.0", "host"), ("::", "host"),
        ("198.18.0.1", "external"), ("198.19.255.255", "external"), ("8.8.8.8", "external"),
        ("172.32.0.1", "external"), ("100.128.0.1", "external"), ("192.0.2.1", "external"),
        ("2001:db8::1", "external"), ("2606:4700::1111", "external"), ("fec0::1", "external"),
    ],
)
def test_every_range(addr, scope):
    assert ScopeClassifier(host_addresses=NO_HOST).scope(addr) == scope


def test_not_pythons_is_private():
    """ipaddress calls the benchmarking range private; here it stands for the internet."""
    assert ipaddress.ip_address("198.18.0.1").is_private
    assert ScopeClassifier(host_addresses=NO_HOST).scope("198.18.0.1") == "external"


@pytest.mark.parametrize(
    "addr, scope",
    [("::ffff:127.0.0.1", "loopback"), ("::ffff:10.1.2.3", "private"), ("::ffff:198.18.0.1", "external"),
     ("::ffff:169.254.169.254", "metadata"), ("::ffff:0.0.0.0", "host")],
)
def test_v4_mapped_classifies_as_ipv4(addr, scope):
    assert ScopeClassifier(host_addresses=NO_HOST).scope(addr) == scope


def test_host_addresses():
    c = ScopeClassifier(host_addresses=["203.0.113.5", "10.0.0.7", "2001:db8::5", "fe80::1%eth0", "junk"])
    assert c.scope("203.0.113.5") == "host"
    assert c.scope("10.0.0.7") == "host", "an own address beats its range"
    assert c.scope("10.0.0.8") == "private"
    assert c.scope("2001:db8::5") == "host"
    assert c.scope("::ffff:203.0.113.5") == "host"
    assert c.scope("fe80::1") == "host"
    assert c.scope("203.0.113.6") == "external"


def test_internal_networks_are_private_but_not_above_special_ranges():
    c = ScopeClassifier(ScopeConfig(internal=("198.18.0.0/15", "2001:db8:1::/48", "0.0.0.0/0")), host_addresses=NO_HOST)
    assert c.scope("198.18.0.1") == "private"
    assert c.scope("2001:db8:1::9") == "private"
    assert c.scope("8.8.8.8") == "private"
    assert c.scope("127.0.0.1") == "loopback"
    assert c.scope("169.254.169.254") == "metadata"
    assert c.scope("2001:db8:2::9") == "external"


def test_allowlist():
    c = ScopeClassifier(ScopeConfig(allowlist=("203.0.113.0/24", "2001:db8::1")), host_addresses=NO_HOST)
    assert c.classify("203.0.113.9") == ("external", True)
    assert c.classify("::ffff:203.0.113.9") == ("external", True)
    assert c.classify("203.0.114.1") == ("external", False)
    assert c.classify("2001:db8::1") == ("external", True)
    assert c.classify("2001:db8::2") == ("external", False)


@pytest.mark.parametrize("field", ["internal", "allowlist"])
def test_bad_config_names_the_entry(field):
    with pytest.raises(ValueError, match="'10.0.0.0/33'"):
        ScopeConfig(**{field: ("10.0.0.0/8", "10.0.0.0/33")})


def test_text_that_is_no_address_is_external():
    assert ScopeClassifier(host_addresses=NO_HOST).classify("not an address") == ("external", False)


def test_annotate():
    net = {"daddr": "127.0.0.1", "dport": 22}
    ScopeClassifier(host_addresses=NO_HOST).annotate(net)
    assert net == {"daddr": "127.0.0.1", "dport": 22, "scope": "loopback", "allowlisted": False}


def test_host_addresses_read_lazily_and_refreshed(monkeypatch):
    reads = []

    def reader():
        reads.append(1)
        return ["203.0.113.5"] if len(reads) == 1 else ["203.0.113.6"]

    c = ScopeClassifier(reader=reader)
    assert reads == []
    assert c.scope("203.0.113.5") == "host"
    assert c.scope("203.0.113.5") == "host"
    assert len(reads) == 1, "read once, then cached"
    c.refresh()
    assert c.scope("203.0.113.5") == "external" and c.scope("203.0.113.6") == "host"
    monkeypatch.setattr(netscope, "HOST_REFRESH_SECONDS", 0.0)
    c.scope("8.8.8.8")
    assert len(reads) == 3, "re-read when stale"


def test_given_host_addresses_are_never_re_read():
    c = ScopeClassifier(host_addresses=["203.0.113.5"], reader=lambda: pytest.fail("read"))
    c.refresh()
    assert c.scope("203.0.113.5") == "host"


def test_live_host_addresses_include_loopback():
    """Netlink in this namespace: no root needed."""
    addrs = netscope.read_host_addresses()
    assert "127.0.0.1" in addrs
    assert ipaddress.ip_address("127.0.0.1") in ScopeClassifier().host_addresses


def test_netlink_failure_means_no_host_addresses(monkeypatch):
    import pyroute2

    def broken(*_a, **_k):
        raise OSError("no netlink here")

    monkeypatch.setattr(pyroute2, "IPRoute", broken)
    assert netscope.read_host_addresses() == []
