"""Unit tests of the pure DNS64 rules (dnsd.dns64): RFC 6052 vectors, exclusion, 6052 3.1, TTL, PTR."""

from __future__ import annotations

import ipaddress

import pytest

from dnsd import dns64

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address
NET = ipaddress.IPv6Network

# RFC 6052 section 2.4, table: 192.0.2.33 embedded in each prefix length.
RFC6052_VECTORS = [
    ("2001:db8::/32", "2001:db8:c000:221::"),
    ("2001:db8:100::/40", "2001:db8:1c0:2:21::"),
    ("2001:db8:122::/48", "2001:db8:122:c000:2:2100::"),
    ("2001:db8:122:300::/56", "2001:db8:122:3c0:0:221::"),
    ("2001:db8:122:344::/64", "2001:db8:122:344:c0:2:2100:0"),
    ("2001:db8:122:344::/96", "2001:db8:122:344::192.0.2.33"),
    ("64:ff9b::/96", "64:ff9b::192.0.2.33"),
]


@pytest.mark.parametrize(("prefix", "expected"), RFC6052_VECTORS)
def test_embed_rfc6052_vectors(prefix: str, expected: str) -> None:
    assert dns64.embed(NET(prefix), V4("192.0.2.33")) == V6(expected)


@pytest.mark.parametrize(("prefix", "expected"), RFC6052_VECTORS)
def test_extract_inverts_embed(prefix: str, expected: str) -> None:
    assert dns64.extract(NET(prefix), V6(expected)) == V4("192.0.2.33")


@pytest.mark.parametrize("plen", [32, 40, 48, 56, 64])
def test_u_octet_stays_zero(plen: int) -> None:
    prefix = NET(f"2001:db8::/{plen}")
    address = dns64.embed(prefix, V4("255.255.255.255"))
    assert address.packed[8] == 0  # RFC 6052 2.2: bits 64..71
    assert dns64.extract(prefix, address) == V4("255.255.255.255")


def test_bad_prefix_length_rejected() -> None:
    with pytest.raises(ValueError, match="RFC 6052"):
        dns64.embed(NET("2001:db8::/80"), V4("1.2.3.4"))
    with pytest.raises(ValueError, match="RFC 6052"):
        dns64.Policy(NET("2001:db8::/80"))


def test_mapped_always_excluded_and_configured_exclusions() -> None:
    policy = dns64.Policy(exclude=(NET("2001:db8:bad::/48"),))
    assert dns64.is_excluded(V6("::ffff:1.2.3.4").packed, dns64.Policy())
    assert dns64.is_excluded(V6("2001:db8:bad::1").packed, policy)
    assert not dns64.is_excluded(V6("2001:db8:bad::1").packed, dns64.Policy())
    assert not dns64.is_excluded(V6("2001:db8::1").packed, policy)


@pytest.mark.parametrize(
    "address", ["10.1.2.3", "127.0.0.1", "169.254.1.1", "192.168.1.1", "172.16.0.1", "100.64.0.1",
                "192.0.2.1", "0.0.0.0", "255.255.255.255"])
def test_wkp_never_used_for_nonglobal(address: str) -> None:
    assert not dns64.may_synthesize(V4(address), dns64.Policy())
    assert dns64.synthesize([V4(address).packed], dns64.Policy()) == []


def test_nonglobal_allowed_by_switch_or_network_specific_prefix() -> None:
    private = V4("10.1.2.3")
    assert dns64.may_synthesize(private, dns64.Policy(allow_nonglobal=True))
    assert dns64.may_synthesize(private, dns64.Policy(NET("2001:db8:64::/96")))


def test_synthesize_keeps_order_and_skips_nonglobal() -> None:
    rdatas = [V4("1.2.3.4").packed, V4("10.0.0.1").packed, V4("8.8.8.8").packed]
    assert dns64.synthesize(rdatas, dns64.Policy()) == [
        V6("64:ff9b::1.2.3.4").packed, V6("64:ff9b::8.8.8.8").packed]


@pytest.mark.parametrize(
    ("a_ttl", "soa", "expected"),
    [(300, (3600, 60), 60), (30, (3600, 900), 30), (300, (20, 900), 20), (3600, None, 600),
     (100, None, 100)],
)
def test_synthesized_ttl(a_ttl: int, soa: tuple[int, int] | None, expected: int) -> None:
    assert dns64.synthesized_ttl(a_ttl, soa) == expected


def test_no_synthesis_with_do_and_cd() -> None:
    assert dns64.wants_synthesis(28, do=False, cd=False)
    assert dns64.wants_synthesis(28, do=True, cd=False)
    assert dns64.wants_synthesis(28, do=False, cd=True)
    assert not dns64.wants_synthesis(28, do=True, cd=True)
    assert not dns64.wants_synthesis(1, do=False, cd=False)


def _ip6_arpa(address: str) -> str:
    return V6(address).reverse_pointer


@pytest.mark.parametrize(("prefix", "_"), RFC6052_VECTORS)
def test_ptr_target_every_prefix_length(prefix: str, _: str) -> None:
    # the RFC 6052 vectors embed 192.0.2.33, which is not global: allowed here to use them as they are
    policy = dns64.Policy(NET(prefix), allow_nonglobal=True)
    name = _ip6_arpa(str(dns64.embed(policy.prefix, V4("192.0.2.33"))))
    assert dns64.ptr_target(name, policy) == "33.2.0.192.in-addr.arpa"


def test_ptr_target_is_not_aliased_for_non_global_ipv4_under_the_wkp() -> None:
    """RFC 6052 3.1 / RFC 6303: the WKP never carries private IPv4, so their reverse names are not
    aliased (and sent upstream as in-addr.arpa lookups); a network-specific prefix may carry them."""
    wkp = dns64.Policy()
    for private in ("10.1.2.3", "192.168.1.1", "127.0.0.1", "192.0.2.33"):
        assert dns64.ptr_target(_ip6_arpa(str(dns64.embed(wkp.prefix, V4(private)))), wkp) is None
    assert dns64.ptr_target(_ip6_arpa("64:ff9b::102:304"), wkp) == "4.3.2.1.in-addr.arpa"
    site = dns64.Policy(NET("2001:db8:64::/96"))
    assert dns64.ptr_target(_ip6_arpa(str(dns64.embed(site.prefix, V4("10.1.2.3")))), site) == \
        "3.2.1.10.in-addr.arpa"


def test_ptr_target_outside_prefix_or_partial() -> None:
    policy = dns64.Policy()
    assert dns64.ptr_target(_ip6_arpa("2001:db8::1"), policy) is None
    assert dns64.ptr_target("b.9.f.f.4.6.0.0.ip6.arpa", policy) is None
    assert dns64.ptr_target("example.com", policy) is None
    u_set = dns64.Policy(NET("2001:db8::/32"))
    address = bytearray(dns64.embed(u_set.prefix, V4("1.2.3.4")).packed)
    address[8] = 1
    assert dns64.ptr_target(V6(bytes(address)).reverse_pointer, u_set) is None


def test_prefix_reverse_zone() -> None:
    assert dns64.prefix_reverse_zone(NET("64:ff9b::/96")) == \
        "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.b.9.f.f.4.6.0.0.ip6.arpa"


def test_ipv4only_arpa() -> None:
    policy = dns64.Policy(NET("2001:db8:64::/96"))
    assert dns64.ipv4only_answer("ipv4only.arpa", 1, policy) == (
        0, [V4("192.0.0.170").packed, V4("192.0.0.171").packed])
    assert dns64.ipv4only_answer("ipv4only.arpa", 28, policy) == (
        0, [V6("2001:db8:64::c000:aa").packed, V6("2001:db8:64::c000:ab").packed])
    # 192.0.0.170 is not global, yet RFC 8880 wants it synthesized even with the WKP
    wkp = dns64.ipv4only_answer("ipv4only.arpa", 28, dns64.Policy())
    assert wkp is not None and wkp[1][0] == V6("64:ff9b::192.0.0.170").packed
    assert dns64.ipv4only_answer("ipv4only.arpa", 16, policy) == (0, [])
    assert dns64.ipv4only_answer("x.ipv4only.arpa", 1, policy) == (3, [])
    assert dns64.ipv4only_answer("example.arpa", 1, policy) is None


def test_under() -> None:
    assert dns64.under("a.c2.k8s.ooo", "c2.k8s.ooo")
    assert dns64.under("c2.k8s.ooo", "c2.k8s.ooo")
    assert not dns64.under("xc2.k8s.ooo", "c2.k8s.ooo")
