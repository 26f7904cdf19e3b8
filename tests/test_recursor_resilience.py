"""A resolver that keeps working (issue 16): serve-stale (RFC 8767) and EDE 22 for dead zones.

The hierarchy is tests/hostile.py's scriptable servers on 127.53.2.0/24: a root delegating `keep.`
(records with a TTL of 2 s, so that they expire during the test) to one leaf server and `alive.` to
another. Each test builds its own network and starts the real dnsd process iterating from that root;
the leaf is then stopped (its sockets closed: ICMP port unreachable) or made silent (it reads queries
and never answers: the refresh takes longer than the RFC's 1.8 s), and the test checks what clients
get: the expired answer with TTL 30 and EDE 3, or SERVFAIL with EDE 22 under `--serve-stale 0`,
while names in other zones keep answering.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.dnsd_process import EXAMPLE_MANIFESTS, DnsdProcess, rdata_texts
from tests.hostile import ATTACKER, ROOT, ROOT_HINTS, SPARE, VICTIM, Message, Network, Reply, Server, Zone, response

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the fake servers bind port 53 on 127.53.2.0/24")

LEAF, ALIVE, TLD = SPARE, VICTIM, ATTACKER
ZONE_ARGS = ("--zone", "c2.k8s.ooo", "--source", f"file:{EXAMPLE_MANIFESTS}")

ROOT_ZONE = f"""
$TTL 86400
. SOA a.root.hostile. hostmaster.hostile. 1 1800 900 604800 60
. NS a.root.hostile.
a.root.hostile. A {ROOT}
keep. NS ns.keep.
ns.keep. A {LEAF}
alive. NS ns.alive.
ns.alive. A {ALIVE}
tld. NS ns.tld.
ns.tld. A {TLD}
"""

TLD_ZONE = f"""
$TTL 300
tld. SOA ns.tld. hostmaster.tld. 1 1800 900 604800 60
tld. NS ns.tld.
ns.tld. A {TLD}
sub.tld. NS ns.sub.tld.
ns.sub.tld. A {LEAF}
"""

SUB_ZONE = f"""
$TTL 300
sub.tld. SOA ns.sub.tld. hostmaster.sub.tld. 1 1800 900 604800 60
sub.tld. NS ns.sub.tld.
ns.sub.tld. A {LEAF}
www.a.b.sub.tld. A 192.0.2.70
"""

KEEP_ZONE = f"""
$TTL 2
keep. 2 SOA ns.keep. hostmaster.keep. 1 1800 900 604800 2
keep. 300 NS ns.keep.
ns.keep. 300 A {LEAF}
www A 192.0.2.50
"""

ALIVE_ZONE = f"""
$TTL 300
alive. SOA ns.alive. hostmaster.alive. 1 1800 900 604800 60
alive. NS ns.alive.
ns.alive. A {ALIVE}
www A 192.0.2.60
busy 10 A 192.0.2.61
v4host A 1.2.3.4
"""


@pytest.fixture
def net() -> Iterator[Network]:
    network = Network(Server(ROOT, [Zone(".", ROOT_ZONE)]),
                      Server(LEAF, [Zone("keep.", KEEP_ZONE), Zone("sub.tld.", SUB_ZONE)]),
                      Server(ALIVE, [Zone("alive.", ALIVE_ZONE)]), Server(TLD, [Zone("tld.", TLD_ZONE)])).start()
    yield network
    network.stop()


@pytest.fixture
def hints(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("resilience") / "root.hints"
    path.write_text(ROOT_HINTS)
    return str(path)


def ask(proc: DnsdProcess, name: str, qtype: str = "A", timeout: float = 10.0) -> dns.message.Message:
    return proc.query(name, qtype, rd=True, edns=0, timeout=timeout)


def ede_codes(reply: dns.message.Message) -> list[int]:
    return [int(option.code) for option in reply.extended_errors()]


def until_stale(proc: DnsdProcess, name: str, deadline_s: float = 20.0) -> tuple[dns.message.Message, float]:
    """Ask for `name` until the answer is a stale one (EDE 3); the reply and how long it took."""
    deadline = time.monotonic() + deadline_s
    while True:
        started = time.monotonic()
        reply = ask(proc, name)
        elapsed = time.monotonic() - started
        if 3 in ede_codes(reply):
            return reply, elapsed
        assert reply.rcode() == dns.rcode.NOERROR and rdata_texts(reply, "A") == ["192.0.2.50"], reply
        assert time.monotonic() < deadline, "no stale answer before the deadline"
        time.sleep(0.2)


def test_a_stopped_leaf_gets_the_stale_answer_within_2s_with_ede_3(net: Network, hints: str) -> None:
    with DnsdProcess(*ZONE_ARGS, "--recursion", "iterate", "--root-hints", hints,
                     http="127.0.0.1:0") as proc:
        fresh = ask(proc, "www.keep")
        assert rdata_texts(fresh, "A") == ["192.0.2.50"] and fresh.answer[0].ttl <= 2
        assert ede_codes(fresh) == []
        net.stop_server(LEAF)
        stale, elapsed = until_stale(proc, "www.keep")
        assert elapsed < 2.0, elapsed
        assert stale.rcode() == dns.rcode.NOERROR
        assert rdata_texts(stale, "A") == ["192.0.2.50"]
        assert [rrset.ttl for rrset in stale.answer] == [30]
        # other zones are unaffected, and the stale answer keeps coming (the failure is cached)
        assert rdata_texts(ask(proc, "www.alive"), "A") == ["192.0.2.60"]
        again = ask(proc, "www.keep", timeout=2.0)
        assert 3 in ede_codes(again) and rdata_texts(again, "A") == ["192.0.2.50"]
        assert proc.metric("dnsd_queries_total", source="stale") >= 2


def test_a_slow_refresh_serves_stale_after_the_client_timer_and_refreshes_in_the_background(
        net: Network, hints: str) -> None:
    with DnsdProcess(*ZONE_ARGS, "--recursion", "iterate", "--root-hints", hints) as proc:
        assert rdata_texts(ask(proc, "www.keep"), "A") == ["192.0.2.50"]
        net[LEAF].silent = True
        stale, elapsed = until_stale(proc, "www.keep")
        assert elapsed >= 1.5, elapsed  # the RFC 8767 client response timer (1.8 s) ran first
        assert [rrset.ttl for rrset in stale.answer] == [30]
        asked = net[LEAF].count("www.keep.", "A")
        net[LEAF].silent = False
        deadline = time.monotonic() + 20
        while True:  # the background refresh (or the next one) brings the fresh answer back
            reply = ask(proc, "www.keep")
            if not ede_codes(reply):
                break
            assert time.monotonic() < deadline, "the answer was never refreshed"
            time.sleep(0.2)
        assert rdata_texts(reply, "A") == ["192.0.2.50"] and reply.answer[0].ttl <= 2
        assert net[LEAF].count("www.keep.", "A") > asked


def test_serve_stale_0_gives_servfail_with_ede_22_and_other_names_answer(net: Network, hints: str) -> None:
    with DnsdProcess(*ZONE_ARGS, "--recursion", "iterate", "--root-hints", hints,
                     "--serve-stale", "0") as proc:
        assert rdata_texts(ask(proc, "www.keep"), "A") == ["192.0.2.50"]
        net.stop_server(LEAF)
        deadline = time.monotonic() + 20
        while True:
            reply = ask(proc, "www.keep")
            if reply.rcode() != dns.rcode.NOERROR:
                break
            assert time.monotonic() < deadline, "the expired answer was served past its TTL"
            time.sleep(0.2)
        assert reply.rcode() == dns.rcode.SERVFAIL and not reply.answer
        assert ede_codes(reply) == [22]
        assert 3 not in ede_codes(ask(proc, "www.keep"))
        assert rdata_texts(ask(proc, "www.alive"), "A") == ["192.0.2.60"]


def test_a_zone_whose_servers_never_answer_is_servfail_ede_22_within_the_budget(net: Network, hints: str) -> None:
    with DnsdProcess(*ZONE_ARGS, "--recursion", "iterate", "--root-hints", hints) as proc:
        net[LEAF].silent = True
        started = time.monotonic()
        reply = ask(proc, "never.keep", timeout=10.0)
        assert time.monotonic() - started < 7.0  # the 6 s client budget, with slack for a loaded machine
        assert reply.rcode() == dns.rcode.SERVFAIL and ede_codes(reply) == [22]
        assert rdata_texts(ask(proc, "www.alive"), "A") == ["192.0.2.60"]


EXTERNAL_MANIFESTS = """\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: ext, namespace: default}
  spec: {type: ExternalName, externalName: www.alive}
"""
EXTERNAL = "ext.default.svc.c2.k8s.ooo."
#: clients from here are outside --allow-recursion: "the Internet", authoritative answers only
OUTSIDER = "127.0.0.200"


def test_externalname_is_chased_for_recursing_clients_only(net: Network, hints: str,
                                                           tmp_path_factory: pytest.TempPathFactory) -> None:
    manifests = tmp_path_factory.mktemp("external") / "cluster.yaml"
    manifests.write_text(EXTERNAL_MANIFESTS)
    with DnsdProcess("--zone", "c2.k8s.ooo", "--source", f"file:{manifests}", "--recursion", "iterate",
                     "--root-hints", hints, "--allow-recursion", "127.0.0.1/32") as proc:
        for _ in range(2):  # the second time from the caches (and never from a stored bare CNAME)
            chased = ask(proc, EXTERNAL)
            assert chased.rcode() == dns.rcode.NOERROR
            assert rdata_texts(chased, "CNAME") == ["www.alive."]
            assert rdata_texts(chased, "A") == ["192.0.2.60"]
            assert [rrset.name.to_text() for rrset in chased.answer] == [EXTERNAL, "www.alive."]
            assert not chased.flags & dns.flags.AA and chased.flags & dns.flags.RA
        # RD clear from a recursing client: the bare CNAME, as the zone has it
        bare = proc.query(EXTERNAL, "A", rd=False)
        assert rdata_texts(bare, "CNAME") == ["www.alive."] and rdata_texts(bare, "A") == []
        assert bare.flags & dns.flags.AA
        alive_queries = net[ALIVE].count("www.alive.", "A")
        for _ in range(2):  # an authoritative-only client with RD set still gets the bare CNAME with AA
            message = dns.message.make_query(EXTERNAL, "A")
            outside = dns.query.udp(message, proc.host, port=proc.port, timeout=5, source=OUTSIDER)
            assert outside.rcode() == dns.rcode.NOERROR
            assert rdata_texts(outside, "CNAME") == ["www.alive."] and rdata_texts(outside, "A") == []
            assert outside.flags & dns.flags.AA and not outside.flags & dns.flags.RA
        assert net[ALIVE].count("www.alive.", "A") == alive_queries
        # the chase follows the target's fate: the zone's CNAME stays, the target's rcode is the answer's
        assert ask(proc, EXTERNAL, "TXT").rcode() == dns.rcode.NOERROR


EXTERNAL64_MANIFESTS = """\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata: {name: ext64, namespace: default}
  spec: {type: ExternalName, externalName: v4host.alive}
- apiVersion: v1
  kind: Service
  metadata: {name: ext, namespace: default}
  spec: {type: ExternalName, externalName: www.alive}
"""


def test_chased_externalname_target_gets_dns64_like_a_direct_query(
        net: Network, hints: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The AAAA of a chased ExternalName whose target has only an A record is synthesized (RFC 6147),
    with the same address and TTL bound as a direct AAAA query for the target gets."""
    manifests = tmp_path_factory.mktemp("external64") / "cluster.yaml"
    manifests.write_text(EXTERNAL64_MANIFESTS)
    owner = "ext64.default.svc.c2.k8s.ooo."
    with DnsdProcess("--zone", "c2.k8s.ooo", "--source", f"file:{manifests}", "--recursion", "iterate",
                     "--root-hints", hints, "--allow-recursion", "127.0.0.1/32") as proc:
        for _ in range(2):  # the second time from the caches
            chased = ask(proc, owner, "AAAA")
            assert chased.rcode() == dns.rcode.NOERROR
            assert [rrset.name.to_text() for rrset in chased.answer] == [owner, "v4host.alive."]
            assert rdata_texts(chased, "CNAME") == ["v4host.alive."]
            assert rdata_texts(chased, "AAAA") == ["64:ff9b::102:304"]
        direct = ask(proc, "v4host.alive.", "AAAA")
        assert rdata_texts(direct, "AAAA") == ["64:ff9b::102:304"]
        # a target whose only address may not be embedded in the Well-Known Prefix (192.0.2.60,
        # RFC 6052 3.1) stays a NODATA behind the CNAME, as a direct query does
        plain = ask(proc, EXTERNAL, "AAAA")
        assert plain.rcode() == dns.rcode.NOERROR
        assert rdata_texts(plain, "CNAME") == ["www.alive."] and rdata_texts(plain, "AAAA") == []
        # DO+CD (a validating stub): no synthesis (RFC 6147 5.5), for the chase as for a direct query
        query = dns.message.make_query(owner, "AAAA", want_dnssec=True, use_edns=0)
        query.flags |= dns.flags.CD
        stub = dns.query.udp(query, proc.host, port=proc.port, timeout=10)
        assert rdata_texts(stub, "CNAME") == ["v4host.alive."] and rdata_texts(stub, "AAAA") == []
        # the A query itself is untouched
        assert rdata_texts(ask(proc, owner, "A"), "A") == ["1.2.3.4"]


def test_qname_minimisation_shows_each_server_only_the_next_label(net: Network, hints: str) -> None:
    with DnsdProcess(*ZONE_ARGS, "--recursion", "iterate", "--root-hints", hints) as proc:
        reply = ask(proc, "www.a.b.sub.tld", "AAAA")
        assert reply.rcode() == dns.rcode.NOERROR and not reply.answer  # NODATA, from the leaf
        reply = ask(proc, "www.a.b.sub.tld")
        assert rdata_texts(reply, "A") == ["192.0.2.70"]
        root_names = {name for name, _ in net[ROOT].queries}
        tld_names = {name for name, _ in net[TLD].queries}
        assert "tld." in root_names and root_names <= {"tld.", "."}, root_names  # "." for priming
        assert tld_names == {"sub.tld."}, tld_names
        assert {qtype for name, qtype in net[TLD].queries} == {dns.rdatatype.A}
        # the leaf, the zone's own server, is asked the full name in the end
        assert net[LEAF].count("www.a.b.sub.tld.", "A") == 1


#: the root's own NS set names a server that the hints do not know
PRIMED_ROOT = "127.53.2.7"
PRIMING_ROOT_ZONE = f"""
$TTL 86400
. SOA a.root.hostile. hostmaster.hostile. 1 1800 900 604800 60
. NS b.root.hostile.
b.root.hostile. A {PRIMED_ROOT}
alive. NS ns.alive.
ns.alive. A {ALIVE}
"""


def _root_ns_with_glue(query: Message) -> Reply:
    """A root server's priming response: the NS set with its addresses (RFC 8109 section 4)."""
    question = query.question[0]
    if question.name != dns.name.root or question.rdtype != dns.rdatatype.NS:
        return None
    return response(query, answer=(". 518400 IN NS b.root.hostile.",),
                    additional=(f"b.root.hostile. 518400 IN A {PRIMED_ROOT}",))


def test_priming_uses_the_roots_ns_set_not_the_hints(hints: str) -> None:
    network = Network(Server(ROOT, [Zone(".", PRIMING_ROOT_ZONE)], script=_root_ns_with_glue),
                      Server(PRIMED_ROOT, [Zone(".", PRIMING_ROOT_ZONE)], script=_root_ns_with_glue),
                      Server(ALIVE, [Zone("alive.", ALIVE_ZONE)])).start()
    try:
        with DnsdProcess(*ZONE_ARGS, "--recursion", "iterate", "--root-hints", hints) as proc:
            proc.wait_for_log(r"primed the root: 1 name servers")
            assert rdata_texts(ask(proc, "www.alive"), "A") == ["192.0.2.60"]
            # the hints' server was asked for the root's NS set only; the primed one did the work
            assert {(name, qtype) for name, qtype in network[ROOT].queries} == {(".", dns.rdatatype.NS)}
            assert ("alive.", dns.rdatatype.A) in network[PRIMED_ROOT].queries
    finally:
        network.stop()


def test_prefetch_refreshes_a_busy_name_before_it_expires(net: Network, hints: str) -> None:
    with DnsdProcess(*ZONE_ARGS, "--recursion", "iterate", "--root-hints", hints,
                     http="127.0.0.1:0") as proc:
        first = ask(proc, "busy.alive")
        expires = time.monotonic() + 10  # at the latest: the answer's TTL is 10 s
        assert rdata_texts(first, "A") == ["192.0.2.61"] and net[ALIVE].count("busy.alive.", "A") == 1
        while net[ALIVE].count("busy.alive.", "A") < 2:  # a busy name: asked every 0.1 s
            reply = ask(proc, "busy.alive")
            assert rdata_texts(reply, "A") == ["192.0.2.61"] and reply.answer[0].ttl > 0
            assert time.monotonic() < expires, "the busy name was not refreshed before it expired"
            time.sleep(0.1)
        assert proc.metric("dnsd_prefetches_total") >= 1
        # after the original expiry the refreshed answer is served from the cache: no miss, no wait
        while time.monotonic() < expires + 0.5:
            time.sleep(0.1)
        reply = ask(proc, "busy.alive")
        assert rdata_texts(reply, "A") == ["192.0.2.61"] and 0 < reply.answer[0].ttl <= 10
        assert net[ALIVE].count("busy.alive.", "A") == 2


def readyz(proc: DnsdProcess) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{proc.http_port}/readyz?verbose", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_readyz_verbose_lists_each_check_and_only_source_and_listeners_gate(net: Network, hints: str) -> None:
    with DnsdProcess(*ZONE_ARGS, "--recursion", "iterate", "--root-hints", hints,
                     http="127.0.0.1:0") as proc:
        assert rdata_texts(ask(proc, "www.alive"), "A") == ["192.0.2.60"]
        status, text = readyz(proc)
        assert status == 200, text
        assert text.splitlines() == ["[+]source-synced ok", "[+]listeners-bound ok",
                                     "[+]upstream-root ok (informational)", "readyz check passed: ready"]
        assert proc.metric("dnsd_upstream_healthy", path="root") == 1
        net.stop_server(ROOT)
        assert ask(proc, "www.nowhere").rcode() == dns.rcode.SERVFAIL  # the root is gone
        status, text = readyz(proc)
        assert status == 200, text  # recursion's reach is reported, it does not gate readiness
        assert "[-]upstream-root failed (informational)" in text.splitlines()
        assert proc.metric("dnsd_upstream_healthy", path="root") == 0
        assert rdata_texts(ask(proc, "www.alive"), "A") == ["192.0.2.60"]  # from the cache still


SLOW = SPARE
FLOOD_ROOT_ZONE = f"""
$TTL 86400
. SOA a.root.hostile. hostmaster.hostile. 1 1800 900 604800 60
. NS a.root.hostile.
a.root.hostile. A {ROOT}
slow. NS ns.slow.
ns.slow. A {SLOW}
alive. NS ns.alive.
ns.alive. A {ALIVE}
"""
SLOW_DELAY = 0.5
MAX_PER_ZONE = 20


def test_a_random_subdomain_flood_on_a_slow_zone_leaves_other_names_answered(hints: str) -> None:
    arrivals: list[float] = []

    def slow_nxdomain(query: Message) -> Reply:
        arrivals.append(time.monotonic())
        reply = response(query, rcode=dns.rcode.NXDOMAIN,
                         authority=("slow. 60 IN SOA ns.slow. h.slow. 1 1800 900 604800 60",))
        return reply, SLOW_DELAY

    network = Network(Server(ROOT, [Zone(".", FLOOD_ROOT_ZONE)]), Server(SLOW, script=slow_nxdomain),
                      Server(ALIVE, [Zone("alive.", ALIVE_ZONE)])).start()
    try:
        with DnsdProcess(*ZONE_ARGS, "--recursion", "iterate", "--root-hints", hints,
                         "--recursion-max-per-zone", str(MAX_PER_ZONE), http="127.0.0.1:0") as proc:
            assert ask(proc, "warm.slow").rcode() == dns.rcode.NXDOMAIN  # the delegation is known
            assert rdata_texts(ask(proc, "www.alive"), "A") == ["192.0.2.60"]
            rss_before = _rss(proc)
            flood = threading.Thread(target=_flood, args=(proc, 3000, 500.0), daemon=True)
            flood.start()
            latencies: list[float] = []
            while flood.is_alive():
                started = time.monotonic()
                try:
                    reply = ask(proc, "www.alive", timeout=1.0)
                    ok = rdata_texts(reply, "A") == ["192.0.2.60"]
                except dns.exception.Timeout:
                    ok = False
                latencies.append(time.monotonic() - started if ok else float("inf"))
                time.sleep(0.02)
            flood.join()
            answered = sum(1 for latency in latencies if latency <= 1.0)
            assert len(latencies) >= 50 and answered >= 0.95 * len(latencies), (answered, len(latencies))
            assert _rss(proc) - rss_before < 64 * 1024 * 1024
            # at most MAX_PER_ZONE queries outstanding at the victim at once: with a fixed delay, the
            # queries in flight at any moment are the arrivals of the last SLOW_DELAY seconds
            times = sorted(arrivals)
            most, first = 0, 0
            for last, at in enumerate(times):
                while times[first] <= at - SLOW_DELAY:
                    first += 1
                most = max(most, last - first + 1)
            assert len(times) > MAX_PER_ZONE and most <= MAX_PER_ZONE, (most, len(times))
            assert proc.metric("dnsd_limit_hits_total", limit="recursion_per_zone") > 0
    finally:
        network.stop()


def _flood(proc: DnsdProcess, count: int, rate: float) -> None:
    """`count` unique names under slow. at `rate` a second, answers read and dropped."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    started = time.monotonic()
    try:
        for i in range(count):
            wait = started + i / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            query = dns.message.make_query(f"r{i}-{random.getrandbits(32):08x}.slow.", "A")
            try:
                sock.sendto(query.to_wire(), (proc.host, proc.port))
                while True:
                    sock.recv(4096)
            except (BlockingIOError, OSError):
                pass
    finally:
        sock.close()


def _rss(proc: DnsdProcess) -> int:
    """dnsd's resident set size in bytes, from /proc."""
    assert proc.proc is not None
    with open(f"/proc/{proc.proc.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")
