"""Names dnsd has never seen: answered from per-zone templates, byte for byte the slow path's, and never
stored per name, so that a random-subdomain flood neither grows memory nor pushes the known names out.

The in-process tests run each question through the slow path (the reference, which also builds the
template) and then a *different* name of the same shape through the fast path, and compare the bytes
with the slow path's answer to that second name. The process tests send the crafted and flood
queries to a real dnsd on loopback.
"""

from __future__ import annotations

import random
import socket
import struct
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import pytest

from dnsd import config as config_module
from dnsd import handler as handler_module
from dnsd.handler import Handler
from dnsd.kube.manifests import ManifestSource
from dnsd.kube.model import ServiceRecord
from dnsd.metrics import QueryStats
from dnsd.zone import ZoneIndex
from tests.dnsd_process import EXAMPLE_MANIFESTS, DnsdProcess

Z = "c2.k8s.ooo"
REVERSE = "2.4.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
CLUSTER = "127.0.0.1"  # may recurse (the default --allow-recursion covers loopback)
INTERNET = "2001:db8:ffff::1"


def _handler(**extra: object) -> Handler:
    cfg = config_module.from_mapping({
        "zone": Z, "source": f"file:{EXAMPLE_MANIFESTS}", "recursion": "off",
        "nameserver": ["ns1.c2.k8s.ooo=2001:db8:53::53"], "reverse_zone": ["2001:db8:42::/48"], **extra,
    })
    zone = ZoneIndex(cfg)
    ManifestSource(EXAMPLE_MANIFESTS, zone).load()
    zone.mark_synced()
    return Handler(cfg, zone, QueryStats())


def _label(rng: random.Random, length: int | None = None) -> str:
    length = length or rng.randrange(1, 64)
    return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789-") for _ in range(length))


def _spell(rng: random.Random, name: str) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c for c in name)


def _query(name: str, qtype: str | int, *, edns: int = 0, do: bool = False, cd: bool = False,
           rd: bool = False, rdclass: str = "IN") -> bytes:
    message = dns.message.make_query(name, qtype, rdclass=rdclass, use_edns=edns, want_dnssec=do)
    if cd:
        message.flags |= dns.flags.CD
    if not rd:
        message.flags &= ~dns.flags.RD
    return message.to_wire()


#: (name pattern, qtype, class, expected rcode): {} is replaced by a fresh random label each time.
SHAPES = [
    ("{}.default.svc." + Z, "AAAA", "IN", dns.rcode.NXDOMAIN),  # the flood of the issue
    ("{}.{}.shop.svc." + Z, "A", "IN", dns.rcode.NXDOMAIN),
    ("{}." + Z, "TXT", "IN", dns.rcode.NXDOMAIN),
    ("sample-service.{}.svc." + Z, "AAAA", "IN", dns.rcode.NXDOMAIN),  # a first label that exists elsewhere
    ("svc.{}." + Z, "A", "IN", dns.rcode.NXDOMAIN),  # the first label of an empty non-terminal
    ("{}.{}.{}.{}." + Z, "HTTPS", "IN", dns.rcode.NXDOMAIN),
    ("{}." + REVERSE, "PTR", "IN", dns.rcode.NXDOMAIN),
    ("{}.example.com", "A", "IN", dns.rcode.REFUSED),
    ("{}.{}.org", "AAAA", "IN", dns.rcode.REFUSED),
    ("{}." + Z, "A", "CH", dns.rcode.REFUSED),
]
#: Names that exist, asked for a type they do not have: NODATA, also from a template.
NODATA = [
    (f"sample-service.default.svc.{Z}", "A"), (f"frontend.shop.svc.{Z}", "TXT"), (f"svc.{Z}", "AAAA"),
    (f"empty-team.svc.{Z}", "SRV"), (f"db-0.db.shop.svc.{Z}", "CNAME"), (f"default.svc.{Z}", "HTTPS"),
    (Z, "A"), (f"frontend.shop.svc.{Z}", 65280),
]
FLAG_SETS = [dict(edns=-1), dict(edns=0), dict(edns=0, do=True, cd=True), dict(edns=0, rd=True)]


def _fill(rng: random.Random, pattern: str) -> str:
    return pattern.format(*(_label(rng) for _ in range(pattern.count("{}"))))[:250].strip(".")


def _valid(rng: random.Random, pattern: str) -> str:
    while True:
        name = _fill(rng, pattern)
        try:
            dns.name.from_text(name)
        except dns.name.NameTooLong:
            continue
        if name.endswith(pattern.rsplit("}", 1)[-1].lstrip(".")):
            return name


@pytest.mark.parametrize("client", [CLUSTER, INTERNET])
@pytest.mark.parametrize(("pattern", "qtype", "rdclass", "rcode"), SHAPES)
def test_unseen_names_get_the_slow_paths_bytes_from_a_template(pattern: str, qtype: str, rdclass: str,
                                                                rcode: int, client: str) -> None:
    rng = random.Random(f"{pattern} {qtype} {client}")
    handler = _handler()
    stored = handler.cached_responses
    for flags in FLAG_SETS:
        first = _query(_spell(rng, _valid(rng, pattern)), qtype, rdclass=rdclass, **flags)  # type: ignore[arg-type]
        reply = handler.slow(first, client, False)
        assert isinstance(reply, bytes) and reply[3] & 0xF == rcode
        for _ in range(20):
            other = _query(_spell(rng, _valid(rng, pattern)), qtype, rdclass=rdclass, **flags)  # type: ignore[arg-type]
            fast = handler.fast(other, client, False)
            assert fast is not None, "no template answer"
            assert fast == handler.slow(other, client, False)
            parsed = dns.message.from_wire(fast)
            assert parsed.rcode() == rcode
            asked = dns.message.from_wire(other).question[0]
            assert (parsed.question[0].name.to_text(), parsed.question[0].rdtype) == (asked.name.to_text(),
                                                                                     asked.rdtype)
            if rcode == dns.rcode.NXDOMAIN:
                soa = parsed.authority[0]
                assert soa.rdtype == dns.rdatatype.SOA
                assert soa.name == dns.name.from_text(REVERSE if REVERSE in pattern else Z)
    assert handler.cached_responses == stored  # nothing stored per name
    assert handler.negative_templates == len(FLAG_SETS) - 1  # RD is copied per query, not part of the key


@pytest.mark.parametrize(("name", "qtype"), NODATA)
def test_nodata_for_existing_names_comes_from_the_zones_template(name: str, qtype: str | int) -> None:
    handler = _handler()
    rng = random.Random(7)
    for flags in FLAG_SETS:
        data = _query(name, qtype, **flags)  # type: ignore[arg-type]
        slow = handler.slow(data, INTERNET, False)
        assert isinstance(slow, bytes) and slow[3] & 0xF == dns.rcode.NOERROR and slow[6:8] == b"\x00\x00"
        again = _query(_spell(rng, name), qtype, **flags)  # type: ignore[arg-type]
        assert handler.fast(again, INTERNET, False) == handler.slow(again, INTERNET, False)
    assert handler.cached_responses == 0
    assert handler.negative_templates == len(FLAG_SETS) - 1  # RD is copied per query, not part of the key


def test_templates_follow_the_zone() -> None:
    """A template is the SOA as of now: a change drops it, and a name that starts existing is not NXDOMAIN."""
    handler = _handler()
    zone = handler.zone
    handler.slow(_query(f"first.default.svc.{Z}", "AAAA"), INTERNET, False)
    fresh = _query(f"fresh.default.svc.{Z}", "AAAA")
    before = handler.fast(fresh, INTERNET, False)
    assert before is not None and before[3] & 0xF == dns.rcode.NXDOMAIN
    zone.put_service(ServiceRecord("default", "fresh", False, ("2001:db8:42::99",), None, (), False, True, None))
    assert handler.negative_templates == 0
    assert handler.fast(fresh, INTERNET, False) is None
    reply = dns.message.from_wire(handler.slow(fresh, INTERNET, False))  # type: ignore[arg-type]
    assert [rd.to_text() for rd in reply.answer[0]] == ["2001:db8:42::99"]
    missing = _query(f"missing.default.svc.{Z}", "AAAA")
    handler.slow(missing, INTERNET, False)
    serial = dns.message.from_wire(handler.fast(missing, INTERNET, False)).authority[0][0].serial  # type: ignore[arg-type]
    assert serial == zone.serial


def test_a_flood_of_unseen_names_leaves_the_known_answers_stored() -> None:
    handler = _handler()
    known = [_query(f"{name}.svc.{Z}", "AAAA") for name in
             ("sample-service.default", "frontend.shop", "gateway.shop", "db.shop", "db-0.db.shop")]
    for data in known:
        handler.respond(data, INTERNET, False)
    stored = handler.cached_responses
    rng = random.Random(3)
    for i in range(60_000):
        if i % 100 == 0:
            for data in known:
                handler.respond(data, INTERNET, False)
        handler.respond(_query(f"r{rng.getrandbits(48):x}.default.svc.{Z}", "AAAA"), INTERNET, False)
    assert handler.cached_responses == stored
    assert handler.negative_templates == 1
    fast = {key[4]: count for key, count in handler.stats.queries.items() if len(key) == 5}
    slow = sum(count for key, count in handler.stats.queries.items() if len(key) == 4)
    assert fast["stored"] == len(known) * 600  # every known answer after the first came from the store
    assert fast["template"] == 60_000 - 1  # every random name after the first came from the template
    assert slow == len(known) + 1


def test_a_full_store_evicts_its_oldest_eighth_not_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handler_module, "MAX_CACHED_RESPONSES", 80)
    handler = _handler()
    zone = handler.zone
    for i in range(200):
        zone.put_service(ServiceRecord("default", f"s{i}", False, (f"2001:db8:42::{i + 1:x}",), None, (),
                                       False, True, None))
    queries = [_query(f"s{i}.default.svc.{Z}", "AAAA") for i in range(200)]
    for data in queries[:80]:
        handler.respond(data, INTERNET, False)
    assert handler.cached_responses == 80
    handler.respond(queries[80], INTERNET, False)  # full: the 10 oldest go, the other 70 stay
    assert handler.cached_responses == 71
    assert [handler.fast(d, INTERNET, False) is not None for d in queries[:81]] == [False] * 10 + [True] * 71
    for data in queries[81:]:
        handler.respond(data, INTERNET, False)
    assert handler.cached_responses <= 80
    assert len(handler._keys_by_name) <= 80  # the name index is trimmed with the store


def _crafted(real_suffix: str, fake_opt: bool = True) -> bytes:
    """A query whose first label is 63 octets with a zero at offset 1 of its content.

    Cut at that zero, the octets after it read as type A, class IN and an OPT record whose one option
    runs to the end of the packet: a key built from the first zero octet is the same for every suffix.
    The real question (walked by lengths) is `<63-octet label>.<real_suffix>` type A, with a real OPT.
    """
    suffix = dns.name.from_text(real_suffix).to_wire()
    # fake type/class, then a fake OPT header (root, type 41, size, ext-rcode/version/flags, rdlength)
    fake = b"\x00\x01\x00\x01" + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00"
    content_fixed = b"x\x00" + fake
    option_header_at = len(content_fixed) + 2  # after the fake OPT's rdlength
    content = content_fixed + b"\x00\x00" + b"\xfd\xe9" + b"\x00\x00"
    content += b"y" * (63 - len(content))
    tail = suffix + b"\x00\x01\x00\x01" + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
    question = b"\x3f" + content
    packet = bytearray(struct.pack("!HHHHHH", 0x1234, 0, 1, 0, 0, 1) + question + tail)
    # fill in the fake lengths so that the fake OPT's rdata is one option running to the very end
    fake_end = 12 + 1 + len(content_fixed)  # just after the fake OPT's fixed part, before its rdlength
    rdlength = len(packet) - (fake_end + 2)
    struct.pack_into("!H", packet, fake_end, rdlength)
    struct.pack_into("!H", packet, 12 + 1 + option_header_at + 2, rdlength - 4)
    return bytes(packet)


def test_a_zero_octet_inside_a_label_never_shares_another_questions_answer() -> None:
    handler = _handler()
    outside, inside = _crafted("example.com"), _crafted(f"default.svc.{Z}")
    assert handler.fast_key(outside, INTERNET) == handler.fast_key(inside, INTERNET)  # the first-zero key
    refused = handler.respond(outside, INTERNET, False)
    assert isinstance(refused, bytes) and refused[3] & 0xF == dns.rcode.REFUSED
    answer = handler.respond(inside, INTERNET, False)
    assert isinstance(answer, bytes)
    parsed = dns.message.from_wire(answer)
    assert parsed.rcode() == dns.rcode.NXDOMAIN
    assert parsed.question[0].name == dns.message.from_wire(inside).question[0].name
    assert handler.cached_responses == 0 and handler.negative_templates == 0  # nothing stored under that key


def _udp(port: int, data: bytes, timeout: float = 3.0) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(data, ("127.0.0.1", port))
        return sock.recv(65535)


def test_the_process_answers_a_crafted_zero_octet_name_nxdomain() -> None:
    """Knot and BIND answer NXDOMAIN to the in-zone name (issue 17, finding 5); so must dnsd, after the
    out-of-zone question with the same first-zero prefix got its REFUSED, and every time after."""
    outside, inside = _crafted("example.com"), _crafted(f"default.svc.{Z}")
    with DnsdProcess("--zone", Z, "--source", f"file:{EXAMPLE_MANIFESTS}", "--recursion", "off") as proc:
        for _ in range(3):
            refused = dns.message.from_wire(_udp(proc.port, outside))
            assert refused.rcode() == dns.rcode.REFUSED
            assert refused.question[0].name == dns.message.from_wire(outside).question[0].name
            answer = dns.message.from_wire(_udp(proc.port, inside))
            assert answer.rcode() == dns.rcode.NXDOMAIN
            assert answer.question[0].name == dns.message.from_wire(inside).question[0].name
            assert answer.authority[0].rdtype == dns.rdatatype.SOA
            assert answer.authority[0].name.to_text() == f"{Z}."


def test_the_process_keeps_known_names_on_the_fast_path_during_a_flood(tmp_path: Path) -> None:
    """Known names are answered from the store while unseen names come from templates; the store stays put."""
    rng = random.Random(11)
    known = [f"sample-service.default.svc.{Z}", f"frontend.shop.svc.{Z}", f"db-0.db.shop.svc.{Z}"]
    with DnsdProcess("--zone", Z, "--source", f"file:{EXAMPLE_MANIFESTS}", "--recursion", "off",
                     "--reverse-zone", "2001:db8:42::/48", http="127.0.0.1:0") as proc:
        for name in known:
            assert proc.query(name, "AAAA").answer
        before = {kind: proc.metric("dnsd_fast_path_answers_total", kind=kind) for kind in ("stored", "template")}
        entries_before = proc.metric("dnsd_cache_entries", cache="answers")
        sent_known = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            for i in range(3000):  # lock-step: bounded load, nothing lost to a full buffer
                name = known[i % 3] if i % 2 else f"r{rng.getrandbits(48):x}.default.svc.{Z}"
                sent_known += i % 2
                sock.sendto(_query(name, "AAAA"), ("127.0.0.1", proc.port))
                reply = dns.message.from_wire(sock.recv(4096))
                assert reply.rcode() == (dns.rcode.NOERROR if i % 2 else dns.rcode.NXDOMAIN)
        after = {kind: proc.metric("dnsd_fast_path_answers_total", kind=kind) for kind in ("stored", "template")}
        assert after["stored"] - before["stored"] == sent_known
        assert after["template"] - before["template"] >= 1500 - 1
        assert entries_before == len(known)  # the gauge is brought up to date at each scrape
        assert proc.metric("dnsd_cache_entries", cache="answers") == entries_before


def test_names_that_need_escapes_get_their_own_template() -> None:
    """The slow path writes the SOA owner out for such a question (no pointer into it); so does its template."""
    handler = _handler()
    for first, second in ((b"a\x01b", b"\x7f\xff"), (b"x.y", b"p.q.r")):
        queries = []
        for label in (first, second):
            message = dns.message.make_query(dns.name.Name([label, b"default", b"svc", *Z.encode().split(b"."), b""]),
                                             "AAAA")
            message.flags &= ~dns.flags.RD
            queries.append(message.to_wire())
        handler.slow(queries[0], INTERNET, False)
        fast = handler.fast(queries[1], INTERNET, False)
        assert fast is not None and fast == handler.slow(queries[1], INTERNET, False)
        assert dns.message.from_wire(fast).rcode() == dns.rcode.NXDOMAIN
    plain = _query(f"plain.default.svc.{Z}", "AAAA")
    assert handler.fast(plain, INTERNET, False) is None  # the escaped names' template is not the plain one


def test_the_first_label_index_follows_every_change() -> None:
    """`first_label_known` is what lets a flood's names skip spelling: it must never miss an existing name."""
    handler = _handler()
    zone = handler.zone

    def every_first_label() -> set[bytes]:
        names = set(zone._present) | set(zone._below)
        return {name.split(".", 1)[0].encode() for name in names}

    assert set(zone._first_labels) == every_first_label()
    assert zone.first_label_known(b"sample-service") and zone.first_label_known(b"svc")
    assert not zone.first_label_known(b"lonely")
    zone.put_service(ServiceRecord("team", "lonely", False, ("2001:db8:42::7",), None, (), False, True, None))
    assert zone.first_label_known(b"lonely") and zone.first_label_known(b"team")
    assert set(zone._first_labels) == every_first_label()
    known = _query(f"lonely.team.svc.{Z}", "AAAA")
    assert dns.message.from_wire(handler.respond(known, INTERNET, False)).answer  # type: ignore[arg-type]
    zone.delete_service("team", "lonely")
    assert not zone.first_label_known(b"lonely") and not zone.first_label_known(b"team")
    assert set(zone._first_labels) == every_first_label()
    gone = handler.respond(known, INTERNET, False)
    assert isinstance(gone, bytes) and gone[3] & 0xF == dns.rcode.NXDOMAIN
    zone.replace([], [], [])
    assert set(zone._first_labels) == every_first_label()
