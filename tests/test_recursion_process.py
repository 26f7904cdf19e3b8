"""Recursion and DNS64 through the real dnsd process, against the loopback hierarchy of tests/hierarchy.py."""

from __future__ import annotations

import os
from collections.abc import Iterator

import dns.flags
import dns.rcode
import pytest

from tests.dnsd_process import EXAMPLE_MANIFESTS, DnsdProcess, rdata_texts
from tests.hierarchy import UNBOUND_PLAIN, Hierarchy

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the hierarchy binds port 53 on loopback addresses")

ZONE_ARGS = ("--zone", "c2.k8s.ooo", "--source", f"file:{EXAMPLE_MANIFESTS}")


@pytest.fixture(scope="module")
def hierarchy() -> Iterator[Hierarchy]:
    h = Hierarchy().start(unbound=True)
    yield h
    h.stop()


@pytest.fixture(scope="module")
def iterating(hierarchy: Hierarchy) -> Iterator[DnsdProcess]:
    with DnsdProcess(*ZONE_ARGS, "--recursion", "iterate", "--root-hints", hierarchy.root_hints,
                     http="127.0.0.1:0") as proc:
        yield proc


def test_dns64_synthesis_through_the_process(iterating: DnsdProcess) -> None:
    before = iterating.metric("dnsd_queries_total", source="dns64")
    reply = iterating.query("a-only.dns64.test", "AAAA", rd=True, timeout=8)
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.RA
    assert not reply.flags & dns.flags.AA
    assert rdata_texts(reply, "AAAA") == ["64:ff9b::102:304"]
    assert reply.answer[0].ttl <= 300  # RFC 6147 5.1.7: min(A TTL 900, SOA minimum 300)
    assert iterating.metric("dnsd_queries_total", source="dns64") == before + 1
    assert iterating.metric("dnsd_dns64_synthesized_total") >= 1


def test_plain_resolution_and_nxdomain(iterating: DnsdProcess) -> None:
    both = iterating.query("both.dns64.test", "AAAA", rd=True, timeout=8)
    assert rdata_texts(both, "AAAA") == ["2001:db8::5"]  # real AAAA: no synthesis
    a = iterating.query("a-only.dns64.test", "A", rd=True, timeout=8)
    assert rdata_texts(a, "A") == ["1.2.3.4"]
    missing = iterating.query("nothere.dns64.test", "AAAA", rd=True, timeout=8)
    assert missing.rcode() == dns.rcode.NXDOMAIN


def test_zone_answers_stay_authoritative_and_unsynthesized(iterating: DnsdProcess) -> None:
    reply = iterating.query("frontend.shop.svc.c2.k8s.ooo", "AAAA", rd=True)
    assert reply.flags & dns.flags.AA
    assert reply.flags & dns.flags.RA  # this client may recurse
    assert rdata_texts(reply, "AAAA") == ["2001:db8:42::20"]
    ipv4_only_service = iterating.query("frontend.shop.svc.c2.k8s.ooo", "A", rd=True)
    assert rdata_texts(ipv4_only_service, "A") == ["10.96.0.20"]
    nodata = iterating.query("sample-service.default.svc.c2.k8s.ooo", "A", rd=True)
    assert nodata.answer == []


def test_rd_clear_is_answered_from_cache_only(iterating: DnsdProcess) -> None:
    uncached = iterating.query("shortttl.dns64.test", "A", rd=False, timeout=5)
    assert uncached.rcode() == dns.rcode.REFUSED
    iterating.query("shortttl.dns64.test", "A", rd=True, timeout=8)
    cached = iterating.query("shortttl.dns64.test", "A", rd=False, timeout=5)
    assert rdata_texts(cached, "A") == ["1.2.3.9"]


def test_ipv4only_arpa_is_answered_locally(iterating: DnsdProcess) -> None:
    upstream_before = iterating.metric("dnsd_upstream_queries_total")
    reply = iterating.query("ipv4only.arpa", "AAAA", rd=True, timeout=5)
    assert rdata_texts(reply, "AAAA") == ["64:ff9b::c000:aa", "64:ff9b::c000:ab"]
    assert iterating.metric("dnsd_upstream_queries_total") == upstream_before


def test_large_recursive_answer_truncates_then_tcp(iterating: DnsdProcess) -> None:
    udp = iterating.query("big.dns64.test", "A", rd=True, timeout=8, edns=False)
    assert udp.flags & dns.flags.TC
    tcp = iterating.query("big.dns64.test", "A", rd=True, timeout=8, tcp=True)
    assert not tcp.flags & dns.flags.TC
    assert len(rdata_texts(tcp, "A")) > 30


def test_clients_outside_allow_recursion_are_refused(hierarchy: Hierarchy) -> None:
    with DnsdProcess(*ZONE_ARGS, "--recursion", "iterate", "--root-hints", hierarchy.root_hints,
                     "--allow-recursion", "2001:db8::/32") as proc:
        refused = proc.query("a-only.dns64.test", "AAAA", rd=True)
        assert refused.rcode() == dns.rcode.REFUSED
        assert not refused.flags & dns.flags.RA
        zone = proc.query("sample-service.default.svc.c2.k8s.ooo", "AAAA", rd=True)
        assert rdata_texts(zone, "AAAA") == ["2001:db8:42::10"]
        assert not zone.flags & dns.flags.RA


def test_forward_mode_with_dns64(hierarchy: Hierarchy) -> None:
    with DnsdProcess(*ZONE_ARGS, "--recursion", "forward", "--forwarder", UNBOUND_PLAIN) as proc:
        reply = proc.query("a-only.dns64.test", "AAAA", rd=True, timeout=8)
        assert rdata_texts(reply, "AAAA") == ["64:ff9b::102:304"]
        private = proc.query("private.dns64.test", "AAAA", rd=True, timeout=8)
        assert private.answer == []  # RFC 6052 3.1: no well-known-prefix synthesis for 10.1.2.3
    with DnsdProcess(*ZONE_ARGS, "--recursion", "forward", "--forwarder", UNBOUND_PLAIN, "--no-dns64") as proc:
        assert proc.query("a-only.dns64.test", "AAAA", rd=True, timeout=8).answer == []
