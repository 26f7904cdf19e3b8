"""DO=1 answers of signed zones on the fast path: byte for byte the slow path's, and invalidated exactly.

In-process, as dnsd/app.py builds them: the example cluster in a `ZoneIndex`, its `InternetView`,
a signer per view, a handler that uses its fast path and one that never does. Every question goes to
both; the fast one must then answer from its fast path (a `SignedDenial` template plus the signer's
pre-encoded NSEC3 records for denials, the per-name store for positive answers) with the slow one's
bytes: hundreds of random names (NXDOMAIN under namespaces, under Services, at the apex, deeper down),
NODATA at existing names and empty non-terminals, from a cluster and an Internet address, with
UDP limits from 512 (TC) to 4096 and over TCP. Then the zone changes and a tick re-signs: the answers
change and still match, so nothing stale is served.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import pytest

from dnsd import config as config_module
from dnsd.dnssec import crypto, keys
from dnsd.dnssec.signer import REFRESH, Signer
from dnsd.handler import Handler
from dnsd.kube.manifests import ManifestSource
from dnsd.kube.model import Port, ServiceRecord
from dnsd.metrics import QueryStats
from dnsd.views import InternetView
from dnsd.zone import ZoneIndex

REPO = Path(__file__).resolve().parents[1]
Z = "c2.k8s.ooo"
CLUSTER, INTERNET = "127.0.0.1", "127.0.0.2"
T0 = 1_800_000_000


class Clock:
    def __init__(self) -> None:
        self.now = float(T0)

    def __call__(self) -> float:
        return self.now


@dataclass
class Setup:
    zone: ZoneIndex
    internet: InternetView
    fast: Handler
    slow: Handler
    signers: tuple[Signer, Signer]
    clock: Clock


@pytest.fixture(params=[crypto.ECDSAP256SHA256, crypto.ED25519])
def setup(request: pytest.FixtureRequest) -> Setup:
    cfg = config_module.from_mapping({
        "zone": Z, "source": f"file:{REPO / 'examples/cluster.yaml'}", "recursion": "off",
        "nameserver": ["ns1.c2.k8s.ooo=2001:db8:53::53"], "reverse_zone": ["2001:db8:42::/48"],
        "allow_recursion": ["127.0.0.1/32"], "dnssec_validation": False,
    })
    zone = ZoneIndex(cfg)
    internet = InternetView(cfg, zone)
    ManifestSource(REPO / "examples/cluster.yaml", zone).load()
    zone.mark_synced()
    clock = Clock()
    made = [keys.generate(apex.name, request.param, now=T0 - 86400) for apex in zone.apexes]
    internet_signer = Signer(internet, made, clock)  # first, as app.py makes them
    cluster_signer = Signer(zone, made, clock)
    fast = Handler(cfg, zone, QueryStats(), None, internet)
    slow = Handler(cfg, zone, QueryStats(), None, internet)
    slow.fast_path = False
    for handler in (fast, slow):
        handler.signer, handler.internet_signer = cluster_signer, internet_signer
        # as app.py wires it: a re-signing drops what was built from the names re-signed
    cluster_signer.on_resign = internet_signer.on_resign = fast.invalidate
    return Setup(zone, internet, fast, slow, (cluster_signer, internet_signer), clock)


def _query(name: str, qtype: str, payload: int = 1232, rd: bool = False) -> bytes:
    message = dns.message.make_query(name, qtype, use_edns=0, payload=payload, want_dnssec=True)
    if not rd:
        message.flags &= ~dns.flags.RD
    return message.to_wire()


def _label(rng: random.Random) -> str:
    text = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789-") for _ in range(rng.randint(1, 20)))
    return text.strip("-") or "x"


def _denial_questions(rng: random.Random, count: int) -> list[tuple[str, str]]:
    parents = [f"shop.svc.{Z}", f"default.svc.{Z}", f"svc.{Z}", Z, f"frontend.shop.svc.{Z}",
               f"_tcp.db.shop.svc.{Z}", f"nosuch.shop.svc.{Z}"]
    questions = []
    for i in range(count):
        parent = parents[i % len(parents)]
        questions.append((f"{_label(rng)}.{parent}", rng.choice(["A", "AAAA", "TXT", "SRV"])))
    # NODATA: existing names, an empty non-terminal, the apex, types they lack
    questions += [(f"frontend.shop.svc.{Z}", "TXT"), (f"shop.svc.{Z}", "A"), (f"svc.{Z}", "AAAA"), (Z, "TXT"),
                  (f"sample-service.default.svc.{Z}", "MX"), (f"_tcp.db.shop.svc.{Z}", "A")]
    return questions


def _compare(setup: Setup, data: bytes, host: str, tcp: bool = False) -> bytes:
    """The slow path's reply; asserts that the fast path answers it, byte for byte."""
    expected = setup.slow.respond(data, host, tcp)
    assert isinstance(expected, bytes)
    setup.fast.respond(data, host, tcp)  # the first of its kind goes the slow way and makes the template
    fast = setup.fast.fast(data, host, tcp)
    message = dns.message.from_wire(expected)
    assert fast is not None, f"not on the fast path:\n{message.to_text()}"
    assert fast == expected, message.to_text()
    return expected


def test_signed_denials_are_byte_identical_on_the_fast_path(setup: Setup) -> None:
    rng = random.Random(14)
    rcodes: dict[tuple[str, int], int] = {}
    for name, qtype in _denial_questions(rng, 400):
        for host in (CLUSTER, INTERNET):
            reply = dns.message.from_wire(_compare(setup, _query(name, qtype, rd=rng.random() < 0.5), host))
            key = (host, reply.rcode())
            rcodes[key] = rcodes.get(key, 0) + 1
            if reply.rcode() in (dns.rcode.NXDOMAIN, dns.rcode.NOERROR) and not reply.answer:
                assert any(r.rdtype == dns.rdatatype.NSEC3 for r in reply.authority), reply.to_text()
    for host in (CLUSTER, INTERNET):  # both rcodes, both views
        assert rcodes.get((host, dns.rcode.NXDOMAIN), 0) > 300, rcodes
        assert rcodes.get((host, dns.rcode.NOERROR), 0) >= 5, rcodes
    assert setup.fast.negative_templates > 0


def test_tc_and_tcp_as_the_slow_path(setup: Setup) -> None:
    rng = random.Random(5)
    truncated = 0
    for name, qtype in _denial_questions(rng, 50):
        for payload in (4096, 1232, 512):  # the template comes from a reply that fits
            reply = _compare(setup, _query(name, qtype, payload), INTERNET)
            if payload == 512 and dns.message.from_wire(reply).flags & dns.flags.TC:
                truncated += 1
                assert len(reply) < 100  # the question and the OPT alone
        _compare(setup, _query(name, qtype), CLUSTER, tcp=True)
    assert truncated > 20  # NXDOMAIN proofs of three NSEC3 with RRSIGs do not fit 512 octets


def test_a_name_ending_in_an_nsec3_owner_goes_the_slow_way(setup: Setup) -> None:
    """The encoder would compress the NSEC3 owner into such a question: the slow path answers it."""
    denial = dns.message.from_wire(_compare(setup, _query(f"nope.{Z}", "A"), CLUSTER))
    owner = next(r.name for r in denial.authority if r.rdtype == dns.rdatatype.NSEC3)
    data = _query(owner.to_text(), "A")
    expected = setup.slow.respond(data, CLUSTER, False)
    assert setup.fast.fast(data, CLUSTER, False) in (None, expected)
    data = _query("below." + owner.to_text(), "A")
    expected = setup.slow.respond(data, CLUSTER, False)
    setup.fast.respond(data, CLUSTER, False)
    assert setup.fast.fast(data, CLUSTER, False) in (None, expected)


def _svc(name: str, address: str) -> ServiceRecord:
    return ServiceRecord("shop", name, False, (address,), None, (Port("http", "tcp", 80),), False, True, None)


def test_changes_and_resigning_invalidate(setup: Setup) -> None:
    name = f"newsvc.shop.svc.{Z}"
    rng = random.Random(7)
    flood = [(f"{_label(rng)}.shop.svc.{Z}", "AAAA") for _ in range(30)]
    before = {(n, h): _compare(setup, _query(n, t), h) for n, t in [*flood, (name, "AAAA")]
              for h in (CLUSTER, INTERNET)}
    positive = _query(f"frontend.shop.svc.{Z}", "A")
    first = _compare(setup, positive, CLUSTER)
    assert any(r.rdtype == dns.rdatatype.RRSIG for r in dns.message.from_wire(first).answer)
    setup.zone.replace([*setup.zone.services.values(), _svc("newsvc", "2001:db8:42::77")],
                       setup.zone.slices.values(), setup.zone.namespaces)
    for host in (CLUSTER, INTERNET):
        reply = dns.message.from_wire(_compare(setup, _query(name, "AAAA"), host))
        assert reply.rcode() == dns.rcode.NOERROR and reply.answer
        changed = sum(_compare(setup, _query(n, t), host) != before[(n, host)] for n, t in flood)
        assert changed == len(flood)  # the SOA's serial and RRSIG moved, and some proofs too
    # a refresh re-signs everything due: every stored DO=1 answer is rebuilt with the new RRSIGs
    setup.clock.now += REFRESH + 86400
    for signer in reversed(setup.signers):
        while signer.tick(budget=100_000):
            pass
    again = _compare(setup, positive, CLUSTER)
    assert again != first
    old_sigs = {r.to_text() for r in dns.message.from_wire(first).answer if r.rdtype == dns.rdatatype.RRSIG}
    new_sigs = {r.to_text() for r in dns.message.from_wire(again).answer if r.rdtype == dns.rdatatype.RRSIG}
    assert old_sigs and not old_sigs & new_sigs
    for host in (CLUSTER, INTERNET):
        for n, t in flood:
            _compare(setup, _query(n, t), host)


def test_positive_do_answers_are_stored_with_their_signatures(setup: Setup) -> None:
    for name, qtype in ((f"frontend.shop.svc.{Z}", "A"), (f"_postgres._tcp.db.shop.svc.{Z}", "SRV"), (Z, "DNSKEY")):
        reply = dns.message.from_wire(_compare(setup, _query(name, qtype), CLUSTER))
        assert reply.answer and any(r.rdtype == dns.rdatatype.RRSIG for r in reply.answer)
