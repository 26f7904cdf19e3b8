"""The fast path must produce exactly the slow path's bytes, and invalidate exactly on zone changes.

These run the handler in-process (no sockets): every query of the zone tests, in several spellings,
with and without EDNS/DO/CD, from a client that may recurse and one that may not, goes through the
slow path (full decode, which stores the answer) and then the fast path, and the bytes must match.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from dnsd import config as config_module
from dnsd import wire
from dnsd.handler import Handler
from dnsd.kube.manifests import ManifestSource
from dnsd.kube.model import ServiceRecord
from dnsd.metrics import QueryStats
from dnsd.zone import ZoneIndex

REPO = Path(__file__).resolve().parents[1]
Z = "c2.k8s.ooo"

QUESTIONS = [
    (f"sample-service.default.svc.{Z}", "AAAA"), (f"sample-service.default.svc.{Z}", "A"),
    (f"frontend.shop.svc.{Z}", "A"), (f"frontend.shop.svc.{Z}", "ANY"),
    (f"gateway.shop.svc.{Z}", "AAAA"), (f"payments.shop.svc.{Z}", "AAAA"),
    (f"db.shop.svc.{Z}", "AAAA"), (f"db-0.db.shop.svc.{Z}", "AAAA"), (f"db-2.db.shop.svc.{Z}", "AAAA"),
    (f"_postgres._tcp.db.shop.svc.{Z}", "SRV"), (f"_http._tcp.sample-service.default.svc.{Z}", "SRV"),
    (f"peers.shop.svc.{Z}", "AAAA"), (f"cold.shop.svc.{Z}", "AAAA"), (f"internal-admin.default.svc.{Z}", "A"),
    (f"dns-version.{Z}", "TXT"), (Z, "SOA"), (Z, "NS"), (f"svc.{Z}", "A"), (f"empty-team.svc.{Z}", "A"),
    (f"nosuch.{Z}", "A"), ("0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.2.4.0.0.8.b.d.0.1.0.0.2.ip6.arpa", "PTR"),
    ("www.example.com", "A"), (".", "NS"), (Z, "AXFR"),
]


def _handler() -> Handler:
    cfg = config_module.from_mapping({
        "zone": Z, "source": f"file:{REPO / 'examples/cluster.yaml'}", "recursion": "off",
        "nameserver": ["ns1.c2.k8s.ooo=2001:db8:53::53"], "reverse_zone": ["2001:db8:42::/48"],
    })
    zone = ZoneIndex(cfg)
    source = ManifestSource(REPO / "examples/cluster.yaml", zone)
    source.load()
    zone.mark_synced()
    return Handler(cfg, zone, QueryStats())


def _variants(name: str, qtype: str) -> list[bytes]:
    out = []
    spellings = [name, name.upper(), "".join(c.upper() if i % 2 else c for i, c in enumerate(name))]
    for spelling, (edns, do, cd, rd) in itertools.product(
        spellings, [(-1, False, False, True), (0, False, False, False), (0, True, True, True)]
    ):
        message = dns.message.make_query(spelling, qtype, use_edns=edns, want_dnssec=do)
        if cd:
            message.flags |= dns.flags.CD
        if not rd:
            message.flags &= ~dns.flags.RD
        out.append(message.to_wire())
    return out


@pytest.mark.parametrize(("name", "qtype"), QUESTIONS)
@pytest.mark.parametrize("client", ["127.0.0.1", "2001:db8:ffff::1"])
def test_fast_path_bytes_equal_slow_path_bytes(name: str, qtype: str, client: str) -> None:
    handler = _handler()
    for data in _variants(name, qtype):
        slow = handler.slow(data, client, False)
        assert isinstance(slow, bytes)
        fast = handler.fast(data, client, False)
        assert fast is not None, f"{name}/{qtype} was not stored for the fast path"
        assert fast == slow
        # a second query with another ID and case still matches the slow path byte for byte
        other = bytes([data[0] ^ 0xFF, data[1]]) + data[2:]
        assert handler.fast(other, client, False) == handler.slow(other, client, False)


def test_fast_path_copies_id_rd_and_question_case() -> None:
    handler = _handler()
    first = dns.message.make_query(f"sample-service.default.svc.{Z}", "AAAA")
    handler.slow(first.to_wire(), "127.0.0.1", False)
    second = dns.message.make_query(f"SAMPLE-service.default.svc.{Z}", "AAAA")
    second.flags &= ~dns.flags.RD
    fast = handler.fast(second.to_wire(), "127.0.0.1", False)
    assert fast is not None
    reply = dns.message.from_wire(fast)
    assert reply.id == second.id
    assert not reply.flags & dns.flags.RD
    assert reply.question[0].name.to_text() == f"SAMPLE-service.default.svc.{Z}."


def test_zone_change_invalidates_exactly_the_changed_names() -> None:
    handler = _handler()
    zone = handler.zone
    asked = {
        "changed": dns.message.make_query(f"sample-service.default.svc.{Z}", "AAAA").to_wire(),
        "other": dns.message.make_query(f"frontend.shop.svc.{Z}", "AAAA").to_wire(),
        "negative": dns.message.make_query(f"nosuch.{Z}", "A").to_wire(),
    }
    for data in asked.values():
        handler.slow(data, "127.0.0.1", False)
        assert handler.fast(data, "127.0.0.1", False) is not None
    old = zone.services[("default", "sample-service")]
    zone.put_service(ServiceRecord(**{**{f: getattr(old, f) for f in old.__slots__},
                                      "addresses": ("2001:db8:42::11",)}))
    assert handler.fast(asked["changed"], "127.0.0.1", False) is None  # the changed name is gone
    assert handler.fast(asked["negative"], "127.0.0.1", False) is None  # SOA serial moved
    assert handler.fast(asked["other"], "127.0.0.1", False) is not None  # untouched name kept
    reply = dns.message.from_wire(handler.slow(asked["changed"], "127.0.0.1", False))  # type: ignore[arg-type]
    assert [rd.to_text() for rd in reply.answer[0]] == ["2001:db8:42::11"]


def test_malformed_and_unusual_queries_never_take_the_fast_path() -> None:
    handler = _handler()
    good = dns.message.make_query(Z, "SOA").to_wire()
    handler.slow(good, "127.0.0.1", False)
    assert handler.fast(good, "127.0.0.1", False) is not None
    assert handler.fast(good + b"\x00", "127.0.0.1", False) is None  # trailing bytes
    badvers = dns.message.make_query(Z, "SOA", use_edns=1).to_wire()
    assert handler.fast(badvers, "127.0.0.1", False) is None
    notify = bytearray(good)
    notify[2] |= 0x20  # opcode NOTIFY
    assert handler.fast(bytes(notify), "127.0.0.1", False) is None
    reply = handler.slow(bytes(notify), "127.0.0.1", False)
    assert isinstance(reply, bytes) and reply[3] & 0xF == dns.rcode.NOTIMP


def test_additional_data_is_dropped_before_setting_tc() -> None:
    handler = _handler()
    query = wire.parse_query(dns.message.make_query(f"_postgres._tcp.db.shop.svc.{Z}", "SRV").to_wire())
    from dnsd import authority

    result = authority.answer(handler.zone, query.qname, query.qtype)
    assert result is not None
    full = wire.encode(query, result.response, False, 65535, 1232)
    reduced = wire.encode(query, result.response, False, len(full) - 1, 1232)
    parsed = dns.message.from_wire(reduced)
    assert not parsed.flags & dns.flags.TC
    assert len(parsed.answer[0]) == 2 and parsed.additional == []
    tiny = dns.message.from_wire(wire.encode(query, result.response, False, 60, 1232))
    assert tiny.flags & dns.flags.TC and tiny.answer == []


def test_not_synced_zone_answers_servfail_and_is_not_served_stale() -> None:
    cfg = config_module.from_mapping({"zone": Z, "recursion": "off"})
    zone = ZoneIndex(cfg)
    handler = Handler(cfg, zone, QueryStats())
    data = dns.message.make_query(f"x.{Z}", "A").to_wire()
    reply = handler.slow(data, "127.0.0.1", False)
    assert isinstance(reply, bytes) and reply[3] & 0xF == dns.rcode.SERVFAIL
    zone.mark_synced()
    assert handler.fast(data, "127.0.0.1", False) is None
    reply = handler.slow(data, "127.0.0.1", False)
    assert isinstance(reply, bytes) and reply[3] & 0xF == dns.rcode.NXDOMAIN


def test_the_key_folds_the_names_case_but_never_the_type_or_class() -> None:
    """Type 65 (HTTPS) is the octet "A" and type 97 is "a": folding them would let one answer the other."""
    handler = _handler()
    keys = set()
    for qtype in (65, 97, 0x4101, 0x6101):
        query = dns.message.make_query(f"Sample-Service.default.svc.{Z}", qtype, use_edns=False)
        found = handler.fast_key(query.to_wire(), "127.0.0.1")
        assert found is not None
        assert found[0].startswith(b"\x0esample-service\x07default\x03svc\x02c2\x03k8s\x03ooo\x00")
        keys.add(found[0])
    assert len(keys) == 4
