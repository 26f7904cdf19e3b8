"""Spoofing and abuse defences of the recursor, against small in-test fake servers on 127.53.1.0/24.

Each fake answers a query with a bad variant first (wrong ID, source port, source address,
question, or QR clear) and, unless told not to, the genuine answer after it: the recursor must take
the genuine one, and with the bad one alone it must time out (SERVFAIL) rather than accept it. The
iterate-mode fakes check that out-of-bailiwick records are neither used nor cached, and that a
referral to many glueless name servers (NXNSAttack) causes only a bounded number of queries.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from dnsd import config, wire
from dnsd.recursor import Recursor, Settings
from dnsd.recursor.message import to_wire

FAKE = "127.53.1.1"
OTHER = "127.53.1.99"
ROOT = "127.53.1.10"
SPOOF_NS = "127.53.1.11"
SHORT = Settings(timeout=0.3, retries=0, query_timeout=3.0)

Behaviour = Callable[[dns.message.Message], list[tuple[bytes, str]]]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="fake servers bind port 53: run as root")


class FakeServer(asyncio.DatagramProtocol):
    """UDP server on (address, 53); `behaviour` returns [(wire, source)] to send back, in order.

    source is "self", "other-port" (same address, another port) or "other-address".
    """

    def __init__(self, address: str, behaviour: Behaviour) -> None:
        self.address = address
        self.behaviour = behaviour
        self.queries: list[tuple[dns.message.Message, tuple[str, int]]] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.other_port = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.other_port.bind((address, 0))
        self.other_address = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.other_address.bind((OTHER, 0))

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        self.queries.append((query, addr))
        asyncio.get_running_loop().create_task(self._reply(query, addr))

    async def _reply(self, query: dns.message.Message, addr: tuple[str, int]) -> None:
        for payload, source in self.behaviour(query):
            if source == "self":
                assert self.transport is not None
                self.transport.sendto(payload, addr)
            elif source == "other-port":
                self.other_port.sendto(payload, addr)
            else:
                self.other_address.sendto(payload, addr)
            await asyncio.sleep(0.01)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.other_port.close()
        self.other_address.close()


async def serve(address: str, behaviour: Behaviour) -> FakeServer:
    loop = asyncio.get_running_loop()
    server = FakeServer(address, behaviour)
    await loop.create_datagram_endpoint(lambda: server, local_addr=(address, 53))
    return server


@pytest.fixture
async def servers() -> AsyncIterator[list[FakeServer]]:
    started: list[FakeServer] = []
    yield started
    for server in started:
        server.close()


def answer(query: dns.message.Message, address: str, name: str | None = None) -> dns.message.Message:
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA | dns.flags.RA
    owner = name or query.question[0].name.to_text()
    response.answer.append(dns.rrset.from_text(owner, 300, "IN", "A", address))
    return response


def variant(kind: str, query: dns.message.Message) -> tuple[bytes, str]:
    bad = answer(query, "6.6.6.6")
    if kind == "wrong-id":
        bad.id ^= 0x5A5A
        return bad.to_wire(), "self"
    if kind == "wrong-port":
        return bad.to_wire(), "other-port"
    if kind == "wrong-address":
        return bad.to_wire(), "other-address"
    if kind == "wrong-question":
        forged = dns.message.make_query("evil.example", "A")
        forged.id = query.id
        return answer(forged, "6.6.6.6").to_wire(), "self"
    if kind == "wrong-type":
        forged = dns.message.make_query(query.question[0].name, "TXT")
        forged.id = query.id
        response = dns.message.make_response(forged)
        return response.to_wire(), "self"
    if kind == "not-a-response":
        bad.flags &= ~dns.flags.QR
        return bad.to_wire(), "self"
    raise AssertionError(kind)


def recursor(**raw: Any) -> Recursor:
    raw.setdefault("zone", "c2.k8s.ooo")
    raw.setdefault("dnssec_validation", False)  # the fake upstreams are unsigned
    return Recursor(config.from_mapping(raw), SHORT)


async def ask(rec: Recursor, name: str, qtype: str = "A") -> dns.message.Message:
    query = dns.message.make_query(name, qtype, use_edns=0, payload=1232)
    return dns.message.from_wire(await rec.answer(wire.parse_query(query.to_wire()), 65535))


VARIANTS = ["wrong-id", "wrong-port", "wrong-address", "wrong-question", "wrong-type",
            "not-a-response"]


@pytest.mark.parametrize("kind", VARIANTS)
async def test_spoofed_answer_before_the_real_one_is_ignored(servers: list[FakeServer],
                                                             kind: str) -> None:
    def behaviour(query: dns.message.Message) -> list[tuple[bytes, str]]:
        return [variant(kind, query), (answer(query, "1.2.3.4").to_wire(), "self")]

    servers.append(await serve(FAKE, behaviour))
    response = await ask(recursor(recursion="forward", forwarder=[f"{FAKE}:53"]), "www.spoof.example")
    assert [str(rd) for rrset in response.answer for rd in rrset] == ["1.2.3.4"]


@pytest.mark.parametrize("kind", VARIANTS)
async def test_spoofed_answer_alone_is_never_accepted(servers: list[FakeServer], kind: str) -> None:
    servers.append(await serve(FAKE, lambda query: [variant(kind, query)]))
    response = await ask(recursor(recursion="forward", forwarder=[f"{FAKE}:53"]), "www.spoof.example")
    assert response.rcode() == dns.rcode.SERVFAIL
    assert response.answer == []


async def test_random_ids_and_source_ports(servers: list[FakeServer]) -> None:
    server = await serve(FAKE, lambda query: [(answer(query, "1.2.3.4").to_wire(), "self")])
    servers.append(server)
    rec = recursor(recursion="forward", forwarder=[f"{FAKE}:53"])
    for i in range(8):
        await ask(rec, f"n{i}.example")
    ports = {addr[1] for _, addr in server.queries}
    ids = {query.id for query, _ in server.queries}
    assert len(ports) >= 7 and len(ids) >= 7  # a collision among 8 draws is ~1e-3 likely at most


def _fake_root(extra: Callable[[dns.message.Message], dns.message.Message | None]) -> Behaviour:
    def behaviour(query: dns.message.Message) -> list[tuple[bytes, str]]:
        qname = query.question[0].name.to_text().lower()
        response = extra(query)
        if response is None and qname.endswith("spoof."):
            response = dns.message.make_response(query)
            response.authority.append(dns.rrset.from_text("spoof.", 3600, "IN", "NS", "ns.spoof."))
            response.additional.append(dns.rrset.from_text("ns.spoof.", 3600, "IN", "A", SPOOF_NS))
        if response is None:
            response = dns.message.make_response(query)
            response.flags |= dns.flags.AA
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(dns.rrset.from_text(
                ".", 3600, "IN", "SOA", "root. hostmaster.root. 1 1800 900 604800 60"))
        return [(response.to_wire(), "self")]

    return behaviour


def _spoof_zone(query: dns.message.Message) -> list[tuple[bytes, str]]:
    if query.question[0].name.to_text().startswith("alias."):
        # the classic poisoning: a CNAME out of the zone plus the target's "data" alongside
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        response.answer.append(dns.rrset.from_text("alias.spoof.", 300, "IN", "CNAME", "www.victim."))
        response.answer.append(dns.rrset.from_text("www.victim.", 3600, "IN", "A", "6.6.6.6"))
        return [(response.to_wire(), "self")]
    response = answer(query, "1.2.3.4")
    # everything below is outside the bailiwick of spoof. and must be neither used nor cached
    response.answer.append(dns.rrset.from_text("www.victim.", 3600, "IN", "A", "6.6.6.6"))
    response.authority.append(dns.rrset.from_text("victim.", 3600, "IN", "NS", "ns.spoof."))
    response.additional.append(dns.rrset.from_text("www.victim.", 3600, "IN", "A", "6.6.6.6"))
    return [(response.to_wire(), "self")]


@pytest.fixture
def hints(tmp_path: Path) -> str:
    path = tmp_path / "root.hints"
    path.write_text(f". 3600 NS ns.root.\nns.root. 3600 A {ROOT}\n")
    return str(path)


async def test_out_of_bailiwick_records_are_not_cached(servers: list[FakeServer], hints: str) -> None:
    root = await serve(ROOT, _fake_root(lambda q: None))
    servers += [root, await serve(SPOOF_NS, _spoof_zone)]
    rec = recursor(recursion="iterate", root_hints=hints)
    first = await ask(rec, "www.spoof")
    assert [(str(r.name), str(r[0])) for r in first.answer] == [("www.spoof.", "1.2.3.4")]
    assert rec.cache.entry(to_wire("www.victim"), 1) is None
    victim = await ask(rec, "www.victim")
    assert victim.rcode() == dns.rcode.NXDOMAIN  # asked the real authority, the root
    assert any(q.question[0].name.to_text() == "www.victim." for q, _ in root.queries)


async def test_out_of_bailiwick_cname_target_data_is_ignored(servers: list[FakeServer],
                                                             hints: str) -> None:
    servers += [await serve(ROOT, _fake_root(lambda q: None)), await serve(SPOOF_NS, _spoof_zone)]
    rec = recursor(recursion="iterate", root_hints=hints)
    response = await ask(rec, "alias.spoof")
    assert response.rcode() == dns.rcode.NXDOMAIN  # the target was resolved from its own zone
    assert [str(r.name) for r in response.answer] == ["alias.spoof."]
    cached = rec.cache.entry(to_wire("www.victim"), 1)
    assert cached is not None and cached.answer.rcode == dns.rcode.NXDOMAIN  # the root's answer


async def test_glueless_referral_flood_is_bounded(servers: list[FakeServer], hints: str) -> None:
    def flood(query: dns.message.Message) -> dns.message.Message | None:
        if not query.question[0].name.to_text().endswith("nxns."):
            return None
        response = dns.message.make_response(query)
        response.authority.append(dns.rrset.from_text(
            "nxns.", 3600, "IN", "NS", *[f"ns{i}.victim." for i in range(50)]))
        return response

    root = await serve(ROOT, _fake_root(flood))
    servers.append(root)
    response = await ask(recursor(recursion="iterate", root_hints=hints), "www.nxns")
    assert response.rcode() == dns.rcode.SERVFAIL
    victim_queries = [q for q, _ in root.queries if q.question[0].name.to_text().endswith("victim.")]
    assert 1 <= len(victim_queries) <= 6  # ns_lookups (3) names x (A, AAAA)
    assert len(root.queries) <= 40


async def test_edns_fallback_for_servers_that_reject_opt(servers: list[FakeServer]) -> None:
    def old_server(query: dns.message.Message) -> list[tuple[bytes, str]]:
        if query.edns >= 0:
            response = dns.message.make_response(query)
            response.use_edns(False)
            response.set_rcode(dns.rcode.FORMERR)
            return [(response.to_wire(), "self")]
        return [(answer(query, "1.2.3.4").to_wire(), "self")]

    server = await serve(FAKE, old_server)
    servers.append(server)
    rec = recursor(recursion="forward", forwarder=[f"{FAKE}:53"])
    response = await ask(rec, "old.example")
    assert [str(rd) for rrset in response.answer for rd in rrset] == ["1.2.3.4"]
    assert [q.edns for q, _ in server.queries] == [0, -1]
    await ask(rec, "again.example")
    assert server.queries[-1][0].edns == -1  # remembered: no OPT for this server any more


async def test_aaaa_servfail_still_gets_synthesis(servers: list[FakeServer]) -> None:
    def broken_aaaa(query: dns.message.Message) -> list[tuple[bytes, str]]:
        if query.question[0].rdtype == dns.rdatatype.AAAA:
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.SERVFAIL)
            return [(response.to_wire(), "self")]
        return [(answer(query, "1.2.3.4").to_wire(), "self")]

    servers.append(await serve(FAKE, broken_aaaa))
    rec = recursor(recursion="forward", forwarder=[f"{FAKE}:53"])
    response = await ask(rec, "broken.example", "AAAA")
    assert [str(rd) for rrset in response.answer for rd in rrset] == ["64:ff9b::102:304"]
    assert response.answer[0].ttl == 300  # A TTL (300) below the no-SOA cap of 600 (5.1.7)


async def test_sources_and_shared_inflight_lookups(servers: list[FakeServer]) -> None:
    server = await serve(FAKE, lambda query: [(answer(query, "1.2.3.4").to_wire(), "self")])
    servers.append(server)
    rec = recursor(recursion="forward", forwarder=[f"{FAKE}:53"])

    def parsed(name: str, qtype: str) -> wire.Query:
        return wire.parse_query(dns.message.make_query(name, qtype).to_wire())

    results = await asyncio.gather(*(rec.answer_with_source(parsed("same.example", "A"), 512)
                                     for _ in range(5)))
    assert {source for _, source in results} == {"recursion"}
    assert len(server.queries) == 1  # five concurrent clients, one upstream query
    assert (await rec.answer_with_source(parsed("same.example", "A"), 512))[1] == "cache"
    assert (await rec.answer_with_source(parsed("same.example", "AAAA"), 512))[1] == "dns64"
