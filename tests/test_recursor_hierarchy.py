"""Recursor against a real loopback hierarchy (Knot) in both modes, compared with Unbound's dns64.

Each DNS64 rule of RFC 6147 / 6052 / 8880 has a test here that fails when the rule breaks; the
zones are in tests/hierarchy.py. Forward mode uses a plain Unbound iterator as its upstream, so the
DNS64 logic under test is always dnsd's own. Runs only as root with knotd and unbound installed.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Iterator
from typing import Any

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from prometheus_client import REGISTRY

from dnsd import config, wire
from dnsd.handler import CachedAnswer, Handler, ttl_positions
from dnsd.metrics import QueryStats
from dnsd.recursor import Recursor, Settings
from dnsd.recursor.message import to_wire
from dnsd.zone import ZoneIndex
from tests.hierarchy import ROOT, UNBOUND_DNS64, UNBOUND_PLAIN, Hierarchy, MissingTool

FAST = Settings(timeout=0.5, retries=1, query_timeout=4.0)
MODES = ["iterate", "forward"]


@pytest.fixture(scope="module")
def hierarchy() -> Iterator[Hierarchy]:
    try:
        h = Hierarchy().start()
    except MissingTool as exc:
        pytest.fail(str(exc))
    yield h
    h.stop()


def make(hierarchy: Hierarchy, mode: str, **extra: Any) -> Recursor:
    raw: dict[str, Any] = {"zone": "c2.k8s.ooo", "recursion": mode, "root_hints": hierarchy.root_hints,
                           "forwarder": [UNBOUND_PLAIN], "dnssec_validation": False}  # unsigned hierarchy
    raw.update(extra)
    return Recursor(config.from_mapping(raw), FAST)


def make_query(qname: str, qtype: str, *, edns: bool = True, do: bool = False, cd: bool = False,
               rd: bool = True) -> dns.message.Message:
    query = dns.message.make_query(qname, qtype, use_edns=0 if edns else False, payload=1232,
                                   want_dnssec=do)
    if cd:
        query.flags |= dns.flags.CD
    if not rd:
        query.flags &= ~dns.flags.RD
    return query


async def ask(recursor: Recursor, qname: str, qtype: str = "AAAA", *, limit: int = 65535,
              edns: bool = True, do: bool = False, cd: bool = False, rd: bool = True
              ) -> dns.message.Message:
    query = make_query(qname, qtype, edns=edns, do=do, cd=cd, rd=rd)
    parsed = wire.parse_query(query.to_wire())
    response = dns.message.from_wire(await recursor.answer(parsed, limit))
    assert response.id == query.id
    return response


def addresses(response: dns.message.Message, rdtype: str = "AAAA") -> list[str]:
    return sorted(str(rd) for rrset in response.answer if rrset.rdtype == dns.rdatatype.from_text(rdtype)
                  for rd in rrset)


def ttl_of(response: dns.message.Message, rdtype: str = "AAAA") -> int:
    return next(r.ttl for r in response.answer if r.rdtype == dns.rdatatype.from_text(rdtype))


def upstream_count(mode: str, transport: str = "udp") -> float:
    return REGISTRY.get_sample_value("dnsd_upstream_queries_total",
                                     {"mode": mode, "transport": transport}) or 0.0


# ---- synthesis: when ------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
async def test_a_only_is_synthesized_with_soa_minimum_ttl(hierarchy: Hierarchy, mode: str) -> None:
    response = await ask(make(hierarchy, mode), "a-only.dns64.test")
    assert response.rcode() == dns.rcode.NOERROR
    assert addresses(response) == ["64:ff9b::102:304"]
    assert ttl_of(response) == 300  # RFC 6147 5.1.7: min(A TTL 900, SOA minimum 300)


@pytest.mark.parametrize("mode", MODES)
async def test_ttl_is_a_ttl_when_lower_and_soa_minimum_when_lower(hierarchy: Hierarchy,
                                                                   mode: str) -> None:
    recursor = make(hierarchy, mode)
    assert ttl_of(await ask(recursor, "shortttl.dns64.test")) == 30
    assert ttl_of(await ask(recursor, "longttl.soa60.test")) == 60


@pytest.mark.parametrize("mode", MODES)
async def test_real_aaaa_is_returned_untouched(hierarchy: Hierarchy, mode: str) -> None:
    response = await ask(make(hierarchy, mode), "both.dns64.test")
    assert addresses(response) == ["2001:db8::5"]


@pytest.mark.parametrize("mode", MODES)
async def test_ipv4_mapped_aaaa_counts_as_empty(hierarchy: Hierarchy, mode: str) -> None:
    response = await ask(make(hierarchy, mode), "mapped.dns64.test")
    assert addresses(response) == ["64:ff9b::102:306"]  # RFC 6147 5.1.4: ::ffff:0:0/96 excluded


@pytest.mark.parametrize("mode", MODES)
async def test_configured_exclusion(hierarchy: Hierarchy, mode: str) -> None:
    plain = await ask(make(hierarchy, mode), "excluded.dns64.test")
    assert addresses(plain) == ["2001:db8:bad::7"]
    excluding = make(hierarchy, mode, dns64_exclude=["2001:db8:bad::/48"])
    assert addresses(await ask(excluding, "excluded.dns64.test")) == ["64:ff9b::102:307"]


@pytest.mark.parametrize("mode", MODES)
async def test_wkp_never_embeds_nonglobal_ipv4(hierarchy: Hierarchy, mode: str) -> None:
    response = await ask(make(hierarchy, mode), "private.dns64.test")
    assert response.rcode() == dns.rcode.NOERROR
    assert response.answer == []  # RFC 6052 3.1
    assert response.authority[0].rdtype == dns.rdatatype.SOA
    mixed = await ask(make(hierarchy, mode), "mixed.dns64.test")
    assert addresses(mixed) == ["64:ff9b::102:308"]


@pytest.mark.parametrize("mode", MODES)
async def test_nonglobal_allowed_by_switch_or_network_specific_prefix(hierarchy: Hierarchy,
                                                                      mode: str) -> None:
    allowed = make(hierarchy, mode, dns64_allow_nonglobal=True)
    assert addresses(await ask(allowed, "private.dns64.test")) == ["64:ff9b::a01:203"]
    nsp = make(hierarchy, mode, dns64_prefix="2001:db8:64::/96")
    assert addresses(await ask(nsp, "private.dns64.test")) == ["2001:db8:64::a01:203"]


@pytest.mark.parametrize("prefix", ["2001:db8::/32", "2001:db8:100::/40", "2001:db8:122::/48",
                                    "2001:db8:122:300::/56", "2001:db8:122:344::/64"])
async def test_every_prefix_length(hierarchy: Hierarchy, prefix: str) -> None:
    from dnsd.dns64 import embed

    recursor = make(hierarchy, "iterate", dns64_prefix=prefix)
    expected = str(embed(ipaddress.IPv6Network(prefix), ipaddress.IPv4Address("1.2.3.4")))
    assert addresses(await ask(recursor, "a-only.dns64.test")) == [expected]


@pytest.mark.parametrize("mode", MODES)
async def test_cname_chain_across_zones_is_kept(hierarchy: Hierarchy, mode: str) -> None:
    response = await ask(make(hierarchy, mode), "c1.dns64.test")
    chain = [(str(r.name), str(r[0])) for r in response.answer if r.rdtype == dns.rdatatype.CNAME]
    assert chain == [("c1.dns64.test.", "c2.alt."), ("c2.alt.", "c3.dns64.test."),
                     ("c3.dns64.test.", "a-only.dns64.test.")]
    assert addresses(response) == ["64:ff9b::102:304"]
    assert str(response.answer[-1].name) == "a-only.dns64.test."


@pytest.mark.parametrize("mode", MODES)
async def test_dname_is_followed(hierarchy: Hierarchy, mode: str) -> None:
    response = await ask(make(hierarchy, mode), "a-only.dn.alt")
    assert addresses(response) == ["64:ff9b::102:304"]
    assert any(r.rdtype == dns.rdatatype.CNAME for r in response.answer)


@pytest.mark.parametrize("mode", MODES)
async def test_nxdomain_is_passed_through_without_a_query(hierarchy: Hierarchy, mode: str) -> None:
    recursor = make(hierarchy, mode)
    response = await ask(recursor, "nothere.dns64.test")
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.authority[0].rdtype == dns.rdatatype.SOA
    # RFC 6147 5.1.2: no A query was made, so nothing was cached for it
    assert recursor.cache.entry(to_wire("nothere.dns64.test"), 1) is None
    chained = await ask(recursor, "cname-nx.dns64.test")
    assert chained.rcode() == dns.rcode.NXDOMAIN
    assert [str(r.name) for r in chained.answer] == ["cname-nx.dns64.test."]


@pytest.mark.parametrize("mode", MODES)
async def test_nodata_stays_nodata(hierarchy: Hierarchy, mode: str) -> None:
    response = await ask(make(hierarchy, mode), "nodata.dns64.test")
    assert response.rcode() == dns.rcode.NOERROR
    assert response.answer == []
    assert response.authority[0].rdtype == dns.rdatatype.SOA
    # RFC 2308 5: min(SOA TTL 3600, minimum 300); in forward mode the upstream Unbound may have had it
    # cached for a few seconds already (other tests of this module ask it too)
    ttl = response.authority[0].ttl
    assert ttl == 300 if mode == "iterate" else 295 <= ttl <= 300


@pytest.mark.parametrize("mode", MODES)
async def test_large_answer_goes_over_tcp_and_truncates_for_small_clients(hierarchy: Hierarchy,
                                                                          mode: str) -> None:
    recursor = make(hierarchy, mode)
    before = upstream_count(mode, "tcp")
    response = await ask(recursor, "big.dns64.test")
    assert len(addresses(response)) == 100
    assert upstream_count(mode, "tcp") > before  # the A answer (>1232 bytes) came over TCP
    small = await ask(recursor, "big.dns64.test", limit=1232)
    assert small.flags & dns.flags.TC
    assert small.answer == []


@pytest.mark.parametrize("mode", MODES)
async def test_do_and_cd_disable_synthesis(hierarchy: Hierarchy, mode: str) -> None:
    recursor = make(hierarchy, mode)
    both = await ask(recursor, "a-only.dns64.test", do=True, cd=True)
    assert both.answer == []  # RFC 6147 5.5
    assert both.flags & dns.flags.CD
    assert addresses(await ask(recursor, "a-only.dns64.test", do=True)) == ["64:ff9b::102:304"]
    assert addresses(await ask(recursor, "a-only.dns64.test", cd=True)) == ["64:ff9b::102:304"]


@pytest.mark.parametrize("mode", MODES)
async def test_ptr_in_prefix_is_aliased_to_in_addr_arpa(hierarchy: Hierarchy, mode: str) -> None:
    name = ipaddress.IPv6Address("64:ff9b::1.2.3.4").reverse_pointer
    response = await ask(make(hierarchy, mode), name, "PTR")
    assert response.rcode() == dns.rcode.NOERROR
    cname = response.answer[0]
    assert cname.rdtype == dns.rdatatype.CNAME and str(cname[0]) == "4.3.2.1.in-addr.arpa."
    assert [str(rd) for rd in response.answer[1]] == ["a-only.dns64.test."]


@pytest.mark.parametrize("mode", MODES)
async def test_ipv4only_arpa_is_answered_locally(hierarchy: Hierarchy, mode: str) -> None:
    recursor = make(hierarchy, mode, dns64_prefix="2001:db8:64::/96")
    before = upstream_count(mode)
    aaaa = await ask(recursor, "ipv4only.arpa")
    a = await ask(recursor, "ipv4only.arpa", "A")
    assert addresses(aaaa) == ["2001:db8:64::c000:aa", "2001:db8:64::c000:ab"]
    assert addresses(a, "A") == ["192.0.0.170", "192.0.0.171"]  # not the zone's 6.6.6.6
    assert upstream_count(mode) == before  # RFC 8880 7.2: no upstream traffic


async def test_own_zone_is_never_synthesized(hierarchy: Hierarchy) -> None:
    recursor = make(hierarchy, "iterate", zone="dns64.test")
    assert (await ask(recursor, "a-only.dns64.test")).answer == []


async def test_no_dns64_switch(hierarchy: Hierarchy) -> None:
    recursor = make(hierarchy, "iterate", no_dns64=True)
    assert (await ask(recursor, "a-only.dns64.test")).answer == []


# ---- cache, header, modes -------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
async def test_cached_answers_need_no_upstream_and_ttls_count_down(hierarchy: Hierarchy,
                                                                   mode: str) -> None:
    recursor = make(hierarchy, mode)
    now = [1000.0]
    recursor.cache.clock = lambda: now[0]
    first = await ask(recursor, "c1.dns64.test", "A")
    before = upstream_count(mode)
    now[0] += 100
    second = await ask(recursor, "c1.dns64.test", "A")
    assert upstream_count(mode) == before
    assert [r.ttl for r in second.answer] == [r.ttl - 100 for r in first.answer]
    negative = await ask(recursor, "nothere.dns64.test", "A")
    now[0] += 10
    assert (await ask(recursor, "nothere.dns64.test", "A")).authority[0].ttl == \
        negative.authority[0].ttl - 10
    assert upstream_count(mode) == before + 1  # only the first NXDOMAIN went upstream


@pytest.mark.parametrize("mode", MODES)
async def test_rd_clear_answers_from_cache_only(hierarchy: Hierarchy, mode: str) -> None:
    recursor = make(hierarchy, mode)
    assert (await ask(recursor, "both.dns64.test", "A", rd=False)).rcode() == dns.rcode.REFUSED
    await ask(recursor, "both.dns64.test", "A")
    cached = await ask(recursor, "both.dns64.test", "A", rd=False)
    assert addresses(cached, "A") == ["1.2.3.5"]
    assert not cached.flags & dns.flags.RD


async def test_header_and_question_echo(hierarchy: Hierarchy) -> None:
    recursor = make(hierarchy, "iterate")
    query = dns.message.make_query("A-Only.DNS64.test", "AAAA", use_edns=False)
    raw = await recursor.answer(wire.parse_query(query.to_wire()), 512)
    response = dns.message.from_wire(raw)
    assert response.flags & dns.flags.RA and response.flags & dns.flags.RD
    assert response.edns < 0  # no OPT without one in the query
    asked = query.question[0].name.to_wire()
    assert asked is not None and raw[12:12 + len(asked)] == asked  # case preserved as asked
    with_edns = await ask(recursor, "a-only.dns64.test")
    assert with_edns.edns == 0 and with_edns.payload == 1232


async def test_glueless_delegation(hierarchy: Hierarchy) -> None:
    response = await ask(make(hierarchy, "iterate"), "www.glueless.test", "A")
    assert addresses(response, "A") == ["1.2.3.11"]


async def test_resolve_for_in_zone_cname_chasing(hierarchy: Hierarchy) -> None:
    recursor = make(hierarchy, "iterate")
    rcode, records = await recursor.resolve("c3.dns64.test", 1)
    assert rcode == 0
    assert [(o, t) for o, t, _, _ in records] == [("c3.dns64.test", 5), ("a-only.dns64.test", 1)]
    assert records[-1][3] == bytes([1, 2, 3, 4])
    assert (await recursor.resolve("nothere.dns64.test", 1))[0] == 3


async def test_forward_failover_and_servfail(hierarchy: Hierarchy) -> None:
    dead = "127.53.0.99"  # nothing listens: ICMP port unreachable
    recursor = make(hierarchy, "forward", forwarder=[dead, UNBOUND_PLAIN])
    assert addresses(await ask(recursor, "both.dns64.test", "A"), "A") == ["1.2.3.5"]
    assert recursor.forwarder_order()[0] == (UNBOUND_PLAIN, 53)  # the failed one goes last
    only_dead = make(hierarchy, "forward", forwarder=[dead])
    for name in ("both", "a-only"):
        assert (await ask(only_dead, f"{name}.dns64.test", "A")).rcode() == dns.rcode.SERVFAIL
    assert not only_dead.infra.up(dead, 53)  # 3 failures in a row: considered down for a while


# ---- comparison with Unbound's dns64 module --------------------------------------------------

#: Names where RFC 6147 leaves no choice, so dnsd and Unbound must agree on rcode and records.
STRICT = ["a-only.dns64.test", "both.dns64.test", "c1.dns64.test", "a-only.dn.alt",
          "nothere.dns64.test", "nodata.dns64.test", "cname-nx.dns64.test", "shortttl.dns64.test",
          "longttl.soa60.test", "big.dns64.test", "a-only.alt"]


def _records(response: dns.message.Message) -> set[tuple[str, int, str]]:
    return {(str(r.name).lower(), r.rdtype, str(rd).lower()) for r in response.answer for rd in r}


@pytest.mark.parametrize("name", STRICT)
async def test_same_as_unbound_dns64(hierarchy: Hierarchy, name: str) -> None:
    query = dns.message.make_query(name, "AAAA", use_edns=0, payload=1232)
    reference, _ = dns.query.udp_with_fallback(query, UNBOUND_DNS64, timeout=4)
    for mode in MODES:
        ours = await ask(make(hierarchy, mode), name)
        assert ours.rcode() == reference.rcode(), mode
        assert _records(ours) == _records(reference), mode


def test_hierarchy_is_loopback_only() -> None:
    assert ROOT.startswith("127.53.")


# ---- the handler's fast path for cached recursive answers ------------------------------------

#: Outside names whose answers differ in shape: synthesized, real AAAA, CNAME chains, DNAME,
#: NXDOMAIN, NODATA, PTR synthesis, answers too large for classic UDP, ipv4only.arpa.
FAST_QUESTIONS = [
    ("a-only.dns64.test", "AAAA"), ("a-only.dns64.test", "A"), ("both.dns64.test", "AAAA"),
    ("c1.dns64.test", "AAAA"), ("a-only.dn.alt", "AAAA"), ("nothere.dns64.test", "AAAA"),
    ("nodata.dns64.test", "AAAA"), ("cname-nx.dns64.test", "AAAA"), ("big.dns64.test", "A"),
    ("4.0.3.0.2.0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.b.9.f.f.4.6.0.0.ip6.arpa", "PTR"),
    ("ipv4only.arpa", "AAAA"),
]


def _zero_ttls(reply: bytes) -> bytes:
    found = fast_key_end(reply)
    positions = ttl_positions(reply, found)
    assert positions is not None
    buf = bytearray(reply)
    for offset in positions[0]:
        buf[offset : offset + 4] = b"\x00\x00\x00\x00"
    return bytes(buf)


def fast_key_end(message: bytes) -> int:
    end = message.index(0, 12)  # question names here carry no zero octets inside labels
    return end + 5


async def _settle(reply: object) -> bytes | None:
    if isinstance(reply, bytes) or reply is None:
        return reply
    return await reply  # type: ignore[misc,no-any-return]


@pytest.mark.parametrize("mode", MODES)
async def test_cached_recursive_answers_are_served_by_the_fast_path_with_the_slow_paths_bytes(
    hierarchy: Hierarchy, mode: str
) -> None:
    cfg = config.from_mapping({"zone": "c2.k8s.ooo", "recursion": mode, "root_hints": hierarchy.root_hints,
                               "forwarder": [UNBOUND_PLAIN], "source": "file:/dev/null",
                               "dnssec_validation": False})
    zone = ZoneIndex(cfg)
    zone.mark_synced()
    recursor = Recursor(cfg, FAST)
    fast = Handler(cfg, zone, QueryStats(), recursor)
    slow = Handler(cfg, zone, QueryStats(), recursor)
    slow.fast_path = False
    served_fast = 0
    for qname, qtype in FAST_QUESTIONS:
        for spelling, (edns, do, cd, rd) in itertools.product(
            (qname, qname.upper()), [(False, False, False, True), (True, False, False, True),
                                     (True, True, True, True), (True, False, False, False)]
        ):
            data = make_query(spelling, qtype, edns=edns, do=do, cd=cd, rd=rd).to_wire()
            first = await _settle(fast.respond(data, "127.0.0.1", False))
            second = fast.respond(data, "127.0.0.1", False)
            reference = await _settle(slow.respond(data, "127.0.0.1", False))
            assert first is not None and reference is not None
            cacheable = (first[3] & 0xF) in (0, 3) and not first[2] & 0x02
            if not cacheable:  # only the 100-address answer, truncated over UDP
                assert qname.startswith("big.")
                continue
            assert isinstance(second, bytes), (spelling, qtype, edns, do, cd, rd)  # a fast-path hit
            served_fast += 1
            qend = fast_key_end(data)
            assert second[:2] == data[:2] and second[12:qend] == data[12:qend]  # ID and question as asked
            assert _zero_ttls(second) == _zero_ttls(reference), (spelling, qtype, edns, do, cd, rd)
            got = dns.message.from_wire(second)
            want = dns.message.from_wire(reference)
            for ours, theirs in zip(got.answer + got.authority, want.answer + want.authority, strict=True):
                assert abs(ours.ttl - theirs.ttl) <= 1
    assert served_fast == (len(FAST_QUESTIONS) - 1) * 8


def test_cached_answer_ttls_count_down_and_expire() -> None:
    query = dns.message.make_query("x.example", "A")
    response = dns.message.make_response(query)
    response.answer.append(dns.rrset.from_text("x.example.", 10, "IN", "CNAME", "y.example."))
    response.answer.append(dns.rrset.from_text("y.example.", 4, "IN", "A", "192.0.2.1"))
    wire_reply = response.to_wire()
    positions = ttl_positions(wire_reply, fast_key_end(wire_reply))
    assert positions is not None and positions[1] == [10, 4]
    labels = ("udp", "A", "NOERROR", "cache")
    cached = CachedAnswer(wire_reply, 100.0, *positions, labels, labels)
    assert cached.at(100.9) == wire_reply
    later = cached.at(102.5)
    assert later is not None
    assert [rr.ttl for rr in dns.message.from_wire(later).answer] == [8, 2]
    assert cached.at(104.0) is None  # the shortest TTL (4 s) has run out: back to the slow path
