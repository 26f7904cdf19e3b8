"""Abuse resistance: hostile bytes must never crash dnsd, never get a malformed reply, never split the paths.

Three levels:

* **Handler level** (in-process, no sockets): `Handler.respond` gets well over 100,000 hostile inputs, each
  from a client that may recurse and one that may not, with recursion off and with recursion on (a real
  `Recursor` whose upstream engine is a deterministic stub, so that the recursive reply encoding and DNS64
  run without a network). The bulk is seeded byte-level mutation of valid queries (bit flips, truncation,
  insertion, deletion, splices, lying counts, planted compression pointers and loops, bad label lengths,
  trailing junk); a seeded structured generator and a few thousand Hypothesis examples build queries
  field by field (random names with pointers and long labels, random qtype/qclass/opcode/flags, counts
  that lie, OPT records with random versions and options). Every reply is checked with dnspython, an
  independent parser, and the fast path (pre-encoded answers) must give the slow path's bytes exactly.
* **Upstream responses**: the recursor's parser (`dnsd.recursor.message.parse`) and chain follower get
  60,000 mutated responses and may only reject them with their own error types.
* **DNSSEC records**: the parsers of `dnsd.dnssec.records`, the canonical form and the validator get
  mutated DNSKEY, RRSIG, DS, NSEC, NSEC3 and NSEC3PARAM rdata (and signed answers whose signatures and
  proofs are mutated) and may only reject them with `FormatError` or a bogus verdict.
* **Process level**: the real `python -m dnsd` gets a few thousand random and mutated datagrams and a set of
  abusive TCP connections (garbage length prefixes, half-sent frames, connections closed mid-frame), and
  must afterwards still answer correctly, with no traceback in its log.

Everything is seeded (Hypothesis derandomized), so a failure reproduces exactly; the failing input's bytes
are printed in the assertion message.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dnsd import config as config_module
from dnsd import wire
from dnsd.handler import Handler
from dnsd.kube.manifests import ManifestSource
from dnsd.metrics import QueryStats
from dnsd.recursor import Recursor, message
from dnsd.recursor.cache import Answer
from dnsd.recursor.chain import Budget, ResolveError, follow
from dnsd.recursor.message import AAAA, CLASS_IN, RR, SOA, A, key
from dnsd.zone import ZoneIndex
from tests.dnsd_process import DnsdProcess, rdata_texts

REPO = Path(__file__).resolve().parents[1]
Z = "c2.k8s.ooo"

#: Clients: one inside the default --allow-recursion (loopback), one outside it (TEST-NET-3, documentation).
RECURSING_CLIENT = "127.0.0.1"
OTHER_CLIENTS = ("203.0.113.9", "2001:db8:ffff::1")

#: The minimum number of (input, handler, client) cases the handler-level fuzz must run.
MIN_CASES = 100_000

#: Questions the mutations start from: every kind of zone answer, names outside, meta types.
QUESTIONS = [
    (f"sample-service.default.svc.{Z}", "AAAA"), (f"sample-service.default.svc.{Z}", "A"),
    (f"frontend.shop.svc.{Z}", "A"), (f"frontend.shop.svc.{Z}", "ANY"), (f"gateway.shop.svc.{Z}", "AAAA"),
    (f"payments.shop.svc.{Z}", "AAAA"), (f"payments.shop.svc.{Z}", "CNAME"), (f"db.shop.svc.{Z}", "AAAA"),
    (f"db-0.db.shop.svc.{Z}", "AAAA"), (f"_postgres._tcp.db.shop.svc.{Z}", "SRV"),
    (f"_http._tcp.sample-service.default.svc.{Z}", "SRV"), (f"peers.shop.svc.{Z}", "AAAA"),
    (f"cold.shop.svc.{Z}", "AAAA"), (f"dns-version.{Z}", "TXT"), (Z, "SOA"), (Z, "NS"), (f"ns1.{Z}", "AAAA"),
    (f"svc.{Z}", "A"), (f"empty-team.svc.{Z}", "A"), (f"nosuch.{Z}", "A"), (Z, "AXFR"), (Z, "IXFR"),
    ("0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.2.4.0.0.8.b.d.0.1.0.0.2.ip6.arpa", "PTR"),
    ("20.0.96.10.in-addr.arpa", "PTR"), ("www.example.com", "A"), ("www.example.com", "AAAA"),
    ("nx.example.com", "AAAA"), ("fail.example.net", "A"), ("big.example.org", "A"), ("ipv4only.arpa", "AAAA"),
    ("4.3.2.1.in-addr.arpa", "PTR"),
    ("4.0.3.0.2.0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.b.9.f.f.4.6.0.0.ip6.arpa", "PTR"),
    (".", "NS"), (f"sample-service.default.svc.{Z}", "MAILB"), (f"sample-service.default.svc.{Z}", "TKEY"),
]

_RCODES = {wire.NOERROR, wire.FORMERR, wire.SERVFAIL, wire.NXDOMAIN, wire.NOTIMP, wire.REFUSED, wire.BADVERS}


# ---- the handlers under test --------------------------------------------------------------------------


class StubEngine:
    """A deterministic upstream for the real Recursor: answers by the first label, never touches a network.

    `fail*` raises (SERVFAIL), `nx*` is NXDOMAIN, `big*` A has 120 addresses (truncation), other A
    queries get 1.2.3.4, `v6*` AAAA gets 2001:db8::, everything else NODATA with an SOA (TTL 60,
    MINIMUM 5: negative TTL 5 s) so that AAAA goes through DNS64 synthesis. Names in `exists` have TXT.
    """

    def __init__(self) -> None:
        self.exists: set[bytes] = set()  # names that have (TXT) data now; others are NODATA for TXT

    async def lookup(self, qname: bytes, qtype: int, budget: Budget) -> Answer:
        budget.spend_query()
        if key(qname) in self.exists:
            return Answer(wire.NOERROR, (RR(qname, 16, CLASS_IN, 300, b"\x07created"),))
        first = key(qname[1 : 1 + qname[0]]) if qname[:1] != b"\x00" else b""
        soa = RR(b"\x00", SOA, CLASS_IN, 60, b"\x00\x00" + struct.pack("!IIIII", 1, 2, 3, 4, 5))
        if first.startswith(b"fail"):
            raise ResolveError("stub")
        if first.startswith(b"nx"):
            return Answer(wire.NXDOMAIN, (), (soa,))
        if qtype == A:
            count = 120 if first.startswith(b"big") else 1
            return Answer(wire.NOERROR, tuple(RR(qname, A, CLASS_IN, 300, bytes((1, 2, 3, 4 + i % 200)))
                                              for i in range(count)))
        if qtype == AAAA and first.startswith(b"v6"):
            return Answer(wire.NOERROR, (RR(qname, AAAA, CLASS_IN, 300, b"\x20\x01\x0d\xb8" + bytes(12)),))
        return Answer(wire.NOERROR, (), (soa,))


@dataclass
class Pair:
    """Two handlers over one zone: `fast` with the fast path on, `slow` with it off; plus what they allow."""

    name: str
    fast: Handler
    slow: Handler
    recursion: bool


def _config(recursion: bool) -> config_module.Config:
    options: dict[str, Any] = {
        "zone": Z, "source": f"file:{REPO / 'examples/cluster.yaml'}",
        "nameserver": ["ns1.c2.k8s.ooo=2001:db8:53::53"],
        "reverse_zone": ["2001:db8:42::/48", "2001:db8:43::/48", "10.96.0.0/16"],
        "recursion": "off",
        "dnssec_validation": False,  # the stub engine's answers are unsigned
    }
    if recursion:
        options.update({"recursion": "forward", "forwarder": ["127.0.0.1:9"]})  # never contacted: stub engine
    return config_module.from_mapping(options)


def _pair(recursion: bool, signed: bool = False) -> Pair:
    """Built as dnsd/app.py builds them: config, zone fed by the manifests source, recursor, handler.

    `signed`: the zones are signed (`--dnssec-keys`), so DO=1 queries get RRSIGs and NSEC3 proofs.
    """
    cfg = _config(recursion)
    zone = ZoneIndex(cfg)
    ManifestSource(REPO / "examples/cluster.yaml", zone).load()
    zone.mark_synced()
    recursor = None
    if recursion:
        recursor = Recursor(cfg)
        recursor.engine = StubEngine()  # type: ignore[assignment]
    fast = Handler(cfg, zone, QueryStats(), recursor)
    slow = Handler(cfg, zone, QueryStats(), recursor)
    slow.fast_path = False
    if signed:
        from dnsd.dnssec import keys
        from dnsd.dnssec.signer import Signer

        signer = Signer(zone, [keys.generate(apex.name, 15) for apex in zone.apexes])
        fast.signer = slow.signer = signer
        return Pair("signed", fast, slow, recursion)
    return Pair("recursion" if recursion else "authoritative", fast, slow, recursion)


@pytest.fixture(scope="module")
def pairs() -> list[Pair]:
    return [_pair(False), _pair(True), _pair(False, signed=True)]


# ---- checking one reply ---------------------------------------------------------------------------------


def _question_length(data: bytes) -> int | None:
    """Length of the (uncompressed) question at offset 12 of `data`, or None when it is not one."""
    offset = 12
    while offset < len(data):
        length = data[offset]
        if length == 0:
            end = offset + 1 + 4
            return end - 12 if end <= len(data) else None
        if length & 0xC0:
            return None
        offset += 1 + length
    return None


def _dnspython_reading(data: bytes) -> dns.message.Message | None:
    """dnspython's reading of a query (not UPDATE, which it reads as RFC 2136 sections), or None."""
    if len(data) < 12 or (data[2] >> 3) & 0xF == dns.opcode.UPDATE:
        return None
    try:
        message = dns.message.from_wire(data, ignore_trailing=True)
    except Exception:  # any dnspython complaint: not a well-formed query
        return None
    return None if message.flags & dns.flags.QR else message


def _one_question_query(message: dns.message.Message | None) -> dns.message.Message | None:
    """The query, when it is a well-formed one-question QUERY (else None)."""
    if message is None or message.opcode() != dns.opcode.QUERY or len(message.question) != 1:
        return None
    return message


def check_reply(data: bytes, reply: bytes | None, *, tcp: bool, may_recurse: bool, recursion: bool) -> None:
    """Everything a reply to `data` must satisfy, whatever `data` is."""
    if len(data) >= 3 and data[2] & 0x80:
        assert reply is None, "a message with QR set (a response) was answered: reflection risk"
    if reply is None:
        return
    assert isinstance(reply, bytes)
    assert len(data) >= 12, "a message shorter than a header was answered"
    readable = reply
    if (reply[2] >> 3) & 0xF == dns.opcode.UPDATE:
        # dnspython parses UPDATE replies as RFC 2136 messages (zone section must be SOA): read the NOTIMP
        # reply with the opcode bits cleared instead; every other byte is still checked
        readable = reply[:2] + bytes((reply[2] & 0x87,)) + reply[3:]
    try:
        parsed = dns.message.from_wire(readable)
    except Exception as exc:  # the assertion below reports it with the bytes
        raise AssertionError(f"dnspython cannot parse the reply: {exc!r}\nreply={reply.hex()}") from exc
    assert reply[:2] == data[:2], "reply ID differs from the query's"
    assert parsed.flags & dns.flags.QR, "reply without QR"
    assert (reply[2] >> 3) & 0xF == (data[2] >> 3) & 0xF, "opcode not echoed"
    rcode = parsed.rcode()
    assert rcode in _RCODES, f"unexpected rcode {rcode}"
    if rcode == wire.BADVERS:
        assert parsed.edns > 0 or parsed.opt is not None, "BADVERS without OPT"
    if parsed.flags & dns.flags.RA:
        assert may_recurse and recursion, "RA for a client that may not recurse"
    if not (may_recurse and recursion) and rcode in (wire.NOERROR, wire.NXDOMAIN):
        assert parsed.flags & dns.flags.AA, "a non-authoritative answer for a client that may not recurse"
    if parsed.flags & dns.flags.AA:
        assert rcode in (wire.NOERROR, wire.NXDOMAIN), "AA on an error"
    if parsed.flags & dns.flags.TC:
        assert not parsed.answer and not parsed.authority, "TC with records"
    if not tcp:
        assert len(reply) <= (1232 if parsed.opt is not None else 512), "UDP reply over the client's limit"
    qdcount = (reply[4] << 8) | reply[5]
    assert qdcount in (0, 1)
    if qdcount == 1:
        length = _question_length(reply)
        assert length is not None, "reply question is compressed or cut"
        assert reply[12 : 12 + length] == data[12 : 12 + length], "question not echoed exactly as asked"
    reading = _dnspython_reading(data)
    _check_error_opt(data, reading, parsed)
    query = _one_question_query(reading)
    if query is None:
        return
    if qdcount == 0 and rcode != wire.FORMERR:
        raise AssertionError("a well-formed one-question QUERY got a reply without its question")
    if query.edns > 0:
        assert rcode in (wire.BADVERS, wire.FORMERR), "EDNS version above 0 without BADVERS"
    # Only the question, one OPT and (last) a TSIG belong in a query; IXFR may carry its SOA as the one
    # authority record (RFC 1995 3). Anything else is a FORMERR, decided at the first record that does
    # not belong (an OPT in the answer or authority section included: RFC 6891 6.1.1).
    _, ancount, nscount, _ = struct.unpack_from("!HHHH", data, 4)  # the header's (dnspython merges duplicates)
    ixfr_soa = (query.question[0].rdtype == dns.rdatatype.IXFR and nscount == 1
                and query.authority[0].rdtype == dns.rdatatype.SOA)
    if ancount or (nscount and not ixfr_soa) or query.additional:
        assert rcode == wire.FORMERR, "a query holding records no query holds was answered"
    elif query.edns >= 0 and qdcount == 1:  # (a question dnsd could not read, e.g. compressed, has no OPT read)
        assert parsed.opt is not None, "a reply to an EDNS query without OPT (RFC 6891 7)"


def _check_error_opt(data: bytes, message: dns.message.Message | None, reply: dns.message.Message) -> None:
    """NOTIMP (other opcodes) and FORMERR for QDCOUNT != 1 carry an OPT when the query had one and
    dnsd's limits for finding it hold (a few records, a few questions)."""
    if message is None or message.opt is None:
        return
    records = sum(struct.unpack_from("!HHH", data, 6))  # the header's (dnspython merges duplicates)
    if message.opcode() != dns.opcode.QUERY:
        if reply.rcode() == wire.NOTIMP and len(message.question) <= 1 and records <= wire.MAX_NOTIMP_RECORDS:
            assert reply.opt is not None, "NOTIMP to an EDNS query without OPT"
    elif len(message.question) != 1 and len(message.question) <= wire.MAX_EXTRA_QUESTIONS \
            and not message.answer and not message.authority:
        assert reply.rcode() == wire.FORMERR, "QDCOUNT != 1 without FORMERR"
        assert reply.opt is not None, "FORMERR for QDCOUNT != 1 to an EDNS query without OPT"


# ---- running cases ----------------------------------------------------------------------------------------


@dataclass
class Counter:
    cases: int = 0
    answered: int = 0
    compared: int = 0
    fast_hits: int = 0


Reply = bytes | None | Awaitable[bytes | None]


async def _resolve(reply: Reply) -> bytes | None:
    if reply is None or isinstance(reply, bytes):
        return reply
    return await reply


async def run_case(pair: Pair, data: bytes, client: str, tcp: bool, counter: Counter) -> None:
    """One input through both handlers of a pair; checks the reply and that the two paths agree."""
    may_recurse = client == RECURSING_CLIENT
    try:
        fast_raw: Reply = pair.fast.fast(data, client, tcp)  # what respond() tries first
        if fast_raw is not None:
            counter.fast_hits += 1
        else:
            fast_raw = pair.fast.respond(data, client, tcp)
        slow_raw = pair.slow.respond(data, client, tcp)
        # recursion gives an awaitable (a task); a cached recursive answer on the fast path gives bytes
        both_bytes = isinstance(fast_raw, bytes | None) and isinstance(slow_raw, bytes | None)
        fast = await _resolve(fast_raw)
        slow = await _resolve(slow_raw)
    except Exception as exc:  # reported with the input that caused it
        raise AssertionError(f"{pair.name} handler raised {exc!r} for client={client} tcp={tcp} "
                             f"data={data.hex()}") from exc
    counter.cases += 1
    if both_bytes:
        assert fast == slow, (f"{pair.name}: fast and slow paths differ for client={client} tcp={tcp}\n"
                              f"data={data.hex()}\nfast={fast!r}\nslow={slow!r}")
        counter.compared += 1
    for reply in (fast,) if both_bytes else (fast, slow):
        try:
            check_reply(data, reply, tcp=tcp, may_recurse=may_recurse, recursion=pair.recursion)
        except AssertionError as exc:
            raise AssertionError(f"{pair.name} client={client} tcp={tcp}: {exc}\n"
                                 f"data={data.hex()}\nreply={reply.hex() if reply else reply}") from None
    if fast is not None:
        counter.answered += 1


async def run_input(pairs: list[Pair], data: bytes, rng: random.Random, counter: Counter) -> None:
    """One input, for every handler pair, from a recursing client and a non-recursing one."""
    tcp = rng.random() < 0.25
    other = OTHER_CLIENTS[rng.random() < 0.5]
    for pair in pairs:
        await run_case(pair, data, RECURSING_CLIENT, tcp, counter)
        await run_case(pair, data, other, tcp, counter)


# ---- seeds and mutations ----------------------------------------------------------------------------------


def seed_queries() -> list[bytes]:
    """Valid queries for every question, with several spellings and EDNS/flag variants."""
    out = []
    rng = random.Random(7)
    for name, qtype in QUESTIONS:
        spellings = [name, name.upper(), "".join(c.upper() if rng.random() < 0.5 else c for c in name)]
        for spelling in spellings:
            for edns, do, cd, rd, options in (
                (-1, False, False, True, []), (0, False, False, False, []), (0, True, True, True, []),
                (0, False, False, True, [dns.edns.GenericOption(10, b"\x01" * 8)]),  # a client cookie
                (0, False, False, True, [dns.edns.GenericOption(12, b"\x00" * 40)]),  # padding
                (1, False, False, True, []),  # BADVERS
            ):
                message = dns.message.make_query(spelling, qtype, use_edns=edns, want_dnssec=do,
                                                 options=options, payload=rng.choice([512, 1232, 4096, 100]))
                if cd:
                    message.flags |= dns.flags.CD
                if not rd:
                    message.flags &= ~dns.flags.RD
                out.append(message.to_wire())
    return out


def _plant_pointer(data: bytearray, rng: random.Random) -> None:
    """Replace a byte inside the question name by a compression pointer (loops, forward and self refs)."""
    end = data.find(0, 12)
    at = rng.randrange(12, end + 1 if end > 12 else 13) if len(data) > 13 else 12
    target = rng.choice([at, 12, at - 1, at + 2, rng.randrange(0, 0x4000), 0])
    pointer = struct.pack("!H", 0xC000 | (target & 0x3FFF))
    data[at : at + 2] = pointer


def mutate(seeds: list[bytes], rng: random.Random) -> bytes:
    """A seeded mutation of one seed: 1 to 4 operators stacked."""
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(15)
        size = len(data)
        if op == 0 and size:  # bit flips
            for _ in range(rng.randint(1, 3)):
                i = rng.randrange(size)
                data[i] ^= 1 << rng.randrange(8)
        elif op == 1 and size:  # a random byte
            data[rng.randrange(size)] = rng.randrange(256)
        elif op == 2:  # truncation
            del data[rng.randrange(size + 1):]
        elif op == 3:  # insertion
            at = rng.randrange(size + 1)
            data[at:at] = rng.randbytes(rng.randint(1, 8))
        elif op == 4 and size:  # deletion
            at = rng.randrange(size)
            del data[at : at + rng.randint(1, 8)]
        elif op == 5:  # splice with another seed
            other = rng.choice(seeds)
            data = data[: rng.randrange(size + 1)] + other[rng.randrange(len(other) + 1):]
        elif op == 6 and size >= 12:  # counts that lie
            field_at = rng.choice([4, 6, 8, 10])
            data[field_at : field_at + 2] = struct.pack("!H", rng.choice([0, 1, 2, 3, 0xFF, 0xFFFF]))
        elif op == 7:  # trailing junk
            data += rng.randbytes(rng.randint(1, 40))
        elif op == 8 and size >= 14:  # compression pointer in the question, often a loop
            _plant_pointer(data, rng)
        elif op == 9 and size >= 13:  # a label length that is too long, an extended label type, or 63
            end = data.find(0, 12)
            if end > 12:
                data[12] = rng.choice([63, 64, 0x40 | rng.randrange(64), 0x80 | rng.randrange(64), 255])
        elif op == 10 and size >= 12:  # opcode / flags
            data[2] = rng.randrange(256) & 0x7F  # mostly queries: QR stays clear
            data[3] = rng.randrange(256)
        elif op == 11:  # a second OPT record, or a non-root one
            data += b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00" if rng.random() < 0.5 else \
                b"\xc0\x0c\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
            if size >= 12:
                data[10:12] = struct.pack("!H", (((data[10] << 8) | data[11]) + 1) & 0xFFFF)
        elif op == 12 and size >= 12:  # QR set: must be dropped
            data[2] |= 0x80
        elif op == 13 and size >= 12:  # records stuffed into a section, counts kept true (an OPT among them)
            data = _stuff(data, rng)
        elif op == 14 and size >= 12:  # a TSIG-shaped record: last (where it may be) or before the OPT
            tsig = b"\x03key\x00\x00\xfa\x00\xff\x00\x00\x00\x00" + struct.pack("!H", 8) + rng.randbytes(8)
            if rng.random() < 0.5:
                data += tsig
            else:
                end = data.find(0, 12)
                at = end + 5 if end >= 12 and end + 5 <= size else size
                data[at:at] = tsig
            data[10:12] = struct.pack("!H", (((data[10] << 8) | data[11]) + 1) & 0xFFFF)
    return bytes(data)


_STUFFING = (
    b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc0\x00\x02\x01",  # an A record at the qname
    b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00",  # an OPT (belongs only in the additional section)
    b"\xc0\x0c\x00\x06\x00\x01\x00\x00\x00\x00\x00\x16\x00\x00" + bytes(20),  # an SOA (IXFR's authority)
)


def _stuff(data: bytearray, rng: random.Random) -> bytearray:
    """Insert 1 to 3000 well-formed records after the question, counted in the answer, authority or
    additional section: parsed in full, a 64 KB one cost 50 ms; the parser must refuse it unread."""
    end = data.find(0, 12)
    if end < 12 or end + 5 > len(data):
        return data
    # mostly a few (dnspython, the checker, takes ~10 us a record); now and then thousands
    count = rng.randint(1000, 3000) if rng.random() < 0.01 else rng.choice([1, 1, 2, 3, rng.randint(4, 20)])
    record = rng.choice(_STUFFING)
    section = rng.choice([6, 8, 10])
    at = end + 5
    data[at:at] = record * count
    data[section : section + 2] = struct.pack("!H", (((data[section] << 8) | data[section + 1]) + count) & 0xFFFF)
    return data[:65000]  # still a datagram (65,507 bytes at most over IPv4)


def random_structured(rng: random.Random) -> bytes:
    """A query built field by field from a seeded generator (the bulk companion of the Hypothesis test)."""
    labels = []
    for _ in range(rng.randint(0, 6)):
        kind = rng.random()
        if kind < 0.5:
            labels.append(rng.choice([b"sample-service", b"default", b"svc", b"c2", b"k8s", b"ooo", b"shop", b"db"]))
        elif kind < 0.8:
            labels.append(rng.randbytes(rng.randint(1, 20)))
        else:
            labels.append(rng.randbytes(rng.choice([62, 63, 64])))
    name = b"".join(bytes((len(label) & 0xFF,)) + label for label in labels)
    name += b"\x00" if rng.random() < 0.9 else struct.pack("!H", 0xC000 | rng.randrange(64))
    qtype = rng.choice([1, 28, 33, 12, 2, 6, 16, 5, 255, 252, 251, 41, 0, 65535, 250, 128, 253, 254,
                        rng.randrange(65536)])
    qclass = rng.choice([1, 1, 1, 3, 254, 255, 0, rng.randrange(65536)])
    flags = rng.randrange(0x10000) & ~0x8000 if rng.random() < 0.5 else rng.choice([0x0100, 0x0000, 0x0110, 0x0120])
    question = name + struct.pack("!HH", qtype, qclass)
    records = b""
    ar = 0
    if rng.random() < 0.6:
        options = b""
        for _ in range(rng.randint(0, 3)):
            body = rng.randbytes(rng.randint(0, 12))
            length = len(body) if rng.random() < 0.8 else rng.randrange(65536)
            options += struct.pack("!HH", rng.randrange(65536), length) + body
        version = 0 if rng.random() < 0.8 else rng.randrange(1, 256)
        ttl = (rng.randrange(256) << 24 if rng.random() < 0.2 else 0) | (version << 16) | rng.choice([0, 0x8000])
        records += b"\x00" + struct.pack("!HHIH", 41, rng.choice([0, 512, 1232, 4096, 65535]), ttl, len(options))
        records += options
        ar = 1
    counts = [1, 0, 0, ar]
    if rng.random() < 0.3:
        counts = [rng.choice([0, 1, 2, 0xFFFF]) for _ in range(4)]
    header = struct.pack("!HHHHHH", rng.randrange(65536), flags, *counts)
    junk = rng.randbytes(rng.randint(1, 30)) if rng.random() < 0.1 else b""
    return header + question + records + junk


def respell(seeds: list[bytes], rng: random.Random) -> bytes:
    """A valid seed with a new ID and the case of its name's letters shuffled: a fast-path hit once stored."""
    data = bytearray(rng.choice(seeds))
    data[0:2] = rng.randbytes(2)
    end = data.find(0, 12)
    for i in range(13, end):
        if 0x61 <= (data[i] | 0x20) <= 0x7A and rng.random() < 0.3:
            data[i] ^= 0x20
    return bytes(data)


def fuzz_inputs(rng: random.Random, count: int) -> Iterator[bytes]:
    """`count` inputs: the seeds themselves first, then mostly mutations, some structured queries, and
    some respelled seeds (so that the fast path answers often enough for the comparison to mean something)."""
    seeds = seed_queries()
    yield from seeds
    for _ in range(count - len(seeds)):
        choice = rng.random()
        yield mutate(seeds, rng) if choice < 0.75 else random_structured(rng) if choice < 0.9 else respell(seeds, rng)


# ---- the handler-level tests -------------------------------------------------------------------------------


def test_handler_survives_100k_mutated_and_structured_queries(pairs: list[Pair]) -> None:
    rng = random.Random(20240601)
    counter = Counter()
    inputs_needed = MIN_CASES // (2 * len(pairs)) + 1
    started = time.monotonic()

    async def run() -> None:
        for data in fuzz_inputs(rng, inputs_needed):
            await run_input(pairs, data, rng, counter)

    asyncio.run(run())
    elapsed = time.monotonic() - started
    assert counter.cases >= MIN_CASES, counter
    assert counter.answered > counter.cases // 4, f"too few answered: the mutations are too destructive {counter}"
    assert counter.compared > counter.cases // 2, counter
    # the fast path was really exercised, not just compared on misses
    assert sum(p.fast.cached_responses for p in pairs) > 100
    assert counter.fast_hits > counter.cases // 20, counter
    print(f"{counter.cases} handler cases in {elapsed:.1f} s ({counter.answered} answered, "
          f"{counter.compared} fast/slow comparisons, {counter.fast_hits} fast-path hits)")


def test_cached_negative_recursive_answer_lapses_with_its_negative_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the fuzzer's fast/slow comparison after the run had lasted more than 5 seconds.

    The recursor caches a NODATA for min(SOA TTL, SOA MINIMUM) (RFC 2308 5) and asks again after that;
    the handler's fast path stores the first reply for its shortest record TTL. That reply's SOA TTL
    was the upstream's, uncapped (`Recursor._lookup` returned the engine's answer, not the capped one
    it put in the cache), so for SOA TTL 60 / MINIMUM 5 the fast path served the stale NODATA for 60 s
    while the slow path (the reference) had the new data after 5 s. Kept as a regression test.
    """
    pair = _pair(True)
    clock = [1000.0]
    recursor = pair.fast.recursor
    assert isinstance(recursor, Recursor)
    recursor.cache.clock = lambda: clock[0]
    monkeypatch.setattr("dnsd.handler.time", SimpleNamespace(monotonic=lambda: clock[0],
                                                             perf_counter=time.perf_counter))
    engine = recursor.engine
    assert isinstance(engine, StubEngine)
    query = dns.message.make_query("later.example.test", "TXT").to_wire()

    async def run() -> tuple[bytes | None, bytes | None]:
        first = await _resolve(pair.fast.respond(query, RECURSING_CLIENT, False))
        assert first is not None and dns.message.from_wire(first).answer == []  # NODATA
        assert pair.fast.fast(query, RECURSING_CLIENT, False) is not None  # kept for the fast path
        engine.exists.add(b"\x05later\x07example\x04test\x00")  # the name gets data upstream
        clock[0] += 10  # past the negative TTL (5 s), inside the SOA record's TTL (60 s)
        slow = await _resolve(pair.slow.respond(query, RECURSING_CLIENT, False))
        fast = await _resolve(pair.fast.respond(query, RECURSING_CLIENT, False))
        return fast, slow

    fast, slow = asyncio.run(run())
    assert slow is not None and [r.to_text() for r in dns.message.from_wire(slow).answer] == [
        'later.example.test. 300 IN TXT "created"']
    assert fast == slow


_LABEL = st.one_of(
    st.sampled_from([b"sample-service", b"default", b"svc", b"c2", b"k8s", b"ooo", b"_tcp", b"_http", b"SVC", b"*"]),
    st.binary(min_size=0, max_size=70),
)


@st.composite
def structured_query(draw: st.DrawFn) -> bytes:
    """A query assembled from independently drawn (often inconsistent) fields."""
    labels = draw(st.lists(_LABEL, max_size=8))
    name = b"".join(bytes((len(label) & 0xFF,)) + label for label in labels)
    ending = draw(st.sampled_from(["root", "root", "root", "pointer", "none"]))
    if ending == "root":
        name += b"\x00"
    elif ending == "pointer":
        name += struct.pack("!H", 0xC000 | draw(st.integers(0, 0x3FFF)))
    qtype = draw(st.one_of(st.sampled_from([1, 28, 33, 12, 6, 2, 16, 5, 255, 252, 41, 253, 0, 65535]),
                           st.integers(0, 65535)))
    qclass = draw(st.one_of(st.sampled_from([1, 255, 254, 3]), st.integers(0, 65535)))
    opcode = draw(st.one_of(st.just(0), st.integers(0, 15)))
    flags = (opcode << 11) | draw(st.integers(0, 0x07FF))
    if draw(st.booleans()) and draw(st.booleans()) and draw(st.booleans()):
        flags |= 0x8000  # a response
    records = []
    for _ in range(draw(st.integers(0, 2))):  # answer/authority-like records, names often pointers
        owner = draw(st.sampled_from([b"\x00", b"\xc0\x0c", b"\xc0\x00", b"\x01a\x00", b"\xc0\xff"]))
        rdata = draw(st.binary(max_size=20))
        records.append(owner + struct.pack("!HHIH", draw(st.integers(0, 65535)), 1, 0,
                                           draw(st.one_of(st.just(len(rdata)), st.integers(0, 65535)))) + rdata)
    opt = b""
    if draw(st.booleans()):
        options = b""
        for code, body in draw(st.lists(st.tuples(st.integers(0, 65535), st.binary(max_size=16)), max_size=3)):
            length = draw(st.one_of(st.just(len(body)), st.integers(0, 65535)))
            options += struct.pack("!HH", code, length) + body
        ttl = (draw(st.integers(0, 255)) << 24 | draw(st.one_of(st.just(0), st.integers(0, 255))) << 16
               | draw(st.sampled_from([0, 0x8000])) | draw(st.integers(0, 0x7FFF)))
        owner = draw(st.sampled_from([b"\x00", b"\x00", b"\xc0\x0c", b"\x01x\x00"]))
        rdlength = draw(st.one_of(st.just(len(options)), st.integers(0, 65535)))
        opt = owner + struct.pack("!HHIH", 41, draw(st.integers(0, 65535)), ttl, rdlength) + options
    ar = len(records) + (1 if opt else 0)
    counts = draw(st.one_of(st.just((1, 0, 0, ar)), st.just((1, len(records), 0, 1 if opt else 0)),
                            st.just((1, 0, len(records), 1 if opt else 0)),
                            st.tuples(*[st.integers(0, 65535)] * 4)))
    header = struct.pack("!HHHHHH", draw(st.integers(0, 65535)), flags, *counts)
    junk = draw(st.one_of(st.just(b""), st.binary(max_size=30)))
    return header + name + struct.pack("!HH", qtype, qclass) + b"".join(records) + opt + junk


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One event loop for all Hypothesis examples (a loop per example would cost more than the example)."""
    event_loop = asyncio.new_event_loop()
    yield event_loop
    event_loop.close()


@settings(max_examples=2500, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(data=structured_query(), tcp=st.booleans(), other=st.sampled_from(OTHER_CLIENTS))
def test_handler_survives_structured_queries(pairs: list[Pair], loop: asyncio.AbstractEventLoop, data: bytes,
                                             tcp: bool, other: str) -> None:
    """Hypothesis-built queries (four cases each: two handler pairs, two clients); shrinks to a minimal input."""
    async def run() -> None:
        counter = Counter()
        for pair in pairs:
            await run_case(pair, data, RECURSING_CLIENT, tcp, counter)
            await run_case(pair, data, other, tcp, counter)

    loop.run_until_complete(run())


def _query(counts: tuple[int, int, int, int], *sections: bytes, opcode: int = 0, qtype: str = "SOA") -> bytes:
    question = dns.message.make_query(Z, qtype, use_edns=False).to_wire()[12:]
    return struct.pack("!HHHHHH", 0x0101, opcode << 11, *counts) + question + b"".join(sections)


_OPT = b"\x00\x00\x29\x04\xd0\x00\x00\x80\x00\x00\x00"  # DO set
_TSIG = b"\x03key\x00\x00\xfa\x00\xff\x00\x00\x00\x00\x00\x08" + bytes(8)
_A = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc0\x00\x02\x01"
_SOA_RR = b"\xc0\x0c\x00\x06\x00\x01\x00\x00\x00\x00\x00\x16\x00\x00" + bytes(20)


@pytest.mark.parametrize(("data", "error", "edns"), [
    (_query((1, 0, 0, 1), _OPT), None, True),
    (_query((1, 0, 0, 2), _OPT, _TSIG), None, True),  # TSIG last: room for transfers
    (_query((1, 0, 0, 1), _TSIG), None, False),
    (_query((1, 0, 0, 2), _TSIG, _OPT), wire.FORMERR, False),  # TSIG not last
    (_query((1, 0, 0, 2), _OPT, _OPT), wire.FORMERR, True),  # a second OPT
    (_query((1, 0, 0, 2), _OPT, _A), wire.FORMERR, True),  # a record no query holds
    (_query((1, 0, 0, 3), _OPT, _TSIG, _TSIG), wire.FORMERR, False),  # decided from the counts
    (_query((1, 1, 0, 0), _OPT), wire.FORMERR, False),  # OPT in the answer section
    (_query((1, 0, 1, 0), _OPT), wire.FORMERR, False),  # OPT in the authority section
    (_query((1, 0, 1, 1), _SOA_RR, _OPT, qtype="IXFR"), None, True),  # IXFR's SOA
    (_query((1, 0, 1, 1), _A, _OPT, qtype="IXFR"), wire.FORMERR, False),  # not an SOA
    (_query((1, 0, 2, 1), _SOA_RR, _SOA_RR, _OPT, qtype="IXFR"), wire.FORMERR, False),
    (_query((1, 0, 1, 1), _SOA_RR, _OPT), wire.FORMERR, False),  # an SOA in a query that is not IXFR
    (_query((1, 0, 0, 1), _OPT, opcode=4), wire.NOTIMP, True),  # NOTIFY: the OPT is echoed
    (_query((1, 1, 0, 1), _SOA_RR, _OPT, opcode=4), wire.NOTIMP, True),  # NOTIFY with its SOA
    (_query((1, 0, 0, 9), *[_A] * 8, _OPT, opcode=4), wire.NOTIMP, False),  # too many to walk
    (struct.pack("!HHHHHH", 1, 0, 0, 0, 0, 1) + _OPT, wire.FORMERR, True),  # QDCOUNT 0
    (_query((2, 0, 0, 1), dns.message.make_query(Z, "A").to_wire()[12:], _OPT), wire.FORMERR, True),
])
def test_query_parser_reads_only_what_a_query_may_hold(data: bytes, error: int | None, edns: bool) -> None:
    query = wire.parse_query(data)
    assert query.error == error
    assert query.edns == edns
    if edns and error in (wire.NOTIMP, wire.FORMERR):
        assert query.edns_do  # the OPT's flags are read for the echo
        reply = wire.encode_error(query, error, False, 1232)
        assert dns.message.from_wire(reply[:2] + bytes((reply[2] & 0x87,)) + reply[3:]).edns == 0


def test_query_parser_refuses_stuffed_queries_without_walking_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """64 KB of records in any section: FORMERR after reading the question alone (the old parser walked
    all 4,000 records, 50 ms a query). Counted with a spy on the name reader, not with a clock."""
    calls = []
    real = wire.read_name

    def counting(data: bytes, offset: int, allow_pointers: bool) -> tuple[bytes, int]:
        calls.append(offset)
        return real(data, offset, allow_pointers)

    monkeypatch.setattr(wire, "read_name", counting)
    for counts in ((1, 4000, 0, 0), (1, 0, 4000, 0), (1, 0, 0, 4000), (1, 2000, 2000, 0)):
        calls.clear()
        query = wire.parse_query(_query(counts, _A * 4000))
        assert query.error == wire.FORMERR and query.has_question
        assert len(calls) == 1, counts  # the question's name, nothing else


def _upstream_seeds() -> list[bytes]:
    """Valid responses of every type whose rdata holds names (compressed by dnspython), plus A/AAAA/TXT."""
    out = []
    for rtype, rdatas in (("A", ["1.2.3.4", "5.6.7.8"]), ("AAAA", ["2001:db8::1"]), ("CNAME", ["b.example."]),
                          ("DNAME", ["x.example."]), ("NS", ["ns.example."]), ("MX", ["10 mx.example."]),
                          ("SRV", ["0 1 2 t.example."]), ("TXT", ['"hi"']), ("PTR", ["p.example."]),
                          ("SOA", ["ns.example. h.example. 1 2 3 4 5"])):
        query = dns.message.make_query("a.example.", rtype)
        response = dns.message.make_response(query)
        response.answer.append(dns.rrset.from_text("a.example.", 60, "IN", rtype, *rdatas))
        response.authority.append(dns.rrset.from_text("example.", 60, "IN", "SOA", "ns.example. h.example. 1 2 3 4 5"))
        response.additional.append(dns.rrset.from_text("ns.example.", 60, "IN", "A", "1.2.3.4"))
        out.append(response.to_wire())
    return out


def test_upstream_response_parser_raises_only_message_error() -> None:
    """Upstream responses are untrusted input too: 60,000 mutated ones through the recursor's parser and
    chain follower. Anything but MessageError/ResolveError would escape a datagram callback (a traceback
    in the log and a query left waiting) or cost a SERVFAIL with a traceback via the handler."""
    rng = random.Random(1035)
    seeds = _upstream_seeds()
    parsed = 0
    for _ in range(60_000):
        data = mutate(seeds, rng)
        try:
            response = message.parse(data)
            follow(response.answer, response.qname or b"\x00", response.qtype)
            parsed += 1
        except (message.MessageError, ResolveError):
            continue
        except Exception as exc:
            raise AssertionError(f"{exc!r} for upstream response {data.hex()}") from exc
    assert parsed > 3000  # most mutations keep the message readable: the later stages ran too


# ---- DNSSEC records ----------------------------------------------------------------------------------------

def _dnssec_seeds() -> tuple[dict[int, list[bytes]], Any]:
    """Valid rdata of each DNSSEC type (made by dnspython) and a signed zone to validate against."""
    import dns.dnssec
    import dns.name
    import dns.rdata
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    key = dns.dnssec.make_dnskey(private.public_key(), 13, flags=257)
    origin = dns.name.from_text("example.")
    a = dns.rrset.from_text("www.example.", 300, "IN", "A", "192.0.2.1")
    keys = dns.rrset.from_text("example.", 300, "IN", "DNSKEY", key.to_text())
    nsec = dns.rrset.from_text("example.", 300, "IN", "NSEC", "www.example. NS SOA RRSIG NSEC DNSKEY")
    signatures = {name: dns.dnssec.sign(rrset, private, origin, key, lifetime=3600)
                  for name, rrset in (("a", a), ("keys", keys), ("nsec", nsec))}
    seeds: dict[int, list[bytes]] = {
        48: [key.to_wire()],
        46: [s.to_wire() for s in signatures.values()],
        43: [dns.dnssec.make_ds(origin, key, "SHA256").to_wire(), dns.dnssec.make_ds(origin, key, "SHA384").to_wire()],
        47: [nsec[0].to_wire()],
        50: [dns.rdata.from_text("IN", "NSEC3", "1 1 12 aabbccdd 2t7b4g4vsa5smi47k61mv5bv1a22bojr A RRSIG").to_wire()],
        51: [dns.rdata.from_text("IN", "NSEC3PARAM", "1 0 12 aabbccdd").to_wire()],
    }
    zone = SimpleNamespace(a=a, keys=keys, nsec=nsec, signatures=signatures, key=key)
    return seeds, zone


def test_dnssec_record_parsers_and_validator_survive_mutations() -> None:
    """20,000 mutated DNSSEC rdata through the parsers and the canonical form, and 1,500 signed answers
    with mutated signatures and proofs through the validator: only FormatError, or a bogus verdict."""
    from dnsd.dnssec import canonical, records
    from dnsd.recursor import validator

    rng = random.Random(4034)
    seeds, zone = _dnssec_seeds()
    parsers = {48: records.dnskey, 46: records.rrsig, 43: records.ds, 47: records.nsec, 50: records.nsec3,
               51: records.nsec3param}
    parsed = 0
    for _ in range(20_000):
        rtype = rng.choice(list(parsers))
        data = mutate(seeds[rtype], rng)
        for name, parse in ((rtype, parsers[rtype]), (rtype, lambda d, t=rtype: canonical.canonical_rdata(t, d)),
                            (rtype, lambda d: canonical.canonical_rdata(rng.choice([2, 6, 15, 33, 35, 46]), d))):
            try:
                parse(data)
                parsed += 1
            except records.FormatError:
                continue
            except Exception as exc:
                raise AssertionError(f"{exc!r} for type {name} rdata {data.hex()}") from exc
    assert parsed > 10_000

    def rr(rrset: dns.rrset.RRset, rdata: bytes, rtype: int = 0) -> RR:
        return RR(rrset.name.to_wire(), rtype or rrset.rdtype, CLASS_IN, rrset.ttl, rdata)

    keys_answer = Answer(0, (rr(zone.keys, zone.keys[0].to_wire()),
                             rr(zone.keys, zone.signatures["keys"].to_wire(), 46)))

    async def fetch(name: bytes, qtype: int) -> Answer:
        if qtype == 48:
            return keys_answer
        raise ResolveError("unreachable")

    anchor = validator.Anchor(zone.keys.name.to_wire(), (), (zone.key.to_wire(),))
    loop = asyncio.new_event_loop()
    states = {validator.SECURE: 0, validator.BOGUS: 0, validator.INSECURE: 0}
    try:
        good = Answer(0, (rr(zone.a, zone.a[0].to_wire()), rr(zone.a, zone.signatures["a"].to_wire(), 46)))
        v = validator.Validator([anchor], [], fetch)
        assert loop.run_until_complete(v.validate(zone.a.name.to_wire(), 1, good)).security == validator.SECURE
        for _ in range(1500):
            answer = Answer(0, (rr(zone.a, zone.a[0].to_wire()), rr(zone.a, mutate(seeds[46], rng), 46)),
                            (rr(zone.nsec, mutate(seeds[47], rng)), rr(zone.nsec, mutate(seeds[46], rng), 46)))
            if rng.random() < 0.3:
                answer = Answer(rng.choice([0, 3]), (), answer.authority)
            try:
                judged = loop.run_until_complete(v.validate(zone.a.name.to_wire(), rng.choice([1, 16, 43]), answer))
            except Exception as exc:
                raise AssertionError(f"{exc!r} for {answer}") from exc
            states[judged.security] += 1
    finally:
        loop.close()
    assert states[validator.BOGUS] > 1000


# ---- the process level ------------------------------------------------------------------------------------

GOOD_NAME = f"sample-service.default.svc.{Z}"
GOOD_ADDRESS = "2001:db8:42::10"


def _assert_still_serving(proc: DnsdProcess) -> None:
    """A good query over UDP and TCP, on every listener, gets the right answer; the log has no traceback."""
    assert proc.proc is not None and proc.proc.poll() is None, f"dnsd exited:\n{proc.output()}"
    for host, port in proc.bound:
        for tcp in (False, True):
            reply = proc.query(GOOD_NAME, "AAAA", tcp=tcp, host=host, port=port)
            assert reply.rcode() == dns.rcode.NOERROR
            assert rdata_texts(reply, "AAAA") == [GOOD_ADDRESS]
    assert "Traceback" not in proc.output(), proc.output()


def _check_datagram_reply(reply: bytes) -> None:
    """What can be checked of a reply without knowing which datagram it answers."""
    assert len(reply) >= 12 and reply[2] & 0x80, reply.hex()
    if (reply[2] >> 3) & 0xF == dns.opcode.UPDATE:
        reply = reply[:2] + bytes((reply[2] & 0x87,)) + reply[3:]
    dns.message.from_wire(reply)
    assert len(reply) <= 1232


def _udp_corpus(rng: random.Random, count: int) -> list[bytes]:
    seeds = seed_queries()
    out: list[bytes] = [b"", b"\x00", bytes(11), bytes(12), rng.randbytes(65000), rng.randbytes(4096)]
    while len(out) < count:
        choice = rng.random()
        if choice < 0.6:
            out.append(mutate(seeds, rng))
        elif choice < 0.8:
            out.append(random_structured(rng))
        else:
            out.append(rng.randbytes(rng.randint(0, 600)))
    return out


def test_process_survives_random_and_mutated_datagrams(example_dnsd: DnsdProcess) -> None:
    """Thousands of hostile datagrams on every listener, in bounded bursts; dnsd keeps answering correctly."""
    rng = random.Random(5353)
    corpus = _udp_corpus(rng, 3000)
    replies = 0
    for host, port in example_dnsd.bound:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.connect((host, port))
            for start in range(0, len(corpus), 100):  # bursts of 100, drained before the next: bounded load
                for data in corpus[start : start + 100]:
                    sock.send(data)
                sock.settimeout(0.2)
                while True:
                    try:
                        reply = sock.recv(65535)
                    except TimeoutError:
                        break
                    _check_datagram_reply(reply)
                    replies += 1
                    sock.settimeout(0.03)
    assert replies > len(corpus) // 2  # most mutations still look like queries and get some answer
    _assert_still_serving(example_dnsd)


def _frame(message: bytes) -> bytes:
    return struct.pack("!H", len(message)) + message


def _good_query() -> dns.message.Message:
    query = dns.message.make_query(GOOD_NAME, "AAAA")
    query.flags &= ~dns.flags.RD
    return query


def _read_frames_until(sock: socket.socket, ident: int, deadline: float) -> list[bytes]:
    """Read length-prefixed replies until one has ID `ident`; returns them all (fails on close or timeout)."""
    buffer = b""
    frames: list[bytes] = []
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65537)
        assert chunk, f"dnsd closed the connection before answering; got {len(frames)} replies"
        buffer += chunk
        while len(buffer) >= 2 and len(buffer) >= 2 + ((buffer[0] << 8) | buffer[1]):
            length = (buffer[0] << 8) | buffer[1]
            frames.append(buffer[2 : 2 + length])
            buffer = buffer[2 + length :]
            if frames[-1][:2] == struct.pack("!H", ident):
                return frames
    raise AssertionError(f"no reply with ID {ident} over TCP in time; got {len(frames)} replies")


def _connect(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(3)
    sock.connect((host, port))
    return sock


def test_process_survives_abusive_tcp(example_dnsd: DnsdProcess) -> None:
    """Garbage length prefixes, half-sent frames, resets mid-frame, garbage frames amid good ones."""
    rng = random.Random(853)
    host, port = example_dnsd.bound[0]
    seeds = seed_queries()

    # connections that end mid-frame, in every way: half a length prefix, a prefix promising more than
    # comes, a huge prefix, a reset (RST) instead of a close; the server must just forget them
    for i in range(120):
        with _connect(host, port) as sock:
            kind = i % 6
            if kind == 0:
                sock.sendall(b"\x00")
            elif kind == 1:
                sock.sendall(b"\x00\x40" + rng.randbytes(20))
            elif kind == 2:
                sock.sendall(b"\xff\xff" + rng.randbytes(rng.randint(0, 2000)))
            elif kind == 3:
                sock.sendall(_frame(rng.choice(seeds))[: rng.randint(1, 20)])
            elif kind == 4:
                sock.sendall(rng.randbytes(rng.randint(1, 3000)))
            else:
                sock.sendall(b"\x01\x00" + rng.randbytes(30))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST

    # one connection: garbage frames (empty, random, mutated, a response) then a good query, pipelined;
    # framing is intact, so the good query must be answered on the same connection
    good = _good_query()
    garbage = [b"", b"\x00" * 3, rng.randbytes(12), rng.randbytes(500)]
    garbage += [mutate(seeds, rng) for _ in range(200)]
    garbage.append(dns.message.make_response(good).to_wire())  # a response: dropped, never answered
    with _connect(host, port) as sock:
        sock.sendall(b"".join(_frame(g) for g in garbage) + _frame(good.to_wire()))
        frames = _read_frames_until(sock, good.id, time.monotonic() + 5)
    for reply in frames:
        _check_datagram_reply(reply) if len(reply) <= 1232 else dns.message.from_wire(reply)
    answer = dns.message.from_wire(frames[-1])
    assert rdata_texts(answer, "AAAA") == [GOOD_ADDRESS]

    # a good query dribbled one byte at a time, then a second one in the same segment as the first's tail
    second = _good_query()
    with _connect(host, port) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        framed = _frame(good.to_wire())
        for byte in framed[:-1]:
            sock.sendall(bytes((byte,)))
            time.sleep(0.002)
        sock.sendall(framed[-1:] + _frame(second.to_wire()))
        frames = _read_frames_until(sock, second.id, time.monotonic() + 5)
        assert {f[:2] for f in frames} == {struct.pack("!H", good.id), struct.pack("!H", second.id)}

    # a query followed by a half-close: the answer still arrives
    with _connect(host, port) as sock:
        sock.sendall(_frame(good.to_wire()))
        sock.shutdown(socket.SHUT_WR)
        frames = _read_frames_until(sock, good.id, time.monotonic() + 5)

    _assert_still_serving(example_dnsd)


# ---- zone transfers: TSIG, IXFR and NOTIFY parsers ------------------------------------------------------

_XFR_SECRET = "Pxe+vv4RWMid8BWM4Se1mLq0jZsbAAmluBFjzCMtYJ8="  # noqa: S105  # a test key


def _transfer_handler() -> Handler:
    """A handler as dnsd/app.py builds it with --transfer-allow 0.0.0.0/0=xfr-key and the key loaded."""
    from dnsd import tsig, xfr

    cfg = config_module.from_mapping({
        "zone": Z, "source": f"file:{REPO / 'examples/cluster.yaml'}", "recursion": "off",
        "reverse_zone": ["2001:db8:42::/48"], "transfer_allow": ["0.0.0.0/0=xfr-key", "::/0"],
    })
    zone = ZoneIndex(cfg)
    ManifestSource(REPO / "examples/cluster.yaml", zone).load()
    zone.mark_synced()
    handler = Handler(cfg, zone, QueryStats(), None)
    keys = {k.name: k for k in tsig.parse_key_text(
        f'key "xfr-key" {{ algorithm hmac-sha256; secret "{_XFR_SECRET}"; }};', "test")}
    handler.transfers = xfr.Transfers(cfg, zone, keys)
    return handler


def _transfer_seeds() -> list[bytes]:
    import dns.tsigkeyring

    ring = dns.tsigkeyring.from_text({"xfr-key": ("hmac-sha256", _XFR_SECRET)})
    seeds = []
    for qname, rdtype in ((Z, "AXFR"), (Z, "IXFR"), (Z, "SOA"), ("2.4.0.0.8.b.d.0.1.0.0.2.ip6.arpa", "AXFR"),
                          (f"frontend.shop.svc.{Z}", "A")):
        for sign in (False, True):
            query = dns.message.make_query(qname, rdtype, use_edns=rdtype == "SOA")
            if rdtype == "IXFR":
                query.authority.append(dns.rrset.from_text(f"{Z}.", 0, "IN", "SOA", f"ns1.{Z}. h.{Z}. 5 1 1 1 1"))
            if sign:
                query.use_tsig(ring, "xfr-key")
            seeds.append(query.to_wire())
    notify = dns.message.make_query(Z, "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    seeds.append(notify.to_wire())
    return seeds


def test_transfer_tsig_and_ixfr_parsers_survive_mutations() -> None:
    """Mutated AXFR/IXFR/NOTIFY/signed queries: `tsig.find` raises only ValueError, the IXFR serial reader
    never raises, and the handler answers each with well-formed messages (every message of a stream too)."""
    from dnsd import tsig, xfr

    handler = _transfer_handler()
    seeds = _transfer_seeds()
    rng = random.Random(8945)

    async def drain(reply: Any) -> list[bytes]:
        if reply is None or isinstance(reply, bytes):
            return [] if reply is None else [reply]
        if hasattr(reply, "__aiter__"):
            return [message async for message in reply]
        result = await reply
        return [] if result is None else [result]

    async def run() -> int:
        cases = 0
        for n in range(6000):
            data = mutate(seeds, rng) if n >= len(seeds) else seeds[n]
            try:
                tsig.find(data)
            except ValueError:
                pass
            xfr._client_serial(data)
            for client, tcp in (("127.0.0.1", True), ("203.0.113.9", False), ("2001:db8::1", True)):
                try:
                    messages = await drain(handler.respond(data, client, tcp))
                except Exception as exc:  # pragma: no cover - the failure message is the point
                    raise AssertionError(f"{exc!r} for input {data.hex()}") from exc
                for reply in messages:
                    assert len(reply) >= 12 and reply[2] & 0x80, data.hex()
                    assert len(reply) <= (65535 if tcp else 4096), data.hex()
                    assert reply[:2] == data[:2], data.hex()
                    # an independent parser reads every answer (the TSIG itself is checked elsewhere)
                    if _has_tsig(reply):
                        _parse_without_tsig(reply)
                    else:
                        dns.message.from_wire(reply, continue_on_error=True)  # UPDATE-shaped echoes
                cases += 1
        return cases

    assert asyncio.run(run()) == 18000


def _has_tsig(reply: bytes) -> bool:
    from dnsd import tsig

    try:
        return tsig.find(reply) is not None
    except ValueError:
        return False


def _parse_without_tsig(reply: bytes) -> None:
    """Parse a signed reply with the TSIG record cut off (dnspython would want the key to parse it)."""
    from dnsd import tsig

    found = tsig.find(reply)
    assert found is not None
    body = bytearray(reply[: found.start])
    struct.pack_into("!H", body, 10, struct.unpack_from("!H", body, 10)[0] - 1)
    dns.message.from_wire(bytes(body), continue_on_error=True)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostnames=st.one_of(st.text(max_size=300), st.integers(), st.none(), st.lists(st.text(max_size=20))),
       ttl=st.one_of(st.text(max_size=30), st.integers(), st.floats(), st.none()))
def test_hostname_and_ttl_annotations_never_raise_but_invalid_object(hostnames: Any, ttl: Any) -> None:
    """ExternalDNS annotations are untrusted input: a Service with any of them is served or skipped
    with InvalidObject, never a traceback, and what it keeps is valid names and TTLs only."""
    from dnsd.kube.model import InvalidObject, service_from_api, valid_hostname

    annotations = {"external-dns.kubernetes.io/hostname": hostnames, "external-dns.kubernetes.io/ttl": ttl}
    obj = {"metadata": {"name": "web", "namespace": "shop", "annotations": annotations},
           "spec": {"clusterIPs": ["2001:db8::1"]}}
    try:
        record = service_from_api(obj)
    except InvalidObject:
        return
    assert record.ttl is None or 0 <= record.ttl <= 2**31 - 1
    for name in record.hostnames:
        assert valid_hostname(name) == name and len(name) <= 253


# ---- the delegation doctor (dnsd check) --------------------------------------------------------------------

def _referral_seeds() -> list[bytes]:
    """What a parent server answers to `dnsd check`: referrals with glue, DS answers, NXDOMAIN, odd ones."""
    out = []
    for qtype, kind in (("NS", "referral"), ("NS", "nxdomain"), ("NS", "authoritative"), ("DS", "ds"),
                        ("DS", "nodata")):
        query = dns.message.make_query("c2.k8s.ooo.", qtype)
        response = dns.message.make_response(query)
        if kind == "referral":
            response.flags &= ~dns.flags.AA
            response.authority.append(dns.rrset.from_text("c2.k8s.ooo.", 3600, "IN", "NS", "ns1.c2.k8s.ooo.",
                                                          "ns.elsewhere.example."))
            response.additional.append(dns.rrset.from_text("ns1.c2.k8s.ooo.", 3600, "IN", "A", "192.0.2.53"))
            response.additional.append(dns.rrset.from_text("ns1.c2.k8s.ooo.", 3600, "IN", "AAAA", "2001:db8::53"))
        elif kind == "ds":
            response.flags |= dns.flags.AA
            response.answer.append(dns.rrset.from_text(
                "c2.k8s.ooo.", 3600, "IN", "DS", "12345 13 2 " + "ab" * 32, "54321 15 4 " + "cd" * 48))
        else:
            response.flags |= dns.flags.AA
            if kind == "nxdomain":
                response.set_rcode(dns.rcode.NXDOMAIN)
            if kind == "authoritative":
                response.answer.append(dns.rrset.from_text("c2.k8s.ooo.", 3600, "IN", "NS", "ns1.c2.k8s.ooo."))
            response.authority.append(dns.rrset.from_text("k8s.ooo.", 60, "IN", "SOA",
                                                          "ns.k8s.ooo. h.k8s.ooo. 1 2 3 4 5"))
        out.append(response.to_wire())
    return out


def test_delegation_check_readers_survive_mutated_parent_answers() -> None:
    """`dnsd check` reads referrals and DS answers from the parent: 30,000 mutated ones through the
    parser, the readers and the comparison may only give MessageError, CheckError or findings."""
    from dnsd import check
    from dnsd.config import from_mapping
    from dnsd.dnssec import keys as dnssec_keys

    config = from_mapping({"zone": ["c2.k8s.ooo"], "nameserver": ["ns1.c2.k8s.ooo=192.0.2.53"]})
    key = dnssec_keys.generate("c2.k8s.ooo")
    wants = [check.expected(config, None)[0], check.expected(config, [key])[0]]
    rng = random.Random(7344)
    seeds = _referral_seeds()
    read = 0
    for _ in range(30_000):
        data = mutate(seeds, rng)
        try:
            response = message.parse(data)
            view = check.read_referral(response, "c2.k8s.ooo")
            view.ds = check.read_ds(response, "c2.k8s.ooo")
        except (message.MessageError, check.CheckError):
            continue
        except Exception as exc:
            raise AssertionError(f"{exc!r} for parent answer {data.hex()}") from exc
        read += 1
        for want in wants:
            findings = check.compare(want, view)
            assert {f.status for f in findings} <= {"OK", "MISMATCH", "MISSING"}
            assert all("\n" not in f.line(want.zone) for f in findings)
            check.fix_records(want, findings)
    assert read > 3000


_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=40),
              st.sampled_from(["*.a.example.net", "a.example.net", "Gateway", "gateway.networking.k8s.io",
                               "True", "Accepted", "IPAddress", "Hostname", "2001:db8::1", "gw", "infra"])),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(
        ["name", "namespace", "host", "hosts", "hostname", "hostnames", "ip", "type", "value", "port", "rules",
         "tls", "listeners", "parentRefs", "parents", "parentRef", "conditions", "status", "sectionName",
         "group", "kind", "addresses", "loadBalancer", "ingress", "ingressClassName", "gatewayClassName"]),
        inner, max_size=5)),
    max_leaves=25,
)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(["Ingress", "Gateway", "HTTPRoute", "GRPCRoute", "TLSRoute"]), spec=_JSON,
       status=_JSON, annotations=_JSON)
def test_ingress_gateway_objects_never_raise_but_invalid_object(kind: str, spec: Any, status: Any,
                                                                 annotations: Any) -> None:
    """Ingress and Gateway API objects are untrusted input: any shape is served or skipped with
    InvalidObject, never a traceback, and the zone takes whatever is kept (valid names only)."""
    from dnsd.kube.model import (
        IngressRecord,
        InvalidObject,
        gateway_from_api,
        ingress_from_api,
        route_from_api,
        valid_hostname,
    )

    obj = {"kind": kind, "metadata": {"name": "x", "namespace": "infra", "annotations": annotations},
           "spec": spec, "status": status}
    convert = {"Ingress": ingress_from_api, "Gateway": gateway_from_api}.get(kind, route_from_api)
    try:
        record = convert(obj)
    except InvalidObject:
        return
    names = record.hosts if isinstance(record, IngressRecord) else getattr(record, "hostnames", ())
    for name in names:
        assert valid_hostname(name) == name
    zone = _FUZZ_ZONE
    zone.put_object(record)
    zone.delete_object(record.ident)


_FUZZ_ZONE = ZoneIndex(config_module.from_mapping({"zone": "example.net", "ingress": True, "gateway_api": True}))


def test_aggressive_nsec_cache_survives_mutated_proofs() -> None:
    """5,000 "secure" negative answers with mutated NSEC, NSEC3, RRSIG and SOA rdata (and owners) taught
    to the RFC 8198 range cache (dnsd.recursor.aggressive), each followed by lookups of random names:
    neither learning nor answering may raise, and what is answered is a negative answer."""
    from dnsd.recursor.aggressive import AggressiveCache

    rng = random.Random(8198)
    seeds, _ = _dnssec_seeds()
    apex = message.to_wire("example.")
    soa_rdata = message.to_wire("ns.example.") + message.to_wire("h.example.") + struct.pack("!IIIII", 1, 2, 3, 4, 300)
    sigs = {covered: [struct.pack("!H", covered) + sig[2:] for sig in seeds[46]] for covered in (6, 47, 50)}

    def maybe(data: list[bytes]) -> bytes:
        return mutate(data, rng) if rng.random() < 0.5 else rng.choice(data)
    owners = [apex, message.to_wire("www.example."), message.to_wire("*.example."),
              message.to_wire("2t7b4g4vsa5smi47k61mv5bv1a22bojr.example."), message.to_wire("a.b.example.")]
    cache = AggressiveCache(max_ranges=500)

    def random_name() -> bytes:
        """A valid name (query names and owners reach the cache parsed): random labels under the zone."""
        parts = [rng.choice(["*", "www", "a", "b", "\\000", "2t7b4g4vsa5smi47k61mv5bv1a22bojr", "Z" * 63,
                             rng.randbytes(4).hex()]) for _ in range(rng.randint(0, 3))]
        return message.to_wire(".".join([*parts, rng.choice(["example.", "other.", "."])]))
    answered = 0
    for _ in range(5000):
        authority = [RR(apex, SOA, CLASS_IN, rng.choice([0, 300, 2**31]), maybe([soa_rdata])),
                     RR(apex, 46, CLASS_IN, 300, maybe(sigs[6]))]
        for _ in range(rng.randint(1, 4)):
            rtype = rng.choice([47, 50])
            owner = rng.choice(owners) if rng.random() < 0.7 else random_name()
            authority += [RR(owner, rtype, CLASS_IN, rng.choice([1, 300]), maybe(seeds[rtype])),
                          RR(owner, 46, CLASS_IN, 300, maybe(sigs[rtype]))]
        answer = Answer(rng.choice([0, 3]), (), tuple(authority), 1)
        try:
            cache.learn(answer)
            for _ in range(3):
                name = rng.choice(owners) if rng.random() < 0.3 else random_name()
                found = cache.answer(name, rng.choice([1, 16, 28, 43, 255]))
                if found is not None:
                    answered += 1
                    assert found.rcode in (0, 3) and not found.answer and found.security == 1
        except Exception as exc:
            raise AssertionError(f"{exc!r} for {answer}") from exc
    assert len(cache) <= 500
    assert answered > 100  # the seeds are valid often enough for ranges to be learned and used


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=700), qend=st.integers(min_value=0, max_value=700))
def test_signed_denial_template_parser_never_raises(data: bytes, qend: int) -> None:
    """`SignedDenial.from_reply` walks a reply (the slow path's own, but a bug there must cost a template,
    not a traceback): any bytes give a template or None, and a template's rebuilt tail is as long as its
    source part."""
    from dnsd.handler import SignedDenial

    labels = (("udp", "A", "NXDOMAIN", "zone", "template"), ("tcp", "A", "NXDOMAIN", "zone", "template"))
    # a real signed denial's start, mutated: the header and question, then the random rest
    head = b"\x12\x34\x84\x03\x00\x01\x00\x00\x00\x02\x00\x01\x01x\x02c2\x03k8s\x03ooo\x00\x00\x01\x00\x01"
    for reply, end in ((data, qend), (head + data, len(head))):
        template = SignedDenial.from_reply(reply, end, "c2.k8s.ooo", 12, labels)
        if template is not None:
            assert len(template.soa_tail(end + 3)) == len(template.soa)
