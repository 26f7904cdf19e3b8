"""The live source end to end: `python -m dnsd --source kubernetes` against the fake API server.

The fake API server runs in the test's event loop, so every wait here is async (DNS through
`dns.asyncquery`, `dig` through an asyncio subprocess, process start-up in a thread): a blocking call
would stall the API server that dnsd is talking to.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from tests.dnsd_process import DnsdProcess
from tests.fakekube import FakeKube, endpoint_slice, service

ZONE = "c2.k8s.ooo"


def name(svc: str, namespace: str = "default") -> str:
    return f"{svc}.{namespace}.svc.{ZONE}"


async def ask(proc: DnsdProcess, qname: str, qtype: str = "AAAA") -> dns.message.Message:
    query = dns.message.make_query(qname, qtype)
    query.flags &= ~dns.flags.RD
    return await dns.asyncquery.udp(query, proc.host, port=proc.port, timeout=2.0)


async def addresses(proc: DnsdProcess, qname: str) -> tuple[int, set[str]]:
    """(rcode, AAAA addresses) of one query."""
    response = await ask(proc, qname)
    found = {rd.to_text() for rrset in response.answer if rrset.rdtype == dns.rdatatype.AAAA for rd in rrset}
    return response.rcode(), found


async def wait_answer(proc: DnsdProcess, qname: str, expected: set[str], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while (await addresses(proc, qname)) != (dns.rcode.NOERROR, expected):
            await asyncio.sleep(0.02)


async def wait_rcode(proc: DnsdProcess, qname: str, rcode: int, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while (await ask(proc, qname)).rcode() != rcode:
            await asyncio.sleep(0.02)


@asynccontextmanager
async def cluster(
    tmp_path: Path, *args: str, fake: FakeKube | None = None
) -> AsyncIterator[tuple[FakeKube, DnsdProcess]]:
    fake = fake or FakeKube()
    await fake.start()
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
    proc = DnsdProcess(
        "--zone", ZONE, "--source", "kubernetes", "--kubeconfig", str(kubeconfig), "--recursion", "off", *args
    )
    await asyncio.to_thread(proc.start)
    try:
        # ready when it answers the SOA (SERVFAIL would also be an answer; the apex is always served)
        async with asyncio.timeout(20):
            while True:
                try:
                    await ask(proc, ZONE, "SOA")
                    break
                except dns.exception.Timeout:
                    continue
        yield fake, proc
    finally:
        await asyncio.to_thread(proc.stop)
        if proc.proc is not None and proc.proc.stdout is not None:
            proc.proc.stdout.close()  # DnsdProcess.stop() leaves the pipe to the garbage collector
        await fake.stop()


class Querier:
    """Queries names in a loop in the background and records every answer that was not as expected."""

    def __init__(self, proc: DnsdProcess, expected: dict[str, set[str]]) -> None:
        self.proc = proc
        self.expected = expected
        self.failures: list[str] = []
        self.count = 0
        self._task: asyncio.Task[None] | None = None

    async def _loop(self) -> None:
        while True:
            for qname, wanted in self.expected.items():
                try:
                    rcode, found = await addresses(self.proc, qname)
                except dns.exception.Timeout:
                    self.failures.append(f"{qname}: timeout")
                    continue
                self.count += 1
                if rcode != dns.rcode.NOERROR or not found & wanted:
                    self.failures.append(f"{qname}: {dns.rcode.to_text(rcode)} {found}")
            await asyncio.sleep(0.005)

    def __enter__(self) -> Querier:
        self._task = asyncio.create_task(self._loop())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def populate(fake: FakeKube, count: int, namespace: str = "default") -> dict[str, set[str]]:
    expected = {}
    for i in range(count):
        address = f"fd00:10:96::{i + 1:x}"
        fake.put(service(namespace, f"svc{i}", [address]))
        fake.put(endpoint_slice(namespace, f"svc{i}-abc", f"svc{i}", [f"fd00:10:244::{i + 1:x}"]))
        expected[name(f"svc{i}", namespace)] = {address}
    return expected


async def test_servfail_before_sync_403_then_events(tmp_path: Path) -> None:
    fake = FakeKube()
    populate(fake, 3)
    fake.inject(resource="endpointslices", verb="list", status=403)
    async with cluster(tmp_path, fake=fake) as (fake, proc):
        # services are listed, slices are forbidden: not synced, so in-zone names are SERVFAIL
        await asyncio.to_thread(
            proc.wait_for_log,
            r"forbidden: cannot list "
            r"discovery\.k8s\.io/endpointslices at cluster scope; grant get/list/watch",
        )
        assert (await ask(proc, name("svc0"))).rcode() == dns.rcode.SERVFAIL
        fake.clear_faults()
        await wait_answer(proc, name("svc0"), {"fd00:10:96::1"})
        assert sum("forbidden: cannot list" in line for line in proc.lines) == 1

        await fake.wait_watching(2)
        fake.put(service("default", "web", ["fd00:10:96::80"]))  # add
        await wait_answer(proc, name("web"), {"fd00:10:96::80"})
        fake.put(service("default", "web", ["fd00:10:96::81"]))  # modify
        await wait_answer(proc, name("web"), {"fd00:10:96::81"})
        fake.delete("services", "default", "web")  # delete
        await wait_rcode(proc, name("web"), dns.rcode.NXDOMAIN)

        fake.put(service("default", "db", headless=True))
        fake.put(
            endpoint_slice("default", "db-x", "db", ["fd00:10:244::d1", "fd00:10:244::d2"], hostnames=["db-0", "db-1"])
        )
        await wait_answer(proc, name("db"), {"fd00:10:244::d1", "fd00:10:244::d2"})
        fake.put(
            endpoint_slice(
                "default",
                "db-x",
                "db",
                ["fd00:10:244::d1", "fd00:10:244::d2"],
                hostnames=["db-0", "db-1"],
                ready=[True, False],
            )
        )
        await wait_answer(proc, name("db"), {"fd00:10:244::d1"})
        fake.delete("endpointslices", "default", "db-x")
        await wait_rcode(proc, name("db"), dns.rcode.NXDOMAIN)

        if shutil.which("dig"):
            dig = await asyncio.create_subprocess_exec(
                "dig",
                f"@{proc.host}",
                "-p",
                str(proc.port),
                "+norecurse",
                "+short",
                "+time=2",
                "+tries=1",
                name("svc2"),
                "AAAA",
                stdout=asyncio.subprocess.PIPE,
            )
            out, _ = await dig.communicate()
            assert out.decode().split() == ["fd00:10:96::3"]


async def test_relist_after_410_and_api_restart_without_gaps(tmp_path: Path) -> None:
    fake = FakeKube()
    expected = populate(fake, 50)
    async with cluster(tmp_path, fake=fake) as (fake, proc):
        await wait_answer(proc, name("svc49"), expected[name("svc49")])
        await fake.wait_watching(2)
        with Querier(proc, expected) as querier:
            # 410 while the relist's first page is held: the old data keeps being answered
            fake.inject(resource="services", verb="list", mode="hang", times=1)
            lists = len(list(fake.lists("services")))
            fake.send_error_410()
            fake.put(service("default", "svc7", ["fd00:10:96::8", "fd00:10:96::777"]))
            fake.compact()
            async with asyncio.timeout(10):
                while len(list(fake.lists("services"))) == lists:
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)
            fake.clear_faults()
            await wait_answer(proc, name("svc7"), {"fd00:10:96::8", "fd00:10:96::777"})
            assert len(list(fake.lists("services"))) > lists + 1  # the relist really happened

            # the API server dies; dnsd answers from the last good data and catches up on return
            await fake.stop()
            fake.put(service("default", "svc8", ["fd00:10:96::9", "fd00:10:96::888"]))
            await asyncio.sleep(1.0)
            assert (await addresses(proc, name("svc8")))[1] == {"fd00:10:96::9"}
            await fake.start()
            await wait_answer(proc, name("svc8"), {"fd00:10:96::9", "fd00:10:96::888"})
        assert querier.count > 100
        assert querier.failures == []
    assert any("recovered" in line for line in proc.lines)


async def test_paging_and_filters(tmp_path: Path) -> None:
    fake = FakeKube()
    for i in range(1100):  # three pages of the informer's 500
        fake.put(service("team-a", f"s{i}", [f"fd00:10:97::{i + 1:x}"], labels={"dns": "global"}))
    fake.put(service("team-a", "private", labels={"dns": "internal"}))
    fake.put(service("team-b", "other", labels={"dns": "global"}))
    fake.put(service("team-a", "hidden", labels={"dns": "global"}, annotations={"dnsd.k8s.ooo/expose": "false"}))
    async with cluster(tmp_path, "--namespaces", "team-a", "--label-selector", "dns=global", fake=fake) as (fake, proc):
        await wait_answer(proc, name("s1099", "team-a"), {"fd00:10:97::44c"})
        await wait_answer(proc, name("s0", "team-a"), {"fd00:10:97::1"})
        assert (await ask(proc, name("private", "team-a"))).rcode() == dns.rcode.NXDOMAIN
        assert (await ask(proc, name("hidden", "team-a"))).rcode() == dns.rcode.NXDOMAIN
        assert (await ask(proc, name("other", "team-b"))).rcode() == dns.rcode.NXDOMAIN
    service_lists = list(fake.lists("services"))
    assert len(service_lists) == 3
    assert all(r.namespace == "team-a" and r.query["labelSelector"] == "dns=global" for r in service_lists)
    assert "continue" in service_lists[2].query


async def test_unusable_kubeconfig_fails_with_one_line(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dnsd",
        "--zone",
        ZONE,
        "--source",
        "kubernetes",
        "--kubeconfig",
        str(tmp_path / "missing"),
        "--listen",
        "127.0.0.1:0",
        "--http",
        "off",
        "--recursion",
        "off",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(20):
        out, _ = await proc.communicate()
    assert proc.returncode == 3, out.decode()
    last = out.decode().splitlines()[-1]
    assert "missing (--kubeconfig) does not exist" in last, out.decode()
