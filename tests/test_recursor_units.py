"""Unit tests of the recursor's pure parts: cache, message parsing, root hints, NAT64 mapping."""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import dns.message
import pytest

from dnsd.recursor import hints, message
from dnsd.recursor.cache import MAX_NEGATIVE_TTL, MAX_TTL, Answer, Cache
from dnsd.recursor.chain import ResolveError, follow
from dnsd.recursor.message import RR, MessageError, to_wire
from dnsd.recursor.upstream import Nat64

WWW = to_wire("www.example")


def a_rr(owner: bytes, ttl: int, address: str) -> RR:
    return RR(owner, message.A, 1, ttl, ipaddress.IPv4Address(address).packed)


def soa_rr(ttl: int, minimum: int) -> RR:
    rdata = to_wire("ns.example") + to_wire("host.example") + struct.pack("!IIIII", 1, 2, 3, 4, minimum)
    return RR(to_wire("example"), message.SOA, 1, ttl, rdata)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_cache_ttls_count_down_and_expire() -> None:
    clock = Clock()
    cache = Cache(clock=clock)
    cache.put(WWW, 1, Answer(0, (a_rr(WWW, 60, "1.2.3.4"), a_rr(WWW, 90, "1.2.3.5"))))
    clock.now += 25
    got = cache.get(to_wire("WWW.Example"), 1)
    assert got is not None and [rr.ttl for rr in got.answer] == [35, 65]
    clock.now += 35
    assert cache.get(WWW, 1) is None and len(cache) == 0


def test_cache_patched_wire_is_a_valid_answer_section() -> None:
    clock = Clock()
    cache = Cache(clock=clock)
    cache.put(WWW, 1, Answer(0, (a_rr(WWW, 60, "1.2.3.4"),)))
    clock.now += 10
    entry = cache.entry(WWW, 1)
    assert entry is not None
    query = dns.message.make_query("www.example", "A")
    header = struct.pack("!HHHHHH", query.id, 0x8180, 1, 1, 0, 0)
    packet = header + WWW + struct.pack("!HH", 1, 1) + entry.patched(clock())
    parsed = dns.message.from_wire(packet)
    assert parsed.answer[0].ttl == 50 and str(parsed.answer[0][0]) == "1.2.3.4"


def test_negative_ttl_is_soa_ttl_or_minimum_and_capped() -> None:
    clock = Clock()
    cache = Cache(clock=clock)
    cache.put(WWW, 28, Answer(0, (), (soa_rr(3600, 120),)))
    got = cache.get(WWW, 28)
    assert got is not None and got.authority[0].ttl == 120  # RFC 2308 5
    cache.put(WWW, 16, Answer(3, (), (soa_rr(86400, 86400),)))
    got = cache.get(WWW, 16)
    assert got is not None and got.authority[0].ttl == MAX_NEGATIVE_TTL
    cache.put(WWW, 15, Answer(0, ()))  # no SOA: not cached
    assert cache.get(WWW, 15) is None
    cache.put(WWW, 1, Answer(0, (a_rr(WWW, 10**6, "1.2.3.4"),)))
    got = cache.get(WWW, 1)
    assert got is not None and got.answer[0].ttl == MAX_TTL


def test_cache_is_bounded_in_entries_and_bytes() -> None:
    cache = Cache(max_entries=10, max_bytes=10**9)
    for i in range(50):
        name = to_wire(f"n{i}.example")
        cache.put(name, 1, Answer(0, (a_rr(name, 60, "1.2.3.4"),)))
    assert len(cache) == 10
    assert cache.get(to_wire("n49.example"), 1) is not None
    assert cache.get(to_wire("n0.example"), 1) is None
    small = Cache(max_entries=10**6, max_bytes=5000)
    for i in range(100):
        name = to_wire(f"n{i}.example")
        small.put(name, 1, Answer(0, (a_rr(name, 60, "1.2.3.4"),)))
    assert small.bytes <= 5000 and 0 < len(small) < 100


def test_message_rejects_compression_loops_and_truncation() -> None:
    header = struct.pack("!HHHHHH", 1, 0x8000, 1, 0, 0, 0)
    with pytest.raises(MessageError):
        message.parse(header + b"\xc0\x0c" + b"\x00\x01\x00\x01")
    with pytest.raises(MessageError):
        message.parse(header + b"\x03ww")
    with pytest.raises(MessageError):
        message.parse(b"\x00" * 5)


def test_message_decompresses_rdata_names() -> None:
    query = dns.message.make_query("www.example", "MX")
    response = dns.message.make_response(query)
    response.answer.append(dns.rrset.from_text("www.example.", 60, "IN", "MX", "10 mail.www.example."))
    parsed = message.parse(response.to_wire())
    assert parsed.answer[0].rdata == b"\x00\x0a" + to_wire("mail.www.example")


def test_names() -> None:
    assert message.is_subdomain(to_wire("a.b.example"), to_wire("B.example"))
    assert not message.is_subdomain(to_wire("xb.example"), to_wire("b.example"))
    assert message.is_subdomain(to_wire("anything"), b"\x00")
    assert to_wire("a\\046b.example") == b"\x03a.b\x07example\x00"
    assert message.text(to_wire("WWW.Example")) == "www.example"


def test_follow_detects_cname_loops() -> None:
    a, b = to_wire("a.example"), to_wire("b.example")
    loop = [RR(a, message.CNAME, 1, 60, b), RR(b, message.CNAME, 1, 60, a)]
    with pytest.raises(ResolveError):
        follow(loop, a, 1)
    chain, nxt = follow(loop[:1], a, 1)
    assert chain == loop[:1] and nxt == b


def test_bundled_root_hints() -> None:
    servers = hints.load(None)
    assert len(servers) == 13
    assert servers[to_wire("a.root-servers.net")] == ["198.41.0.4", "2001:503:ba3e::2:30"]
    assert all(len(addresses) == 2 for addresses in servers.values())


def test_bundled_root_hints_match_the_systems_iana_copy() -> None:
    """The bundled file is IANA's named.root; Debian's dns-root-data (installed by scripts/test) carries
    the same file, so a stale copy shows up here as soon as the system's is newer."""
    system = Path("/usr/share/dns/root.hints")
    if not system.exists():
        pytest.skip("dns-root-data is not installed")
    assert hints.load(str(system)) == hints.load(None)


def test_root_hints_errors(tmp_path: object) -> None:
    with pytest.raises(hints.HintsError):
        hints.parse(". NS a.example.\n")
    with pytest.raises(hints.HintsError):
        hints.load("/nonexistent/root.hints")


class NoIPv4(Nat64):
    def has_route(self, address: str) -> bool:
        return ":" in address


def test_nat64_maps_ipv4_servers_when_ipv4_is_not_routed() -> None:
    wkp = NoIPv4(ipaddress.IPv6Network("64:ff9b::/96"))
    assert wkp.map("198.41.0.4") == "64:ff9b::c629:4"
    assert wkp.map("2001:503:ba3e::2:30") == "2001:503:ba3e::2:30"
    assert wkp.map("10.0.0.53") is None  # RFC 6052 3.1: not through the WKP
    nsp = NoIPv4(ipaddress.IPv6Network("2001:db8:64::/64"))
    assert nsp.map("10.0.0.53") == "2001:db8:64:0:a:0:3500:0"


def test_nat64_route_detection_sends_nothing_and_sees_loopback() -> None:
    nat64 = Nat64(ipaddress.IPv6Network("64:ff9b::/96"))
    assert nat64.has_route("127.53.0.1")
    assert nat64.map("127.53.0.1") == "127.53.0.1"
