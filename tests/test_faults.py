"""Faults around dnsd: its sources and its upstreams misbehave, and the answers must not suffer.

Every test here follows one pattern: a known name is queried throughout the fault and must be answered
correctly every single time (data dnsd had is never lost), dnsd's log must hold no traceback, and once
the fault ends a change made after it must be served (recovery). The faults:

* the Kubernetes API (tests/fakekube.py): watches reset in the middle of an event line, again and again;
  a watch that sends its headers and then nothing (no events, no bookmarks) and a LIST stalled in the
  middle of its body; 500 and 410 answered in turns to every request for a while. The process tests run
  dnsd with its production timings, so a stalled watch ends when the fault ends; the shortened
  inactivity and list timeouts are checked in-process, where InformerSettings can be shrunk.
  (tests/test_informer_process.py already covers 403 before the sync, a list hanging before its headers
  during a 410 relist, and the API server dying and coming back; those are not repeated here.)
* the upstream of `--recursion forward` (a small UDP/TCP DNS server written here with dnspython):
  timing out, answering SERVFAIL, answering garbage bytes, truncating over UDP and then failing over
  TCP. The client must get SERVFAIL within the resolver's time limit (never a hang, never a crash), zone
  answers and cached recursive answers are unaffected, and correct answers come back with the upstream.
* the manifests file: vanishing and coming back unchanged (the serial must not even move), replaced by
  a directory, by bytes that are not UTF-8, by an atomic rename, and swapped the way kubelet updates a
  ConfigMap volume (symlinks), including a moment where the symlink dangles.

SIGTERM under a stream of queries (lame duck, no query lost, exit 0) is in tests/test_http_metrics.py
(`test_sigterm_lame_duck_keeps_answering_then_exits_zero`) and is not repeated here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import shutil
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from tests.dnsd_process import EXAMPLE_MANIFESTS, DnsdProcess, rdata_texts
from tests.fakekube import FakeKube, service
from tests.test_informer import FAST as INFORMER_FAST
from tests.test_informer import aaaa, eventually, source
from tests.test_informer_process import Querier, cluster, name, populate, wait_answer

Z = "c2.k8s.ooo"
GOOD_NAME = f"sample-service.default.svc.{Z}"
GOOD_ADDRESS = "2001:db8:42::10"
ZONE_ARGS = ("--zone", Z, "--source", f"file:{EXAMPLE_MANIFESTS}")


def assert_clean_log(proc: DnsdProcess) -> None:
    """No traceback and no 'unexpected error' (the informer's catch-all for bugs) in dnsd's output."""
    output = proc.output()
    assert "Traceback" not in output, output
    assert "unexpected error" not in output, output


def _api_lines(proc: DnsdProcess, start: int) -> list[str]:
    return [line for line in proc.lines[start:] if "informer" in line]


# ---- the Kubernetes API misbehaving (the real process) ------------------------------------------------------


async def test_watches_cut_in_the_middle_of_an_event_again_and_again(tmp_path: Path) -> None:
    """A load balancer or API server restart resets watches mid-line: half a JSON event, then RST."""
    fake = FakeKube()
    expected = populate(fake, 20)
    async with cluster(tmp_path, fake=fake) as (fake, proc):
        await wait_answer(proc, name("svc19"), expected[name("svc19")])
        await fake.wait_watching(2)
        with Querier(proc, expected) as querier:
            for round_ in range(4):
                fake.cut_watches()
                # changed while no watch is open: the re-watch from the last resourceVersion catches up
                fake.put(service("default", f"new{round_}", [f"fd00:10:96::a{round_}"]))
                await wait_answer(proc, name(f"new{round_}"), {f"fd00:10:96::a{round_}"}, timeout=10)
                await fake.wait_watching(2)
            fake.put(service("default", "svc3", ["fd00:10:96::4", "fd00:10:96::333"]))
            await wait_answer(proc, name("svc3"), {"fd00:10:96::4", "fd00:10:96::333"})
        assert querier.count > 50
        assert querier.failures == []
        assert not list(fake.lists("services"))[1:], "a reset watch needs a re-watch, not a relist"
    assert_clean_log(proc)


async def test_silent_watch_and_list_stalled_mid_body_keep_old_data_and_recover(tmp_path: Path) -> None:
    """A watch that sends its headers and then nothing, and a LIST cut off mid-body, until they resume."""
    fake = FakeKube()
    expected = populate(fake, 10)
    async with cluster(tmp_path, fake=fake) as (fake, proc):
        await wait_answer(proc, name("svc9"), expected[name("svc9")])
        await fake.wait_watching(2)
        with Querier(proc, expected) as querier:
            # every services watch goes silent: no events, no bookmarks, the connection stays open
            fake.inject(resource="services", verb="watch", mode="stall")
            watches = sum(1 for r in fake.requests if r.verb == "watch" and r.resource == "services")
            fake.end_watches()
            async with asyncio.timeout(10):
                while sum(1 for r in fake.requests if r.verb == "watch" and r.resource == "services") == watches:
                    await asyncio.sleep(0.01)
            fake.put(service("default", "during-stall", ["fd00:10:96::5a"]))
            await asyncio.sleep(1.0)  # the stall lasts a while; the queries keep going meanwhile
            fake.clear_faults()  # the watch resumes and delivers what happened meanwhile
            await wait_answer(proc, name("during-stall"), {"fd00:10:96::5a"})

            # a relist (after 410) whose first page stops halfway through its body: the old data stays
            fake.inject(resource="services", verb="list", mode="stall", times=1)
            lists = len(list(fake.lists("services")))
            fake.send_error_410()
            fake.put(service("default", "svc3", ["fd00:10:96::4", "fd00:10:96::333"]))
            fake.compact()
            async with asyncio.timeout(10):
                while len(list(fake.lists("services"))) == lists:
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.5)
            fake.clear_faults()
            await wait_answer(proc, name("svc3"), {"fd00:10:96::4", "fd00:10:96::333"})
            fake.put(service("default", "after-stalls", ["fd00:10:96::5b"]))
            await wait_answer(proc, name("after-stalls"), {"fd00:10:96::5b"})
        assert querier.count > 50
        assert querier.failures == []
    assert_clean_log(proc)


async def test_api_answering_500_and_410_in_turns(tmp_path: Path) -> None:
    """Every request (list and watch, both kinds) gets 500 or 410 in turns for two seconds, then all is well."""
    fake = FakeKube()
    expected = populate(fake, 10)
    async with cluster(tmp_path, fake=fake) as (fake, proc):
        await wait_answer(proc, name("svc9"), expected[name("svc9")])
        await fake.wait_watching(2)
        mark = len(proc.lines)
        with Querier(proc, expected) as querier:
            fault = fake.inject(statuses=(500, 410))
            fake.end_watches()
            fake.put(service("default", "svc4", ["fd00:10:96::5", "fd00:10:96::444"]))  # during the fault
            await asyncio.sleep(2.0)
            fake.clear_faults()
            assert fault.served >= 6, "the fault did not see enough requests to be a fault"
            fake.put(service("default", "after-errors", ["fd00:10:96::5c"]))
            # the backoff grew during the fault (0.2 s doubling): recovery takes at most a few seconds
            await wait_answer(proc, name("after-errors"), {"fd00:10:96::5c"}, timeout=12)
            await wait_answer(proc, name("svc4"), {"fd00:10:96::5", "fd00:10:96::444"})
        assert querier.count > 50
        assert querier.failures == []
        lines = _api_lines(proc, mark)
        assert any("recovered" in line for line in lines), "\n".join(lines)
        # one line per failure streak and per relist, not a flood: 2 s of faults stay a handful of lines
        assert len(lines) < 60, "\n".join(lines)
    assert_clean_log(proc)


# ---- the same stalls with shortened timeouts (in-process: the timeouts are InformerSettings) ----------------

QUICK = dataclasses.replace(INFORMER_FAST, inactivity_timeout=0.5, list_timeout=1.0, backoff_max=0.2)


@pytest.fixture
async def fake() -> AsyncIterator[FakeKube]:
    server = FakeKube()
    await server.start()
    yield server
    await server.stop()


async def test_stalls_that_never_end_are_abandoned_by_the_informer_timeouts(
    fake: FakeKube, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A silent watch is given up after inactivity_timeout, a stalled list page after list_timeout.

    Here the stalled requests are never released: only dnsd's own timeouts can end them.
    """
    for i in range(5):
        fake.put(service("default", f"svc{i}", [f"fd00:10:96::{i + 1:x}"]))
    with caplog.at_level(logging.DEBUG, logger="dnsd"):
        async with source(fake, tmp_path, QUICK) as zone:
            await eventually(lambda: zone.synced)
            await fake.wait_watching(2)
            fake.inject(resource="services", verb="watch", mode="stall", times=1)
            fake.end_watches()
            await asyncio.sleep(0.1)  # the re-watch is now open and silent
            fake.put(service("default", "after-silence", ["fd00:10:96::61"]))
            assert aaaa(zone, name("svc0")) == {"fd00:10:96::1"}
            await eventually(lambda: aaaa(zone, name("after-silence")) == {"fd00:10:96::61"}, timeout=5)

            fake.inject(resource="services", verb="list", mode="stall", times=1)
            fake.send_error_410()
            fake.put(service("default", "svc1", ["fd00:10:96::62"]))
            await asyncio.sleep(0.3)  # the relist is stuck halfway; the old data is still in the zone
            assert aaaa(zone, name("svc1")) == {"fd00:10:96::2"}
            assert aaaa(zone, name("svc4")) == {"fd00:10:96::5"}
            await eventually(lambda: aaaa(zone, name("svc1")) == {"fd00:10:96::62"}, timeout=5)
    assert fake.faults == []  # both stalls really happened
    assert not [r for r in caplog.records if r.exc_info], "an exception was logged with a traceback"
    messages = [r.getMessage() for r in caplog.records]
    assert any("watch failed: no data from the API server in time" in m for m in messages), messages
    assert any("list failed: no data from the API server in time" in m for m in messages), messages


async def test_a_watch_silent_after_its_headers_is_noticed_within_its_timeout_plus_grace(
    fake: FakeKube, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """inactivity_timeout is long here (60 s): only the watch's own timeoutSeconds plus the grace end it.

    The stalled watch never sends a line after its headers and is never released by the server.
    """
    settings = dataclasses.replace(INFORMER_FAST, watch_timeout=1.0, watch_grace=1.0, inactivity_timeout=60.0,
                                   backoff_max=0.2)
    fake.put(service("default", "svc0", ["fd00:10:96::1"]))
    with caplog.at_level(logging.DEBUG, logger="dnsd"):
        async with source(fake, tmp_path, settings) as zone:
            await eventually(lambda: zone.synced)
            await fake.wait_watching(2)
            fake.inject(resource="services", verb="watch", mode="stall", times=1)
            fake.end_watches()
            await asyncio.sleep(0.1)  # the re-watch is now open and silent
            fake.put(service("default", "after-silence", ["fd00:10:96::61"]))
            # timeoutSeconds is 1-2 s, the grace 1 s: well within 15 s, far below the 60 s inactivity limit
            await eventually(lambda: aaaa(zone, name("after-silence")) == {"fd00:10:96::61"}, timeout=15)
    assert fake.faults == []
    messages = [r.getMessage() for r in caplog.records]
    assert any("watch failed: no data from the API server in time" in m for m in messages), messages


# ---- the forwarding upstream misbehaving -----------------------------------------------------------------------


class FakeUpstream:
    """A tiny resolver on 127.0.0.1 (UDP and TCP, one port) whose behaviour `mode` switches at any time.

    Modes: `ok` (A 1.2.3.4 for every name, NODATA with an SOA for other types), `timeout` (silence),
    `servfail`, `garbage` (random bytes, some of them starting with the query's ID and QR so that they
    pass the first checks), `tcp-garbage` (UDP answers are truncated, TCP answers are garbage or the
    connection is closed without one). It runs on its own thread, so it can serve a synchronous test.
    """

    def __init__(self) -> None:
        self.mode = "ok"
        self.queries = 0
        self.rng = random.Random(99)
        self._stop = threading.Event()
        self.udp, self.tcp = self._bind()
        self.port = self.udp.getsockname()[1]
        self._threads: list[threading.Thread] = []

    @staticmethod
    def _bind() -> tuple[socket.socket, socket.socket]:
        for _ in range(50):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind(("127.0.0.1", 0))
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                tcp.bind(("127.0.0.1", udp.getsockname()[1]))
            except OSError:
                udp.close()
                tcp.close()
                continue
            tcp.listen(16)
            return udp, tcp
        raise RuntimeError("no free loopback port for the fake upstream")

    def start(self) -> FakeUpstream:
        for target in (self._serve_udp, self._serve_tcp):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        self.udp.close()
        self.tcp.close()
        for thread in self._threads:
            thread.join(2)

    def _answer(self, data: bytes, tcp: bool) -> bytes | None:
        self.queries += 1
        mode = self.mode
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return None
        if mode == "timeout":
            return None
        if mode == "garbage" or (mode == "tcp-garbage" and tcp):
            junk = self.rng.randbytes(self.rng.randint(0, 80))
            return data[:2] + b"\x81\x80" + junk if self.rng.random() < 0.5 else junk
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA
        if mode == "servfail":
            response.set_rcode(dns.rcode.SERVFAIL)
            return response.to_wire()
        if mode == "tcp-garbage":
            response.flags |= dns.flags.TC
            return response.to_wire()
        question = query.question[0]
        if question.rdtype == dns.rdatatype.A:
            response.answer.append(dns.rrset.from_text(question.name, 60, "IN", "A", "1.2.3.4"))
        else:
            response.authority.append(dns.rrset.from_text(
                "example.test.", 60, "IN", "SOA", "ns.example.test. host.example.test. 1 2 3 4 60"))
        return response.to_wire()

    def _serve_udp(self) -> None:
        self.udp.settimeout(0.1)
        while not self._stop.is_set():
            try:
                data, addr = self.udp.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            reply = self._answer(data, tcp=False)
            if reply is not None:
                self.udp.sendto(reply, addr)

    def _serve_tcp(self) -> None:
        self.tcp.settimeout(0.1)
        while not self._stop.is_set():
            try:
                conn, _ = self.tcp.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    length = struct.unpack("!H", conn.recv(2, socket.MSG_WAITALL))[0]
                    reply = self._answer(conn.recv(length, socket.MSG_WAITALL), tcp=True)
                    if reply is not None and self.rng.random() < 0.7:
                        conn.sendall(struct.pack("!H", len(reply) + self.rng.choice([0, 0, 5])) + reply)
                except (OSError, struct.error):
                    pass


class ZoneQuerier:
    """A thread asking dnsd for known names in a loop; every wrong, slow or missing answer is recorded."""

    def __init__(self, proc: DnsdProcess, expected: dict[str, list[str]], limit: float = 1.0) -> None:
        self.proc = proc
        self.expected = expected
        self.limit = limit
        self.failures: list[str] = []
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for qname, wanted in self.expected.items():
                started = time.monotonic()
                try:
                    reply = self.proc.query(qname, "AAAA", timeout=self.limit)
                except (dns.exception.Timeout, OSError) as exc:
                    self.failures.append(f"{qname}: {type(exc).__name__}")
                    continue
                self.count += 1
                found = rdata_texts(reply, "AAAA")
                if reply.rcode() != dns.rcode.NOERROR or found != wanted:
                    self.failures.append(f"{qname}: {dns.rcode.to_text(reply.rcode())} {found}")
                elif time.monotonic() - started > self.limit:
                    self.failures.append(f"{qname}: slow ({time.monotonic() - started:.2f} s)")
            time.sleep(0.005)

    def __enter__(self) -> ZoneQuerier:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def forwarding(upstream: FakeUpstream) -> Iterator[DnsdProcess]:
    """dnsd authoritative for the example zone, forwarding everything else to the fake upstream."""
    with DnsdProcess(*ZONE_ARGS, "--recursion", "forward", "--forwarder", f"127.0.0.1:{upstream.port}") as proc:
        yield proc


_names = (f"q{i}.example.test" for i in range(1_000_000))


def _fresh() -> str:
    """A name never asked before, so that the answer cannot come from dnsd's cache."""
    return next(_names)


async def _timed(proc: DnsdProcess, qname: str, qtype: str, limit: float) -> tuple[dns.message.Message, float]:
    query = dns.message.make_query(qname, qtype)  # RD set: a recursive query
    started = time.monotonic()
    reply = await dns.asyncquery.udp(query, proc.host, port=proc.port, timeout=limit)
    return reply, time.monotonic() - started


def _concurrently(*calls: tuple[DnsdProcess, str, str, float]) -> list[tuple[dns.message.Message, float]]:
    async def run() -> list[tuple[dns.message.Message, float]]:
        return list(await asyncio.gather(*(_timed(*call) for call in calls)))

    return asyncio.run(run())


def _assert_resolves(proc: DnsdProcess) -> None:
    """A fresh name resolves through the upstream (A directly, AAAA by DNS64 synthesis), quickly."""
    (a, a_time), (aaaa_reply, aaaa_time) = _concurrently(
        (proc, _fresh(), "A", 3.0), (proc, _fresh(), "AAAA", 3.0))
    assert rdata_texts(a, "A") == ["1.2.3.4"] and a.flags & dns.flags.RA
    assert rdata_texts(aaaa_reply, "AAAA") == ["64:ff9b::102:304"]
    assert a_time < 1.0 and aaaa_time < 1.0


def _upstream_fault(proc: DnsdProcess, upstream: FakeUpstream, mode: str, a_limit: float,
                    aaaa_limit: float) -> None:
    """Under `mode`: SERVFAIL for fresh names within the limits, cached and zone answers unaffected."""
    _assert_resolves(proc)
    cached = _fresh()
    assert rdata_texts(proc.query(cached, "A", rd=True), "A") == ["1.2.3.4"]
    asked = upstream.queries
    with ZoneQuerier(proc, {GOOD_NAME: [GOOD_ADDRESS]}) as querier:
        upstream.mode = mode
        try:
            # the client waits at most a few seconds (dnsd's upstream timeout x tries), then gets SERVFAIL
            (a, a_time), (aaaa_reply, aaaa_time), (again, _) = _concurrently(
                (proc, _fresh(), "A", a_limit + 2), (proc, _fresh(), "AAAA", aaaa_limit + 2),
                (proc, cached, "A", 1.0))
            assert a.rcode() == dns.rcode.SERVFAIL, a
            assert aaaa_reply.rcode() == dns.rcode.SERVFAIL, aaaa_reply
            assert a_time < a_limit and aaaa_time < aaaa_limit, (a_time, aaaa_time)
            assert rdata_texts(again, "A") == ["1.2.3.4"], "a cached answer was lost to the upstream fault"
            assert upstream.queries > asked, "the fault was never exercised"
            _until(lambda: querier.count >= 20, timeout=5)  # zone queries all through the fault
        finally:
            upstream.mode = "ok"
        _assert_resolves(proc)  # recovery: the very next query gets through
    assert querier.count >= 20
    assert querier.failures == [], "zone answers suffered from the upstream fault"
    assert_clean_log(proc)


def test_upstream_timing_out(forwarding: DnsdProcess, upstream: FakeUpstream) -> None:
    # A: 2 tries x 1.5 s; AAAA: the AAAA and then the A lookup for DNS64, capped by the 6 s query limit
    _upstream_fault(forwarding, upstream, "timeout", a_limit=4.5, aaaa_limit=7.5)


def test_upstream_answering_servfail(forwarding: DnsdProcess, upstream: FakeUpstream) -> None:
    _upstream_fault(forwarding, upstream, "servfail", a_limit=1.0, aaaa_limit=1.0)


def test_upstream_answering_garbage(forwarding: DnsdProcess, upstream: FakeUpstream) -> None:
    # garbage is ignored like a spoofed datagram (RFC 5452 9.1): the real answer is awaited until the timeout
    _upstream_fault(forwarding, upstream, "garbage", a_limit=4.5, aaaa_limit=7.5)


def test_upstream_truncating_then_failing_over_tcp(forwarding: DnsdProcess, upstream: FakeUpstream) -> None:
    _upstream_fault(forwarding, upstream, "tcp-garbage", a_limit=4.5, aaaa_limit=7.5)


class MalformedRecordsUpstream(FakeUpstream):
    """Answers that parse as DNS messages but carry records whose rdata is malformed for their type."""

    variant = "short-a"

    def _answer(self, data: bytes, tcp: bool) -> bytes | None:
        self.queries += 1
        query = dns.message.from_wire(data)
        question = query.question[0]
        qname = question.name.to_wire()
        header = struct.pack("!HHHHHH", query.id, 0x8180, 1, 1, 0, 0)
        head = header + qname + struct.pack("!HH", question.rdtype, 1)
        if self.variant == "short-a":  # an A (or AAAA) record of 3 octets
            return head + b"\xc0\x0c" + struct.pack("!HHIH", question.rdtype, 1, 60, 3) + b"\x01\x02\x03"
        if self.variant == "cname-junk":  # a CNAME whose rdata has bytes after the target name
            target = b"\x06target\x07example\x00"
            record = b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 60, len(target) + 4) + target + b"JUNK"
            return head + record
        # a TXT record whose one string claims 9 octets and has 2
        return head + b"\xc0\x0c" + struct.pack("!HHIH", 16, 1, 60, 3) + b"\x09ab"


def test_upstream_answering_malformed_records_never_reaches_the_client() -> None:
    """Records that are well framed but malformed for their type must not be passed on as they are.

    dnsd/recursor/message.py checks framing (lengths, names, pointers) but not rdata against its type:
    an A record of 3 octets, or a CNAME target followed by junk, is kept and re-emitted, and the
    client (dnspython, and any validating resolver) cannot parse dnsd's reply. A SERVFAIL, or the reply
    without the bad record, would both do; a malformed message will not.
    """
    upstream = MalformedRecordsUpstream().start()
    failures = []
    try:
        with DnsdProcess(*ZONE_ARGS, "--recursion", "forward", "--forwarder", f"127.0.0.1:{upstream.port}",
                         "--no-dns64") as proc:
            for variant, qtype in (("short-a", "A"), ("short-a", "AAAA"), ("cname-junk", "A"), ("txt-bad", "TXT")):
                upstream.variant = variant
                query = dns.message.make_query(f"{variant}-{qtype}.example.test", qtype)
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.settimeout(8)
                    sock.sendto(query.to_wire(), (proc.host, proc.port))
                    reply = sock.recv(65535)
                try:
                    dns.message.from_wire(reply)
                except dns.exception.DNSException as exc:
                    failures.append(f"{variant}/{qtype}: {exc!r}: {reply.hex()}")
            assert_clean_log(proc)
    finally:
        upstream.stop()
    assert failures == []


# ---- the manifests file misbehaving ---------------------------------------------------------------------------

EXPECTED = {GOOD_NAME: [GOOD_ADDRESS], f"frontend.shop.svc.{Z}": ["2001:db8:42::20"]}
EXTRA = """---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec: {{clusterIP: "{ip}", clusterIPs: ["{ip}"]}}
"""


def _serial(proc: DnsdProcess) -> int:
    return int(proc.query(Z, "SOA").answer[0][0].serial)


def _until(check: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def _serves(proc: DnsdProcess, svc: str, ip: str) -> Callable[[], bool]:
    return lambda: rdata_texts(proc.query(f"{svc}.default.svc.{Z}", "AAAA"), "AAAA") == [ip]


def _errors(proc: DnsdProcess, start: int) -> list[str]:
    return [line for line in proc.lines[start:] if " ERROR " in line]


def test_manifests_file_vanishing_replaced_and_restored_loses_no_answer(tmp_path: Path) -> None:
    """Vanish and return unchanged, a directory in its place, not UTF-8, an atomic rename: data always served."""
    base = EXAMPLE_MANIFESTS.read_bytes()
    path = tmp_path / "cluster.yaml"
    path.write_bytes(base)
    with DnsdProcess("--zone", Z, "--source", f"file:{path}", "--recursion", "off") as proc, \
            ZoneQuerier(proc, EXPECTED) as querier:
        serial = _serial(proc)

        # gone for several polls, then back with the same bytes: nothing to change, not even the serial
        mark = len(proc.lines)
        path.unlink()
        proc.wait_for_log(r"cannot read.*keeping the last good data", timeout=3, start=mark)
        time.sleep(0.8)
        path.write_bytes(base)
        time.sleep(0.8)
        assert _serial(proc) == serial
        assert len(_errors(proc, mark)) == 1, "one error line per bad state, not one per poll"

        # a directory where the file was, then bytes that are not UTF-8: errors, data kept
        mark = len(proc.lines)
        path.unlink()
        path.mkdir()
        proc.wait_for_log(r"cannot read.*keeping the last good data", timeout=3, start=mark)
        path.rmdir()
        path.write_bytes(base + b"\n# \xff\xfe not UTF-8\n")
        time.sleep(0.6)  # a few polls of the broken file (the log line is test_a_new_bad_state_is_logged_again's)
        assert _serves(proc, "sample-service", GOOD_ADDRESS)()

        # fixed by an atomic rename (how editors and config tools write): the new data is served
        staged = tmp_path / ".cluster.yaml.tmp"
        staged.write_bytes(base + EXTRA.format(name="renamed", ip="2001:db8:42::77").encode())
        os.replace(staged, path)
        _until(_serves(proc, "renamed", "2001:db8:42::77"))
        assert _serial(proc) > serial
    assert querier.count > 100
    assert querier.failures == []
    assert_clean_log(proc)


def test_manifests_from_a_configmap_volume_symlink_swaps_and_dangling(tmp_path: Path) -> None:
    """kubelet's AtomicWriter: the file is a symlink through `..data` to a timestamped directory, swapped whole.

    A swap must be picked up, and a moment where `..data` points at a removed directory is an outage
    of the file, not of the answers.
    """
    base = EXAMPLE_MANIFESTS.read_bytes()
    volume = tmp_path / "volume"
    volume.mkdir()

    def publish(generation: int, body: bytes) -> Path:
        target = volume / f"..2024_01_01_00_00_0{generation}"
        target.mkdir()
        (target / "cluster.yaml").write_bytes(body)
        link = volume / "..data_tmp"
        link.symlink_to(target.name)
        os.replace(link, volume / "..data")
        return target

    first = publish(1, base)
    (volume / "cluster.yaml").symlink_to("..data/cluster.yaml")
    path = volume / "cluster.yaml"
    with DnsdProcess("--zone", Z, "--source", f"file:{path}", "--recursion", "off") as proc, \
            ZoneQuerier(proc, EXPECTED) as querier:
        second = publish(2, base + EXTRA.format(name="swapped", ip="2001:db8:42::78").encode())
        shutil.rmtree(first)
        _until(_serves(proc, "swapped", "2001:db8:42::78"))

        mark = len(proc.lines)
        shutil.rmtree(second)  # `..data` now dangles: the file is gone
        proc.wait_for_log(r"cannot read.*keeping the last good data", timeout=3, start=mark)
        time.sleep(0.6)
        assert _serves(proc, "swapped", "2001:db8:42::78")()
        publish(3, base + EXTRA.format(name="swapped", ip="2001:db8:42::79").encode())
        _until(_serves(proc, "swapped", "2001:db8:42::79"))
    assert querier.count > 50
    assert querier.failures == []
    assert_clean_log(proc)


def test_a_new_bad_state_of_the_manifests_file_is_logged_again(tmp_path: Path) -> None:
    """The operator fixes one problem and makes another: the log must say what is wrong now.

    `ManifestSource.run` promises "one clear line per bad state, not one per poll", but resets its
    `reported` flag only after a good load, so the second of two different bad states in a row is
    silent and the log keeps naming a problem that is gone.
    """
    path = tmp_path / "cluster.yaml"
    path.write_bytes(EXAMPLE_MANIFESTS.read_bytes())
    with DnsdProcess("--zone", Z, "--source", f"file:{path}", "--recursion", "off") as proc:
        mark = len(proc.lines)
        path.unlink()
        path.mkdir()
        proc.wait_for_log(r"cannot read: Is a directory; keeping the last good data", timeout=3, start=mark)
        path.rmdir()
        path.write_bytes(b"apiVersion: v1\nkind: List\nitems: []\n# \xff\xfe\n")
        proc.wait_for_log(r"not UTF-8 text; keeping the last good data", timeout=3, start=mark)
