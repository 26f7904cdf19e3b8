"""The resolver against hostile authoritative servers (issue 18): each finding's attack fails.

The hierarchy is tests/hostile.py's on 127.53.2.0/24: a root, a victim zone, a dead zone whose
server never answers, and an attacker whose server is scripted per test (the `ATTACKS` table keys
are name suffixes under `attacker.`). The real dnsd process iterates from that root; the tests count
what reached each server and check what clients get. Findings that are about dnsd's internal state
(delegation caps, memory accounting, lameness) use the in-process `Recursor` on the same network.
Names are distinct per test (`*.fresh.victim.` is a wildcard) so the shared process's cache does
not couple the tests.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import random
import socket
import time
import tracemalloc
from collections.abc import Callable, Iterator

import dns.flags
import dns.message
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from dnsd import config, wire
from dnsd.handler import CachedAnswer, Handler, RecursiveStore
from dnsd.metrics import QueryStats
from dnsd.recursor import Recursor, Settings
from dnsd.recursor.cache import NAME_WIDE, Answer, Cache
from dnsd.recursor.chain import Budget
from dnsd.recursor.iterator import MAX_NS_PER_DELEGATION, RTT_BAND
from dnsd.recursor.iterator import Iterator as Iterating
from dnsd.recursor.message import RR, to_wire
from dnsd.recursor.upstream import AddressPolicy, Infra, Nat64
from dnsd.zone import ZoneIndex
from tests.dnsd_process import EXAMPLE_MANIFESTS, DnsdProcess, rdata_texts
from tests.hostile import (
    ATTACKER,
    DEAD,
    ROOT,
    ROOT_HINTS,
    VICTIM,
    VICTIM2,
    Message,
    Network,
    Reply,
    response,
    standard,
    with_opcode,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the fake servers bind port 53 on 127.53.2.0/24")

ZONE_ARGS = ("--zone", "c2.k8s.ooo", "--source", f"file:{EXAMPLE_MANIFESTS}")
ATTACKER_SOA = "attacker. 60 IN SOA ns.attacker. h.attacker. 1 1800 900 604800 60"
#: dnsd itself also listens here, so that glue pointing at it can be tried (finding 12)
SELF = "127.53.2.53"

ATTACKS: dict[str, Callable[[Message], Reply]] = {}


def attack(suffix: str) -> Callable[[Callable[[Message], Reply]], Callable[[Message], Reply]]:
    def register(script: Callable[[Message], Reply]) -> Callable[[Message], Reply]:
        ATTACKS[suffix] = script
        return script
    return register


def attacker(query: Message) -> Reply:
    qname = query.question[0].name.to_text().lower()
    for suffix, script in ATTACKS.items():
        if qname.endswith(suffix):
            return script(query)
    return response(query, rcode=dns.rcode.NXDOMAIN, authority=(ATTACKER_SOA,))


def qname_of(query: Message) -> str:
    return str(query.question[0].name.to_text().lower())


@attack(".poison.attacker.")
def _poison(query: Message) -> Reply:
    # finding 1: AA NXDOMAIN whose answer CNAMEs to a name in the victim's zone
    return response(query, rcode=dns.rcode.NXDOMAIN, answer=(f"{qname_of(query)} 3600 IN CNAME p1.fresh.victim.",),
                    authority=(ATTACKER_SOA,))


@attack(".dn.attacker.")
def _poison_dname(query: Message) -> Reply:
    owner = qname_of(query)
    target = owner[: -len("dn.attacker.")] + "fresh.victim."
    return response(query, rcode=dns.rcode.NXDOMAIN,
                    answer=("dn.attacker. 3600 IN DNAME fresh.victim.", f"{owner} 3600 IN CNAME {target}"),
                    authority=(ATTACKER_SOA,))


@attack(".birthday.attacker.")
def _birthday(query: Message) -> Reply:
    group = qname_of(query).split(".")[1]  # b<i>.<group>.birthday.attacker. -> t-<group>.slow.victim.
    return response(query, answer=(f"{qname_of(query)} 300 IN CNAME t-{group}.slow.victim.",))


@attack(".fan.attacker.")
def _fan_to_victim(query: Message) -> Reply:
    # finding 6: 40 NS names, all glue pointing at one address (the victim's, which refuses)
    names = [f"ns{i}.fan.attacker." for i in range(40)]
    return response(query, aa=False, authority=tuple(f"fan.attacker. 3600 IN NS {n}" for n in names),
                    additional=tuple(f"{n} 3600 IN A {VICTIM}" for n in names))


@attack(".fandead.attacker.")
def _fan_to_dead(query: Message) -> Reply:
    names = [f"ns{i}.fandead.attacker." for i in range(40)]
    return response(query, aa=False, authority=tuple(f"fandead.attacker. 3600 IN NS {n}" for n in names),
                    additional=tuple(f"{n} 3600 IN A {DEAD}" for n in names))


def _chain(query: Message, zone: str, length: int, per_response: int) -> Reply:
    """c0.zone -> c1.zone -> ... -> c<length>.zone A, `per_response` links in each response."""
    qname = qname_of(query)
    first = int(qname.split(".")[0][1:])
    links = []
    for i in range(first, min(first + per_response, length)):
        links.append(f"c{i}.{zone} 300 IN CNAME c{i + 1}.{zone}")
    end = min(first + per_response, length)
    data = (f"c{end}.{zone} 300 IN A 192.0.2.77",) if end == length else ()
    return response(query, answer=(*links, *data))


@attack(".longchain.attacker.")
def _long_chain(query: Message) -> Reply:
    return _chain(query, "longchain.attacker.", 131, 11)


@attack(".okchain.attacker.")
def _ok_chain(query: Message) -> Reply:
    return _chain(query, "okchain.attacker.", 10, 3)


@attack(".update.attacker.")
def _update_opcode(query: Message) -> Reply:
    return with_opcode(response(query, answer=(f"{qname_of(query)} 300 IN A 6.6.6.6",)), 5), 0.0


@attack(".self.attacker.")
def _glue_to_self(query: Message) -> Reply:
    return response(query, aa=False, authority=("self.attacker. 3600 IN NS ns.self.attacker.",),
                    additional=(f"ns.self.attacker. 3600 IN A {SELF}",))


@attack(".zero.attacker.")
def _glue_to_nowhere(query: Message) -> Reply:
    return response(query, aa=False, authority=("zero.attacker. 3600 IN NS ns.zero.attacker.",
                                                "zero.attacker. 3600 IN NS ns6.zero.attacker."),
                    additional=("ns.zero.attacker. 3600 IN A 0.0.0.0", "ns6.zero.attacker. 3600 IN AAAA ::"))


def _victim_script(state: dict[str, bool]) -> Callable[[Message], Reply]:
    """The victim's special cases; everything else falls through to its zone."""

    def script(query: Message) -> Reply:
        qname = qname_of(query)
        rdtype = query.question[0].rdtype
        if qname.endswith(".slow.victim."):
            # answered after a second, so that a burst of clients overlaps (finding 4)
            return response(query, answer=(f"{qname} 300 IN A 198.51.100.7",)), 1.0
        if qname == "later.victim." and rdtype == dns.rdatatype.AAAA and state.get("later_aaaa"):
            return response(query, answer=("later.victim. 300 IN AAAA 2001:db8::9",))
        return None
    return script


STATE: dict[str, bool] = {}


@pytest.fixture(scope="module")
def net() -> Iterator[Network]:
    network = standard(attacker)
    network[VICTIM].script = _victim_script(STATE)
    network.start()
    yield network
    network.stop()


@pytest.fixture(scope="module")
def hints(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("hostile") / "root.hints"
    path.write_text(ROOT_HINTS)
    return str(path)


@pytest.fixture(scope="module")
def dnsd(net: Network, hints: str) -> Iterator[DnsdProcess]:
    # a burst of 300 distinct names in one zone is 300 fetches towards it at once: above the
    # default per-zone limit (100), which finding 5's own process tests
    with DnsdProcess(*ZONE_ARGS, "--recursion", "iterate", "--root-hints", hints,
                     "--recursion-max-per-zone", "1000",
                     listen=("127.0.0.1:0", f"{SELF}:53"), http="127.0.0.1:0") as proc:
        yield proc


def ask(proc: DnsdProcess, name: str, qtype: str | int = "A", timeout: float = 10.0) -> dns.message.Message:
    return proc.query(name, qtype, rd=True, timeout=timeout)


def burst(proc: DnsdProcess, names: list[str], qtype: str = "A", wait: float = 20.0,
          source: str = "127.0.0.1") -> dict[str, dns.message.Message]:
    """Send every query at once from one socket, then collect the answers (until `wait`)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    # the answers to a shared fetch leave together: room for all of them (a datagram costs ~2 KB)
    # (SO_RCVBUFFORCE, as root, is not capped by net.core.rmem_max, which is 208 KB by default)
    sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_RCVBUFFORCE", socket.SO_RCVBUF), 4 * 1024 * 1024)
    sock.bind((source, 0))
    sock.settimeout(0.5)
    pending: dict[int, str] = {}
    try:
        for i, name in enumerate(names):
            query = dns.message.make_query(name, qtype, id=i)
            pending[i] = name
            sock.sendto(query.to_wire(), (proc.host, proc.port))
        answers: dict[str, dns.message.Message] = {}
        deadline = time.monotonic() + wait
        while pending and time.monotonic() < deadline:
            try:
                data, _ = sock.recvfrom(65535)
            except TimeoutError:
                continue
            reply = dns.message.from_wire(data)
            if reply.id in pending:
                answers[pending.pop(reply.id)] = reply
        return answers
    finally:
        sock.close()


# ---- finding 1: NXDOMAIN with a CNAME or DNAME ------------------------------------------------------


def test_nxdomain_with_cname_is_a_cname_step_and_does_not_poison_the_target(dnsd: DnsdProcess,
                                                                            net: Network) -> None:
    reply = ask(dnsd, "x.poison.attacker")
    # the target was resolved in its own zone: the attacker's rcode is not about it (RFC 6604 2.1)
    assert reply.rcode() == dns.rcode.NOERROR
    assert rdata_texts(reply, "CNAME") == ["p1.fresh.victim."]
    assert rdata_texts(reply, "A") == ["192.0.2.9"]
    assert net[VICTIM].count("p1.fresh.victim.", "A") == 1
    for qtype in ("A", "AAAA", "MX"):
        after = ask(dnsd, "p1.fresh.victim", qtype)
        assert after.rcode() == dns.rcode.NOERROR, qtype
    assert rdata_texts(ask(dnsd, "p1.fresh.victim"), "A") == ["192.0.2.9"]


def test_nxdomain_with_dname_does_not_poison_the_target(dnsd: DnsdProcess) -> None:
    reply = ask(dnsd, "p2.dn.attacker")
    assert reply.rcode() == dns.rcode.NOERROR
    assert rdata_texts(reply, "A") == ["192.0.2.9"]
    assert ask(dnsd, "p2.fresh.victim", "TXT").rcode() == dns.rcode.NOERROR  # NODATA, not NXDOMAIN


# ---- finding 2: TYPE0 --------------------------------------------------------------------------------


def test_type0_is_refused_and_the_name_still_answers_every_type(dnsd: DnsdProcess) -> None:
    for reserved in (0, 65535):
        reply = ask(dnsd, "mail.victim", reserved)
        assert reply.rcode() == dns.rcode.NOTIMP
    assert rdata_texts(ask(dnsd, "mail.victim", "A"), "A") == ["192.0.2.2"]
    assert rdata_texts(ask(dnsd, "mail.victim", "AAAA"), "AAAA") == ["2001:db8::2"]
    assert rdata_texts(ask(dnsd, "mail.victim", "MX"), "MX") == ["10 mail.victim."]


def test_name_wide_nxdomain_slot_is_outside_the_qtype_space() -> None:
    cache = Cache()
    name = to_wire("n.example")
    soa = RR(to_wire("example"), 6, 1, 60, to_wire("ns.example") + to_wire("h.example") + bytes(16) + b"\0\0\0\x3c")
    cache.put(name, 0, Answer(0, (), (soa,)))  # what a TYPE0 NODATA would have stored
    assert cache.get(name, 1) is None  # the A slot is untouched
    cache.put(name, NAME_WIDE, Answer(3, (), (soa,)))
    found = cache.get(name, 1)
    assert found is not None and found.rcode == 3


async def test_recursor_answers_reserved_qtypes_notimp_without_a_lookup(net: Network, hints: str) -> None:
    rec = Recursor(config.from_mapping({"zone": "c2.k8s.ooo", "recursion": "iterate", "root_hints": hints,
                                            "dnssec_validation": False}))
    before = len(net[VICTIM].queries)
    query = wire.parse_query(dns.message.make_query("www.victim", dns.rdatatype.RdataType.make(0)).to_wire())
    reply = dns.message.from_wire(await rec.answer(query, 65535))
    assert reply.rcode() == dns.rcode.NOTIMP
    assert len(net[VICTIM].queries) == before


# ---- finding 3: memory caps --------------------------------------------------------------------------


def test_cache_bytes_account_for_what_the_entries_keep_alive() -> None:
    """Cache.bytes is at least what tracemalloc sees the cached objects cost (it was 1.8-16.5x low)."""
    cache = Cache(max_entries=10**6, max_bytes=4 * 1024 * 1024)
    rng = random.Random(18)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(3000):
            name = to_wire(f"n{i}.attacker-{rng.randrange(10**6)}.example")
            count = rng.choice([1, 2, 10, 100])
            records = tuple(RR(to_wire(f"n{i}.attacker-{j}.example"), 1, 1, 300, rng.randbytes(4))
                            for j in range(count))
            cache.put(name, 1, Answer(0, records))
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert cache.bytes <= cache.max_bytes
    assert used <= cache.bytes * 1.1 + 64 * 1024, (used, cache.bytes)


def test_fast_path_store_of_recursive_answers_has_a_byte_budget() -> None:
    store = RecursiveStore(max_bytes=1024 * 1024)
    labels = ("udp", "A", "NOERROR", "cache", "cached")
    template = bytes(12) + bytes(3000)
    for i in range(2000):
        store.put(b"k%d" % i, CachedAnswer(template, 0.0, [20], [300], labels, labels))
    assert store.bytes <= 1024 * 1024
    assert 0 < len(store) < 2000
    assert b"k1999" in store and b"k0" not in store  # the oldest went first
    big = CachedAnswer(bytes(12), 0.0, list(range(3800)), [300] * 3800, labels, labels)
    assert big.size < 3800 * 8 + 1000  # compact TTL offsets: 8 octets a record, not ~100
    del store[b"k1999"]
    assert store.bytes == sum(entry.size for entry in store.values())


class _BigEngine:
    """An upstream that answers `big.*` with 300 A records (4.8 KB) and anything else with three."""

    async def lookup(self, qname: bytes, qtype: int, budget: Budget) -> Answer:
        count = 300 if qname.startswith(b"\x03big") else 3
        return Answer(0, tuple(RR(qname, 1, 1, 300, bytes((10, 0, i // 250, i % 250))) for i in range(count)))


async def test_huge_recursive_answers_are_not_kept_in_the_fast_path_store() -> None:
    cfg = config.from_mapping({"zone": "c2.k8s.ooo", "recursion": "forward", "forwarder": ["127.0.0.1:9"],
                                "dnssec_validation": False})
    zone = ZoneIndex(cfg)
    zone.mark_synced()
    rec = Recursor(cfg)
    rec.engine = _BigEngine()  # type: ignore[assignment]
    handler = Handler(cfg, zone, QueryStats(), rec)
    queries = {name: dns.message.make_query(name, "A").to_wire() for name in ("big.example", "small.example")}
    for name, data in queries.items():
        reply = handler.respond(data, "127.0.0.1", True)  # over TCP: no size limit
        assert reply is not None
        answer = reply if isinstance(reply, bytes) else await reply
        assert answer is not None
        assert sum(len(r) for r in dns.message.from_wire(answer).answer) == (300 if name == "big.example" else 3)
    assert handler.fast(queries["small.example"], "127.0.0.1", True) is not None
    assert handler.fast(queries["big.example"], "127.0.0.1", True) is None  # served by the slow path
    assert handler._recursive.bytes == sum(entry.size for entry in handler._recursive.values())


#: 2,500 NS names (the referral needs TCP), glueless, in a zone that does not exist: built once, the
#: fake servers are one Python thread
_FARM = [dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.NS, f"ns{i}.farm.attacker.") for i in range(2500)]


@attack(".fat.attacker.")
def _fat_referral(query: Message) -> Reply:
    # finding 3c: a referral for fatN.fat.attacker. with 2,500 NS names
    zone = query.question[0].name.split(4)[1]  # x.fatN.fat.attacker. -> fatN.fat.attacker.
    reply = response(query, aa=False)
    reply.authority.append(dns.rrset.from_rdata_list(zone, 3600, _FARM))
    return reply


async def test_fat_referrals_are_capped_and_the_delegation_store_keeps_its_byte_budget(
        net: Network, hints: str) -> None:
    # generous timeouts: the fake servers share one thread with the referral building (no timeouts
    # are expected: every server answers)
    settings = Settings(timeout=3.0, retries=1, query_timeout=15.0, delegation_bytes=64 * 1024)
    rec = Recursor(config.from_mapping({"zone": "c2.k8s.ooo", "recursion": "iterate", "root_hints": hints,
                                            "dnssec_validation": False}),
                   settings)
    engine = rec.engine
    assert isinstance(engine, Iterating)

    async def a(name: str) -> dns.message.Message:
        query = wire.parse_query(dns.message.make_query(name, "A").to_wire())
        return dns.message.from_wire(await rec.answer(query, 65535))

    assert (await a("w0.fresh.victim")).rcode() == dns.rcode.NOERROR
    for i in range(40):
        await a(f"x.fat{i}.fat.attacker")
        assert (await a(f"w{i + 1}.fresh.victim")).rcode() == dns.rcode.NOERROR  # ordinary traffic
    stored = list(engine._delegations.values())
    assert stored and all(len(d.servers) <= MAX_NS_PER_DELEGATION for d, _ in stored)
    assert engine.delegation_bytes <= 64 * 1024
    assert engine.delegation_bytes == sum(size for _, size in stored)
    # least recently used goes first: the delegation in constant use stays
    assert b"\x06victim\x00" in engine._delegations


# ---- finding 4: identical questions in flight -----------------------------------------------------


def test_a_burst_of_names_that_cname_to_one_target_sends_one_query_for_it(dnsd: DnsdProcess,
                                                                          net: Network) -> None:
    # the delegations are known (not the target: another group CNAMEs to another target)
    assert ask(dnsd, "prime.g0.birthday.attacker").rcode() == dns.rcode.NOERROR
    names = [f"b{i}.g1.birthday.attacker." for i in range(300)]
    answers = burst(dnsd, names)
    assert len(answers) == 300
    assert all(rdata_texts(reply, "A") == ["198.51.100.7"] for reply in answers.values())
    assert rdata_texts(answers["b7.g1.birthday.attacker."], "CNAME") == ["t-g1.slow.victim."]
    assert 1 <= net[VICTIM].count("t-g1.slow.victim.", "A") <= 2  # Unbound 2, BIND 1; it was 263


# ---- finding 5: a dead zone flooded --------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(net: Network, hints: str) -> Iterator[DnsdProcess]:
    with DnsdProcess(*ZONE_ARGS, "--recursion", "iterate", "--root-hints", hints,
                     "--recursion-max-per-zone", "20", "--recursion-max-outstanding", "200",
                     http="127.0.0.1:0") as proc:
        yield proc


def test_healthy_zones_keep_answering_while_a_dead_zone_is_flooded(limited: DnsdProcess, net: Network) -> None:
    # the delegations are known (a cold start sends the whole burst to the root at once)
    assert ask(limited, "prime.fresh.victim").rcode() == dns.rcode.NOERROR
    assert ask(limited, "prime.dead").rcode() == dns.rcode.SERVFAIL
    dead_before = len(net[DEAD].queries)
    flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flood.bind(("127.0.0.2", 0))
    try:
        for i in range(600):
            flood.sendto(dns.message.make_query(f"r{i}.dead.", "A").to_wire(), (limited.host, limited.port))
            if i % 50 == 49:
                time.sleep(0.02)  # about 1,500 q/s: dnsd reads between the chunks
        for i in range(10):
            reply = ask(limited, f"h{i}.fresh.victim", timeout=5.0)
            assert reply.rcode() == dns.rcode.NOERROR, i
            assert rdata_texts(reply, "A") == ["192.0.2.9"]
    finally:
        flood.close()
    # (most of the 580 beyond the limit; not all of them if a loaded machine drops some datagrams)
    assert limited.metric("dnsd_limit_hits_total", limit="recursion_per_zone") >= 100
    # 20 fetches at once, each one query and one retry
    assert len(net[DEAD].queries) - dead_before <= 2 * 20 + 10


def test_a_failure_is_cached_per_name_and_type(dnsd: DnsdProcess, net: Network) -> None:
    first = ask(dnsd, "once.dead")
    assert first.rcode() == dns.rcode.SERVFAIL
    asked = net[DEAD].count("once.dead.", "A")
    assert 1 <= asked <= 2
    again = ask(dnsd, "once.dead")
    assert again.rcode() == dns.rcode.SERVFAIL
    assert net[DEAD].count("once.dead.", "A") == asked  # RFC 9520: not asked again at once


# ---- finding 6: many NS names, one address ------------------------------------------------------


def test_forty_ns_names_on_one_refusing_address_cost_one_packet(dnsd: DnsdProcess, net: Network) -> None:
    reply = ask(dnsd, "x1.fan.attacker")
    assert reply.rcode() == dns.rcode.SERVFAIL
    # deduplicated, and REFUSED is not retried (a second packet only if a loaded machine made the
    # first answer late: a timeout is retried); it was 40
    asked = net[VICTIM].count("x1.fan.attacker.")
    assert 1 <= asked <= 2
    assert ask(dnsd, "x1.fan.attacker").rcode() == dns.rcode.SERVFAIL
    assert net[VICTIM].count("x1.fan.attacker.") == asked  # and the failure is cached


def test_forty_ns_names_on_one_silent_address_cost_two_packets(dnsd: DnsdProcess, net: Network) -> None:
    assert ask(dnsd, "x2.fandead.attacker").rcode() == dns.rcode.SERVFAIL
    assert 1 <= net[DEAD].count("x2.fandead.attacker.") <= 2  # one try and one retry; it was 40


# ---- finding 7: NODATA behind a CNAME ---------------------------------------------------------------


def test_nodata_behind_a_long_lived_cname_lapses_with_the_negative_ttl(dnsd: DnsdProcess) -> None:
    first = ask(dnsd, "alias.victim", "AAAA")
    assert rdata_texts(first, "AAAA") == ["64:ff9b::102:309"]  # synthesized from later.victim A
    assert all(rrset.ttl <= 2 for rrset in first.answer if rrset.rdtype == dns.rdatatype.AAAA)
    STATE["later_aaaa"] = True  # the CDN name gains IPv6
    try:
        deadline = time.monotonic() + 20
        while True:
            reply = ask(dnsd, "alias.victim", "AAAA")
            if rdata_texts(reply, "AAAA") == ["2001:db8::9"]:
                break
            assert time.monotonic() < deadline, reply
            time.sleep(0.2)
        assert rdata_texts(reply, "CNAME") == ["later.victim."]
    finally:
        STATE.pop("later_aaaa")


# ---- finding 8: lameness per (address, zone) --------------------------------------------------------


@attack(".lame.attacker.")
def _lame_delegation(query: Message) -> Reply:
    # the attacker's zone delegated to VICTIM2, which serves two. and refuses everything else
    return response(query, aa=False, authority=("lame.attacker. 3600 IN NS ns.lame.attacker.",),
                    additional=(f"ns.lame.attacker. 3600 IN A {VICTIM2}",))


async def test_lameness_for_an_attackers_zone_does_not_steer_other_zones(net: Network, hints: str) -> None:
    settings = Settings(timeout=3.0, retries=1, query_timeout=15.0)
    rec = Recursor(config.from_mapping({"zone": "c2.k8s.ooo", "recursion": "iterate", "root_hints": hints,
                                            "dnssec_validation": False}),
                   settings)
    engine = rec.engine
    assert isinstance(engine, Iterating)

    async def a(name: str) -> int:
        query = wire.parse_query(dns.message.make_query(name, "A").to_wire())
        return dns.message.from_wire(await rec.answer(query, 65535)).rcode()

    for i in range(6):
        assert await a(f"l{i}.lame.attacker") == dns.rcode.SERVFAIL
    now = time.monotonic()
    assert engine._bad(VICTIM2, to_wire("lame.attacker"), now)
    assert not engine._bad(VICTIM2, to_wire("two"), now)  # still good for its own zone
    assert rec.infra.up(VICTIM2, 53)
    assert await a("x.two") == dns.rcode.NOERROR


def test_servers_within_the_rtt_band_are_explored_at_random() -> None:
    engine = Iterating(Cache(), Infra(), Nat64(None), {b"\x02ns\x00": ["192.0.2.1"]})
    engine.infra.success("192.0.2.1", 53, 0.010)
    engine.infra.success("192.0.2.2", 53, 0.010 + RTT_BAND / 2)
    engine.infra.success("192.0.2.3", 53, 1.5)
    firsts = {engine._order(["192.0.2.1", "192.0.2.2", "192.0.2.3"], b"\x00")[0] for _ in range(60)}
    assert firsts == {"192.0.2.1", "192.0.2.2"}  # never the slow one first


# ---- finding 10: chain length over the whole chain -------------------------------------------------


def test_a_131_link_chain_is_not_followed(dnsd: DnsdProcess, net: Network) -> None:
    reply = ask(dnsd, "c0.longchain.attacker")
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert net[ATTACKER].count() > 0
    asked = [name for name, _ in list(net[ATTACKER].queries) if name.endswith(".longchain.attacker.")]
    assert len(asked) <= 4  # 12 links, 11 a response: two responses (and a retry each at worst) show it


def test_a_ten_link_chain_across_responses_still_resolves(dnsd: DnsdProcess) -> None:
    reply = ask(dnsd, "c0.okchain.attacker")
    assert reply.rcode() == dns.rcode.NOERROR
    assert len(rdata_texts(reply, "CNAME")) == 10
    assert rdata_texts(reply, "A") == ["192.0.2.77"]


# ---- finding 11: response opcode ---------------------------------------------------------------------


def test_an_answer_with_opcode_update_is_not_accepted(dnsd: DnsdProcess) -> None:
    reply = ask(dnsd, "x.update.attacker")
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert rdata_texts(reply, "A") == []


# ---- finding 12: glue pointing at dnsd itself or nowhere ----------------------------------------


def test_glue_pointing_at_dnsds_own_listener_is_not_queried(dnsd: DnsdProcess) -> None:
    before = dnsd.metric("dnsd_queries_total", source="refused")
    upstream_before = dnsd.metric("dnsd_upstream_queries_total")
    reply = ask(dnsd, "x.self.attacker")
    assert reply.rcode() == dns.rcode.SERVFAIL
    assert dnsd.metric("dnsd_queries_total", source="refused") == before  # dnsd never asked itself
    assert dnsd.metric("dnsd_upstream_queries_total") - upstream_before <= 2  # root, attacker


def test_glue_pointing_at_unspecified_addresses_is_not_queried(dnsd: DnsdProcess) -> None:
    upstream_before = dnsd.metric("dnsd_upstream_queries_total")
    assert ask(dnsd, "x.zero.attacker").rcode() == dns.rcode.SERVFAIL
    assert dnsd.metric("dnsd_upstream_queries_total") - upstream_before <= 2


def test_address_policy() -> None:
    internet = AddressPolicy(["198.41.0.4", "2001:503:ba3e::2:30"], [("192.0.2.53", 53)], 53)
    for address in ("127.0.0.1", "::1", "169.254.1.1", "fe80::1", "0.0.0.0", "::", "0.1.2.3",
                    "192.0.2.53", "::ffff:127.0.0.1", "224.0.0.1"):
        assert not internet.allowed(address), address
    for address in ("192.0.2.54", "2001:db8::1", "10.0.0.1"):
        assert internet.allowed(address), address
    loopback = AddressPolicy(["127.53.0.1"], [("127.53.2.53", 53), ("::", 53)], 53)
    assert loopback.allowed("127.53.2.2")
    assert not loopback.allowed("127.53.2.53")  # dnsd itself
    assert not loopback.allowed("127.0.0.1") and not loopback.allowed("::1")  # its wildcard listener
    assert not loopback.allowed("0.0.0.0")


# ---- RFC 6147 5.1.4: excluded addresses only ------------------------------------------------------


def test_aaaa_of_only_excluded_addresses_and_no_a_is_nodata(dnsd: DnsdProcess) -> None:
    reply = ask(dnsd, "mapped-only.victim", "AAAA")
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer == []
    assert [rrset.rdtype for rrset in reply.authority] == [dns.rdatatype.SOA]


# ---- finding 9: DNS64 PTR for addresses in dnsd's own reverse zones --------------------------------


def test_ptr_of_a_synthesized_address_in_a_served_reverse_zone_is_answered_by_the_zone(
        net: Network, hints: str) -> None:
    with DnsdProcess(*ZONE_ARGS, "--recursion", "iterate", "--root-hints", hints,
                     "--dns64-prefix", "2001:db8:64::/96", "--reverse-zone", "10.96.0.0/16") as proc:
        root_before = len(net[ROOT].queries)
        name = ipaddress.IPv6Address("2001:db8:64::a60:14").reverse_pointer  # 10.96.0.20 embedded
        reply = ask(proc, name, "PTR")
        assert reply.rcode() == dns.rcode.NOERROR
        assert rdata_texts(reply, "CNAME") == ["20.0.96.10.in-addr.arpa."]
        ptr = rdata_texts(reply, "PTR")
        assert len(ptr) == 1 and ptr[0].endswith(".c2.k8s.ooo."), ptr
        assert len(net[ROOT].queries) == root_before  # nothing went upstream


# ---- shutdown --------------------------------------------------------------------------------------


def test_shutdown_with_lookups_in_flight_logs_no_error(net: Network, hints: str) -> None:
    proc = DnsdProcess(*ZONE_ARGS, "--recursion", "iterate", "--root-hints", hints).start()
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(20):
            sock.sendto(dns.message.make_query(f"s{i}.shutdown.dead.", "A").to_wire(), (proc.host, proc.port))
        sock.close()
        deadline = time.monotonic() + 10
        while not any(name.endswith(".shutdown.dead.") for name, _ in list(net[DEAD].queries)):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.stop()
    assert "KeyError" not in proc.output() and "recursion failed" not in proc.output(), proc.output()


async def test_close_with_shared_lookups_running_raises_no_keyerror(net: Network, hints: str) -> None:
    rec = Recursor(config.from_mapping({"zone": "c2.k8s.ooo", "recursion": "iterate", "root_hints": hints,
                                            "dnssec_validation": False}),
                   Settings(timeout=2.0, retries=0, query_timeout=5.0))
    query = wire.parse_query(dns.message.make_query("k.dead", "A").to_wire())
    tasks = [asyncio.ensure_future(rec.answer(query, 65535)) for _ in range(3)]
    deadline = time.monotonic() + 5
    while not rec._inflight:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    await rec.close()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert not any(isinstance(r, KeyError) for r in results), results


@pytest.fixture(scope="module")
def crowded(net: Network, hints: str) -> Iterator[DnsdProcess]:
    """Few recursion slots in all, and no per-zone limit to speak of: only jostling keeps them moving."""
    with DnsdProcess(*ZONE_ARGS, "--recursion", "iterate", "--root-hints", hints,
                     "--recursion-max-outstanding", "8", "--recursion-max-per-zone", "1000",
                     http="127.0.0.1:0") as proc:
        yield proc


def test_the_oldest_work_gives_way_when_every_slot_waits_on_a_dead_zone(crowded: DnsdProcess, net: Network) -> None:
    # the delegations are known, so that the healthy names below need the victim's server alone
    assert ask(crowded, "prime.fresh.victim").rcode() == dns.rcode.NOERROR
    assert ask(crowded, "prime.dead").rcode() == dns.rcode.SERVFAIL
    flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flood.bind(("127.0.0.2", 0))
    try:
        for i in range(8):  # every slot now waits on a server that never answers (seconds)
            flood.sendto(dns.message.make_query(f"j{i}.dead.", "A").to_wire(), (crowded.host, crowded.port))
        time.sleep(0.5)  # the dead-zone queries are now older than the jostle timeout (0.2 s)
        for i in range(5):
            # without jostling, each of these would get SERVFAIL at once: all 8 slots are taken
            reply = ask(crowded, f"k{i}.fresh.victim", timeout=5.0)
            assert reply.rcode() == dns.rcode.NOERROR, i
            assert rdata_texts(reply, "A") == ["192.0.2.9"]
    finally:
        flood.close()
    assert crowded.metric("dnsd_limit_hits_total", limit="recursion_jostled") >= 1
    assert crowded.metric("dnsd_limit_hits_total", limit="recursion_outstanding") == 0


class _FloodEngine:
    """An upstream where `known.example` has an A record and every name under `victim.example` is NXDOMAIN."""

    SOA = RR(b"\x06victim\x07example\x00", 6, 1, 300,
             b"\x02ns\x06victim\x07example\x00\x04host\x06victim\x07example\x00" + bytes(16) + b"\x00\x00\x01\x2c")

    async def lookup(self, qname: bytes, qtype: int, budget: Budget) -> Answer:
        if qname == b"\x05known\x07example\x00":
            return Answer(0, (RR(qname, 1, 1, 300, bytes((192, 0, 2, 1))),))
        return Answer(3, (), (self.SOA,))


async def test_a_flood_of_recursive_nxdomains_does_not_push_known_answers_out_of_the_fast_path() -> None:
    """Recursive NXDOMAINs live in their own, smaller area of the fast-path store: 3,000 unique flood
    names (each one NXDOMAIN, each stored once) leave the cached answer of a name people ask again where
    it was, and the NXDOMAIN area stays within its own bound."""
    cfg = config.from_mapping({"zone": "c2.k8s.ooo", "recursion": "forward", "forwarder": ["127.0.0.1:9"],
                                "dnssec_validation": False})
    zone = ZoneIndex(cfg)
    zone.mark_synced()
    rec = Recursor(cfg)
    rec.engine = _FloodEngine()  # type: ignore[assignment]
    handler = Handler(cfg, zone, QueryStats(), rec)

    async def ask(data: bytes) -> dns.message.Message:
        reply = handler.respond(data, "127.0.0.1", False)
        answer = reply if isinstance(reply, bytes) or reply is None else await reply
        assert answer is not None
        return dns.message.from_wire(answer)

    known = dns.message.make_query("known.example", "A").to_wire()
    assert (await ask(known)).answer
    rng = random.Random(3)
    for _ in range(3000):
        flood = dns.message.make_query(f"r{rng.getrandbits(48):x}.victim.example", "A").to_wire()
        assert (await ask(flood)).rcode() == dns.rcode.NXDOMAIN
    assert handler.fast(known, "127.0.0.1", False) is not None  # still a fast-path answer
    assert len(handler._recursive) == 1  # the flood went elsewhere ...
    assert 0 < len(handler._recursive_nx) <= 3000  # ... to the NXDOMAIN area
    assert handler.fast(flood, "127.0.0.1", False) is not None  # a repeated flood name is still fast
