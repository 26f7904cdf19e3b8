"""A serial per zone: the real dnsd serving two `--zone`s and a reverse zone, asked with real queries.

A change whose records lie in one zone moves only that zone's SOA serial; NOTIFY goes only for the
zones whose serial moved; an IXFR of a zone from its previous serial carries exactly its own changes
(dnspython applies it and ends with the zone a fresh AXFR gives) after changes in both zones; a
zone's serial never goes backwards across a relist after 410 nor a restart; `--workers` followers
answer the same per-zone serials (a restarted follower too); the Internet's view of a zone keeps its
serial when only an unpublished address changed; real Knot secondaries, one per zone, transfer only
the zone that changed. Zone A (`a.test`) holds the Service names, zone B (`b.test`) a
Service's ExternalDNS hostname, and `2001:db8:42::/48` the PTRs of the addresses inside it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import dns.asyncquery
import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rdatatype
import dns.rrset
import dns.xfr
import dns.zone
import pytest

from tests.dnsd_process import DnsdProcess, rdata_texts
from tests.fakekube import FakeKube, service
from tests.hierarchy import MissingTool, require
from tests.secondaries import Secondary, key_file
from tests.started_dnsd import free_port

A, B, R = "a.test", "b.test", "2.4.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
ZONES = (A, B, R)
ZONE_ARGS = ("--zone", A, "--zone", B, "--reverse-zone", "2001:db8:42::/48", "--recursion", "off")
CLUSTER, INTERNET = "127.0.0.1", "127.0.0.2"


def manifests(web: tuple[str, ...], host: str, api: str) -> str:
    """web: its addresses, with `host` (in zone B) as its hostname annotation; api: one address, zone A only."""
    ips = ", ".join(f'"{a}"' for a in web)
    return f"""\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata:
    name: web
    namespace: default
    annotations: {{external-dns.kubernetes.io/hostname: "{host}"}}
  spec:
    clusterIPs: [{ips}]
    ports: [{{name: http, port: 80, protocol: TCP}}]
- apiVersion: v1
  kind: Service
  metadata: {{name: api, namespace: default}}
  spec:
    clusterIPs: ["{api}"]
    ports: [{{name: http, port: 80, protocol: TCP}}]
"""


def write(path: Path, text: str) -> None:
    """Replace the file atomically, its mtime (the source's version) at least a second later."""
    previous = path.stat().st_mtime if path.exists() else 0.0
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    stamp = max(time.time(), previous + 1.0)
    os.utime(tmp, (stamp, stamp))
    os.replace(tmp, path)


def ask(proc: DnsdProcess, qname: str, qtype: str, source: str = CLUSTER) -> dns.message.Message:
    message = dns.message.make_query(qname, qtype)
    message.flags &= ~dns.flags.RD
    return dns.query.udp(message, proc.host, port=proc.port, timeout=3, source=source)


def serials(proc: DnsdProcess, source: str = CLUSTER) -> dict[str, int]:
    """The SOA serial of every zone, by real queries."""
    return {zone: int(ask(proc, zone, "SOA", source).answer[0][0].serial) for zone in ZONES}


def wait_until(check: object, proc: DnsdProcess, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, proc.output()[-4000:]
        time.sleep(0.05)


def newer(a: int, b: int) -> bool:
    """RFC 1982: a is greater than b."""
    return a != b and ((a > b and a - b < 2**31) or (a < b and b - a > 2**31))


class NotifyListener:
    """A UDP listener that records every NOTIFY (zone, serial) and acknowledges it, as a secondary does."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.received: list[tuple[str, int]] = []
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            message = dns.message.from_wire(data)
            if message.opcode() != dns.opcode.NOTIFY:
                continue
            with self._lock:
                self.received.append((message.question[0].name.to_text().rstrip("."),
                                      int(message.answer[0][0].serial)))
            reply = dns.message.make_response(message)
            reply.flags |= dns.flags.AA
            self.sock.sendto(reply.to_wire(), peer)

    def seen(self) -> list[tuple[str, int]]:
        with self._lock:
            return list(self.received)

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.sock.close()


@contextmanager
def secondary() -> Iterator[NotifyListener]:
    listener = NotifyListener()
    try:
        yield listener
    finally:
        listener.close()


def axfr(proc: DnsdProcess, zone: str) -> dns.zone.Zone:
    copy = dns.zone.Zone(zone)
    dns.query.inbound_xfr(proc.host, copy, port=proc.port, timeout=10)
    return copy


def ixfr_soa_count(proc: DnsdProcess, zone: str, serial: int) -> int:
    query = dns.message.make_query(zone, "IXFR")
    query.authority.append(dns.rrset.from_text(f"{zone}.", 0, "IN", "SOA", f"ns1.{zone}. h.{zone}. {serial} 1 1 1 1"))
    reply = dns.query.tcp(query, proc.host, port=proc.port, timeout=5, one_rr_per_rrset=True)
    return sum(1 for r in reply.answer if r.rdtype == dns.rdatatype.SOA)


def test_a_change_in_one_zone_moves_only_its_serial_notify_and_ixfr(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    write(path, manifests(("2001:db8:42::1",), "www.b.test", "2001:db8:77::1"))
    with secondary() as notified, DnsdProcess(
            *ZONE_ARGS, "--source", f"file:{path}", "--transfer-allow", "127.0.0.0/8",
            "--notify", f"127.0.0.1:{notified.port}") as proc:
        start = serials(proc)
        assert len(set(start.values())) == 1  # the first full state: every zone at the file's version
        wait_until(lambda: set(notified.seen()) == {(z, start[z]) for z in ZONES}, proc)
        copies = {zone: axfr(proc, zone) for zone in ZONES}

        # 1. the hostname moves within zone B: only B's serial moves, only B is notified
        write(path, manifests(("2001:db8:42::1",), "www2.b.test", "2001:db8:77::1"))
        wait_until(lambda: serials(proc)[B] != start[B], proc)
        one = serials(proc)
        assert newer(one[B], start[B]) and one[A] == start[A] and one[R] == start[R]
        assert rdata_texts(ask(proc, "www2.b.test", "AAAA"), "AAAA") == ["2001:db8:42::1"]

        # 2. a Service of zone A only (its address is outside the reverse zone): only A moves
        write(path, manifests(("2001:db8:42::1",), "www2.b.test", "2001:db8:77::2"))
        wait_until(lambda: serials(proc)[A] != start[A], proc)
        two = serials(proc)
        assert newer(two[A], start[A]) and two[B] == one[B] and two[R] == start[R]
        wait_until(lambda: (A, two[A]) in notified.seen(), proc)
        # NOTIFY goes out in the order of the serial moves: by the time A's arrived, any NOTIFY the
        # first change caused had arrived too; it caused exactly one, for B
        assert set(notified.seen()) == {*((z, start[z]) for z in ZONES), (B, one[B]), (A, two[A])}

        # 3. web's address: its name (A), its hostname (B) and its PTR (R) all change
        write(path, manifests(("2001:db8:42::2",), "www2.b.test", "2001:db8:77::2"))
        wait_until(lambda: serials(proc)[R] != start[R], proc)
        three = serials(proc)
        assert all(newer(three[z], two[z]) for z in ZONES), (two, three)
        wait_until(lambda: {(z, three[z]) for z in ZONES} <= set(notified.seen()), proc)

        # IXFR of each zone from its first serial: one old/new SOA pair per move of that zone only
        assert ixfr_soa_count(proc, A, start[A]) == 2 + 2 * 2  # moves 2 and 3
        assert ixfr_soa_count(proc, B, start[B]) == 2 + 2 * 2  # moves 1 and 3
        assert ixfr_soa_count(proc, R, start[R]) == 2 + 2 * 1  # move 3
        assert ixfr_soa_count(proc, B, one[B]) == 2 + 2 * 1
        for zone in ZONES:  # dnspython applies each diff to its copy: exactly the zone a fresh AXFR gives
            copy = copies[zone]
            query, _ = dns.xfr.make_query(copy, serial=start[zone])
            dns.query.inbound_xfr(proc.host, copy, query, port=proc.port, timeout=10)
            fresh = axfr(proc, zone)
            assert copy.get_soa().serial == fresh.get_soa().serial == three[zone]
            assert copy.to_text() == fresh.to_text()
        assert "www.b.test" not in copies[B].to_text() and "www2" in copies[B].to_text()

        # 4. zone B alone once more, then a restart: no zone's serial goes backwards
        write(path, manifests(("2001:db8:42::2",), "www3.b.test", "2001:db8:77::2"))
        wait_until(lambda: serials(proc)[B] != three[B], proc)
        four = serials(proc)
        assert four[A] == three[A] and four[R] == three[R] and newer(four[B], three[B])
    assert "Traceback" not in proc.output()
    with DnsdProcess(*ZONE_ARGS, "--source", f"file:{path}", "--transfer-allow", "127.0.0.0/8") as restarted:
        again = serials(restarted)
    assert all(again[z] == four[z] or newer(again[z], four[z]) for z in ZONES), (four, again)
    assert again[B] == four[B]  # the newest change was B's: its version is the file's


def test_the_internet_view_keeps_its_serial_when_only_unpublished_data_changes(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    write(path, manifests(("2001:db8:42::1", "fd00:10:96::1"), "www.b.test", "2001:db8:77::1"))
    with DnsdProcess(*ZONE_ARGS, "--source", f"file:{path}", "--allow-recursion", "127.0.0.1/32") as proc:
        cluster, internet = serials(proc, CLUSTER), serials(proc, INTERNET)
        assert cluster == internet
        # the ULA address changes: the cluster sees it in A and B, the Internet sees nothing change
        write(path, manifests(("2001:db8:42::1", "fd00:10:96::2"), "www.b.test", "2001:db8:77::1"))
        wait_until(lambda: "fd00:10:96::2" in rdata_texts(ask(proc, "web.default.svc.a.test", "AAAA"), "AAAA"),
                   proc)
        moved = serials(proc, CLUSTER)
        assert newer(moved[A], cluster[A]) and newer(moved[B], cluster[B]) and moved[R] == cluster[R]
        assert rdata_texts(ask(proc, "web.default.svc.a.test", "AAAA", INTERNET), "AAAA") == ["2001:db8:42::1"]
        assert serials(proc, INTERNET) == internet
        # a published address changes: the Internet's A, B and R move too
        write(path, manifests(("2001:db8:42::3", "fd00:10:96::2"), "www.b.test", "2001:db8:77::1"))
        wait_until(lambda: serials(proc, INTERNET)[R] != internet[R], proc)
        after = serials(proc, INTERNET)
        assert all(newer(after[z], internet[z]) for z in ZONES), (internet, after)
    assert "Traceback" not in proc.output()


# ---- the Kubernetes source, with --workers ---------------------------------------------------------


def web(host: str, address: str = "2001:db8:42::1") -> dict[str, object]:
    return service("default", "web", [address], annotations={"external-dns.kubernetes.io/hostname": host})


async def zone_serials(proc: DnsdProcess, source: str, count: int = 30) -> dict[str, set[int]]:
    """Each zone's SOA serial as `count` queries from as many ports see it (spread over every process)."""
    async def one(zone: str, i: int) -> int:
        query = dns.message.make_query(zone, "SOA", id=i + 1)
        query.flags &= ~dns.flags.RD
        reply = await dns.asyncquery.udp(query, proc.host, port=proc.port, timeout=3, source=source)
        return int(reply.answer[0][0].serial) if reply.answer else -1  # -1: not synced yet (SERVFAIL)
    found: dict[str, set[int]] = {}
    for zone in ZONES:
        found[zone] = set(await asyncio.gather(*(one(zone, i) for i in range(count))))
    return found


async def settle(proc: DnsdProcess, check: object, timeout: float = 20.0, source: str = CLUSTER) -> dict[str, int]:
    """Wait until every process agrees on every zone's serial and `check(serials)` holds; the serials."""
    deadline = time.monotonic() + timeout
    while True:
        found = await zone_serials(proc, source)
        if all(len(s) == 1 and -1 not in s for s in found.values()):
            single = {z: next(iter(s)) for z, s in found.items()}
            if check(single):  # type: ignore[operator]
                return single
        assert time.monotonic() < deadline, (found, proc.output()[-4000:])
        await asyncio.sleep(0.1)


def readyz(proc: DnsdProcess) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{proc.http_port}/readyz", timeout=3) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@asynccontextmanager
async def kube_dnsd(tmp_path: Path, fake: FakeKube) -> AsyncIterator[DnsdProcess]:
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
    proc = DnsdProcess(*ZONE_ARGS, "--source", "kubernetes", "--kubeconfig", str(kubeconfig),
                       "--workers", "2", "--allow-recursion", "127.0.0.1/32", http="127.0.0.1:0")
    await asyncio.to_thread(proc.start)
    try:
        yield proc
    finally:
        await asyncio.to_thread(proc.stop)
        if proc.proc is not None and proc.proc.stdout is not None:
            proc.proc.stdout.close()


async def test_per_zone_serials_from_kubernetes_with_a_follower_a_relist_and_a_restart(tmp_path: Path) -> None:
    fake = FakeKube()
    await fake.start()
    try:
        fake.put(web("www.b.test"))
        fake.put(service("default", "api", ["2001:db8:77::1"]))
        async with kube_dnsd(tmp_path, fake) as proc:
            start = await settle(proc, lambda s: len(set(s.values())) == 1)
            assert start[A] == fake.rv  # the list's newest resourceVersion, in every zone

            # a change in zone B only: both processes answer B's new serial, A and R unchanged
            rv = fake.put(web("www2.b.test"))
            one = await settle(proc, lambda s: s[B] != start[B])
            assert one == {A: start[A], B: rv, R: start[R]}

            # zone A only, then a relist after 410 that also brings a change of zone A it missed
            rv = fake.put(service("default", "api", ["2001:db8:77::2"]))
            two = await settle(proc, lambda s: s[A] != start[A])
            assert two == {A: rv, B: one[B], R: start[R]}
            await fake.wait_watching(2)
            lists = len(list(fake.lists("services")))
            fake.send_error_410()
            rv = fake.put(service("default", "api", ["2001:db8:77::3"]))
            fake.compact()
            three = await settle(proc, lambda s: s[A] != two[A])
            assert len(list(fake.lists("services"))) > lists  # the relist really happened
            assert newer(three[A], two[A]) and three[B] == one[B] and three[R] == start[R]
            assert three[A] == rv
            assert await settle(proc, lambda s: True, source=INTERNET) == three  # all published here

            # a follower killed and started again takes the zone serials over (they are history, not
            # state), in the cluster's view and in the Internet's
            assert proc.proc is not None
            children = Path(f"/proc/{proc.proc.pid}/task/{proc.proc.pid}/children")
            victim = int(children.read_text().split()[0])
            os.kill(victim, signal.SIGKILL)
            async with asyncio.timeout(20):  # replaced, and the replacement bound and synced (/readyz)
                while str(victim) in children.read_text().split() or not children.read_text().split() \
                        or await asyncio.to_thread(readyz, proc) != 200:
                    await asyncio.sleep(0.1)
            for source in (CLUSTER, INTERNET):
                deadline = time.monotonic() + 20
                while (found := await zone_serials(proc, source, 40)) != {z: {three[z]} for z in ZONES}:
                    assert time.monotonic() < deadline and all(s <= {three[z], -1} for z, s in found.items()), found
                    await asyncio.sleep(0.1)

        # a restart lists everything again: every zone at the list's version, none lower than before
        async with kube_dnsd(tmp_path, fake) as proc:
            again = await settle(proc, lambda s: len(set(s.values())) == 1)
            assert all(again[z] == three[z] or newer(again[z], three[z]) for z in ZONES), (three, again)
            # and a change to web's address now moves all three, in every process alike
            rv = fake.put(web("www2.b.test", "2001:db8:42::9"))
            moved = await settle(proc, lambda s: s[R] != again[R])
            assert moved == {A: rv, B: rv, R: rv}
            reply = ask(proc, "www2.b.test", "AAAA")
            assert rdata_texts(reply, "AAAA") == ["2001:db8:42::9"]
        assert "Traceback" not in proc.output()
    finally:
        await fake.stop()


# ---- real Knot secondaries, one per zone ------------------------------------------------------------


def test_knot_secondaries_of_two_zones_transfer_only_the_zone_that_changed(tmp_path: Path) -> None:
    """Knot for zone A and Knot for zone B (refresh timers at two hours: only NOTIFY moves them): a change in
    B reaches B's secondary by IXFR and A's secondary is neither notified nor transfers; a change in both
    reaches both by IXFR, which Knot accepts only when the diff is exact."""
    try:
        require("knotd")
        require("tsig-keygen")
    except MissingTool as exc:
        pytest.fail(str(exc))
    path = tmp_path / "cluster.yaml"
    write(path, manifests(("2001:db8:42::1",), "www.b.test", "2001:db8:77::1"))
    port = free_port()
    knots: dict[str, Secondary] = {}
    flags: list[str] = []
    for zone, label in ((A, "a"), (B, "b")):
        key_path, secret = key_file(tmp_path, f"{label}-key")
        knots[zone] = Secondary("knot", tmp_path / f"knot-{label}", zone, port, f"{label}-key", secret)
        flags += ["--tsig-key-file", str(key_path), "--transfer-allow", f"127.0.0.0/8={label}-key",
                  "--notify", f"127.0.0.1:{knots[zone].port}={label}-key"]

    def transfers(proc: DnsdProcess, key: str, start: int) -> list[str]:
        return [line for line in proc.lines[start:] if "transfer client=" in line and f"key={key}" in line]

    with DnsdProcess(*ZONE_ARGS, "--nameserver", "ns1.a.test=2001:db8::53", "--source", f"file:{path}", *flags,
                     listen=(f"127.0.0.1:{port}",)) as proc:
        try:
            for knot in knots.values():
                knot.start()
            start = serials(proc)
            for zone, knot in knots.items():
                knot.wait_serial(start[zone])

            # zone B only
            mark = len(proc.lines)
            write(path, manifests(("2001:db8:42::1",), "www2.b.test", "2001:db8:77::1"))
            wait_until(lambda: serials(proc)[B] != start[B], proc)
            one = serials(proc)
            knots[B].wait_serial(one[B])
            wait_until(lambda: any("kind=ixfr" in line and "result=incremental" in line
                                   for line in transfers(proc, "b-key", mark)), proc)
            assert knots[B].addresses("www2.b.test") == {"2001:db8:42::1"}
            assert knots[B].query("www.b.test").rcode() == 3  # NXDOMAIN: the old name is gone
            assert one[A] == start[A] and knots[A].serial() == start[A]
            assert not transfers(proc, "a-key", mark)
            # (a NOTIFY of A's unchanged serial may still be a retry of the one sent at start-up)
            assert not [line for line in proc.lines[mark:]
                        if "notify " in line and f"zone={A} " in line and f"serial={start[A]} " not in line]

            # both zones: web's address
            mark = len(proc.lines)
            write(path, manifests(("2001:db8:42::2",), "www2.b.test", "2001:db8:77::1"))
            wait_until(lambda: serials(proc)[A] != start[A], proc)
            two = serials(proc)
            assert newer(two[B], one[B])
            for zone, knot in knots.items():
                knot.wait_serial(two[zone])
                key = "a-key" if zone == A else "b-key"
                wait_until(lambda key=key: any("kind=ixfr" in line and "result=incremental" in line  # type: ignore[misc]
                                               for line in transfers(proc, key, mark)), proc)
                assert "malformed" not in knot.log_text()
            assert knots[A].addresses("web.default.svc.a.test") == {"2001:db8:42::2"}
            assert knots[B].addresses("www2.b.test") == {"2001:db8:42::2"}
        finally:
            for knot in knots.values():
                knot.stop()
    assert "Traceback" not in proc.output()
