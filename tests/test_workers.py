"""`--workers N`: several processes on the same ports, one watch on the API, identical answers.

Every query here goes out from a fresh socket (a new source port), so the kernel's SO_REUSEPORT
hashing spreads them over all the processes; the per-worker counter shows that each one answered.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
import urllib.request
from pathlib import Path

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from tests.dnsd_process import EXAMPLE_MANIFESTS, DnsdProcess
from tests.fakekube import FakeKube, endpoint_slice, service

Z = "c2.k8s.ooo"
NAME = f"sample-service.default.svc.{Z}"


def readyz(proc: DnsdProcess) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{proc.http_port}/readyz", timeout=3) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def followers(proc: DnsdProcess) -> list[int]:
    assert proc.proc is not None
    children = Path(f"/proc/{proc.proc.pid}/task/{proc.proc.pid}/children").read_text().split()
    return [int(pid) for pid in children]


async def ask_many(proc: DnsdProcess, qname: str, qtype: str, count: int) -> list[bytes]:
    """`count` queries, each from its own socket; the replies' bytes with the ID zeroed."""
    async def one(i: int) -> bytes:
        query = dns.message.make_query(qname, qtype, id=i + 1)
        query.flags &= ~dns.flags.RD
        reply = await dns.asyncquery.udp(query, proc.host, port=proc.port, timeout=3)
        assert reply.id == i + 1
        return b"\x00\x00" + reply.to_wire()[2:]
    return await asyncio.gather(*(one(i) for i in range(count)))


async def wait_all(proc: DnsdProcess, check: str, timeout: float = 5.0) -> None:
    """Until 40 queries from 40 ports all carry `check` in their answer text."""
    deadline = time.monotonic() + timeout
    while True:
        replies = await ask_many(proc, NAME, "AAAA", 40)
        messages = [dns.message.from_wire(r) for r in replies]
        texts = {m.answer[0].to_text() if m.answer else "" for m in messages}
        if all(check in t for t in texts):
            return
        assert time.monotonic() < deadline, texts
        await asyncio.sleep(0.05)


async def test_workers_share_the_port_and_answer_identically(tmp_path: Path) -> None:
    manifests = tmp_path / "cluster.yaml"
    shutil.copy(EXAMPLE_MANIFESTS, manifests)
    proc = DnsdProcess("--zone", Z, "--source", f"file:{manifests}", "--recursion", "off", "--workers", "3",
                       http="127.0.0.1:0", lame_duck="0.5")
    await asyncio.to_thread(proc.start)
    try:
        async with asyncio.timeout(15):
            while readyz(proc) != 200:  # ready only once every follower reported bound and synced
                await asyncio.sleep(0.1)
        assert len(followers(proc)) == 2

        replies = await ask_many(proc, NAME, "AAAA", 200)
        assert len(set(replies)) == 1  # the same bytes from every process
        soas = await ask_many(proc, Z, "SOA", 60)
        assert len(set(soas)) == 1  # the same serial too

        await asyncio.sleep(1.3)  # followers report their counters once a second
        per_worker = {labels["worker"]: value for labels, value in proc.metric_samples("dnsd_worker_queries_total")}
        assert set(per_worker) == {"0", "1", "2"} and all(v > 0 for v in per_worker.values()), per_worker
        total = proc.metric("dnsd_queries_total")
        assert total == sum(per_worker.values()) >= 260

        # A change reaches every process, under one new serial.
        manifests.write_text(manifests.read_text().replace("2001:db8:42::10", "2001:db8:42::99"))
        await wait_all(proc, "2001:db8:42::99")
        assert len(set(await ask_many(proc, Z, "SOA", 60))) == 1
        assert set(await ask_many(proc, Z, "SOA", 1)) != set(soas)

        # A follower that dies is replaced, and the replacement catches up with the current data.
        victim = followers(proc)[0]
        os.kill(victim, signal.SIGKILL)
        async with asyncio.timeout(10):
            while victim in followers(proc) or len(followers(proc)) < 2 or readyz(proc) != 200:
                await asyncio.sleep(0.1)
        await wait_all(proc, "2001:db8:42::99")
        assert "worker 1 exited" in proc.output() or "worker 2 exited" in proc.output()
    finally:
        code = await asyncio.to_thread(proc.stop)
        if proc.proc is not None and proc.proc.stdout is not None:
            proc.proc.stdout.close()
    assert code == 0
    assert "Traceback" not in proc.output()


async def test_one_watch_per_pod_whatever_the_workers(tmp_path: Path) -> None:
    fake = FakeKube()
    fake.put(service("default", "web", ["fd00:10:96::1"]))
    fake.put(endpoint_slice("default", "web-abc", "web", ["fd00:10:244::1"]))
    await fake.start()
    proc = DnsdProcess("--zone", Z, "--source", "kubernetes", "--kubeconfig",
                       str(fake.write_kubeconfig(tmp_path / "kubeconfig")), "--recursion", "off",
                       "--workers", "3", http="127.0.0.1:0")
    await asyncio.to_thread(proc.start)
    try:
        async with asyncio.timeout(15):
            while await asyncio.to_thread(readyz, proc) != 200:
                await asyncio.sleep(0.1)
        await fake.wait_watching(2)
        assert fake.watching("services") == 1 and fake.watching("endpointslices") == 1
        assert sum(1 for _ in fake.lists()) == 2  # one list per kind, not one per worker

        fake.put(service("default", "web", ["fd00:10:96::2"]))
        deadline = time.monotonic() + 5
        while True:
            replies = await ask_many(proc, f"web.default.svc.{Z}", "AAAA", 40)
            addresses = {rd.to_text() for r in replies for rrset in dns.message.from_wire(r).answer
                         if rrset.rdtype == dns.rdatatype.AAAA for rd in rrset}
            if addresses == {"fd00:10:96::2"}:
                break
            assert time.monotonic() < deadline, addresses
            await asyncio.sleep(0.05)
        assert fake.watching("services") == 1
    finally:
        await asyncio.to_thread(proc.stop)
        if proc.proc is not None and proc.proc.stdout is not None:
            proc.proc.stdout.close()
        await fake.stop()
