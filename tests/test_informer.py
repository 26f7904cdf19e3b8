"""KubernetesSource in-process against the fake API server (real HTTP, real kubernetes-asyncio client).

These tests drive the informer's protocol paths one at a time (paging, watch events, bookmarks, 410 in
its three forms, outage and restart, 403, hangs, filters) and read the results straight from a real
ZoneIndex. The end-to-end view through DNS queries to a `python -m dnsd` process lives in
test_informer_process.py.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

import dnsd.config
from dnsd.errors import StartupError
from dnsd.kube.connect import connect
from dnsd.kube.informer import InformerSettings, KubernetesSource
from dnsd.zone import AAAA, ZoneIndex
from tests.fakekube import FakeKube, endpoint_slice, service

ZONE = "c2.k8s.ooo"
FAST = InformerSettings(
    page_size=3,
    watch_timeout=30,
    inactivity_timeout=10.0,
    list_timeout=5,
    connect_timeout=1,
    backoff_initial=0.05,
    backoff_max=0.3,
)


def name(svc: str, namespace: str = "default") -> str:
    return f"{svc}.{namespace}.svc.{ZONE}"


def aaaa(zone: ZoneIndex, owner: str) -> set[str]:
    """The AAAA addresses the zone serves at a name (empty set when none)."""
    found = zone.rrset(owner, AAAA)
    if found is None:
        return set()
    return {str(ipaddress.IPv6Address(rdata)) for rdata in found[1] if isinstance(rdata, bytes)}


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


@pytest.fixture
async def fake() -> AsyncIterator[FakeKube]:
    server = FakeKube()
    await server.start()
    yield server
    await server.stop()


@asynccontextmanager
async def source(
    fake: FakeKube, tmp_path: Path, settings: InformerSettings = FAST, **options: Any
) -> AsyncIterator[ZoneIndex]:
    """A running KubernetesSource feeding a fresh ZoneIndex; cancelled on exit."""
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
    config = dnsd.config.from_mapping({"zone": ZONE, "kubeconfig": str(kubeconfig), **options})
    zone = ZoneIndex(config)
    task = asyncio.create_task(KubernetesSource(config, zone, settings=settings).run())
    try:
        yield zone
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def populate(fake: FakeKube, count: int, namespace: str = "default") -> None:
    for i in range(count):
        fake.put(service(namespace, f"svc{i}", [f"fd00:10:96::{i + 1:x}"]))
        fake.put(endpoint_slice(namespace, f"svc{i}-abc", f"svc{i}", [f"fd00:10:244::{i + 1:x}"]))


async def test_initial_sync_pages_and_marks_synced(fake: FakeKube, tmp_path: Path) -> None:
    populate(fake, 7)
    fake.put(service("default", "headless", headless=True))
    fake.put(
        endpoint_slice("default", "headless-1", "headless", ["fd00:10:244::a1", "fd00:10:244::a2"], ready=[True, False])
    )
    async with source(fake, tmp_path) as zone:
        await eventually(lambda: zone.synced)
        assert aaaa(zone, name("svc0")) == {"fd00:10:96::1"}
        assert aaaa(zone, name("svc6")) == {"fd00:10:96::7"}
        assert aaaa(zone, name("headless")) == {"fd00:10:244::a1"}  # only the ready endpoint
        assert len(zone.services) == 8
        assert len(zone.slices) == 8
    service_lists = list(fake.lists("services"))
    assert len(service_lists) == 3  # 8 objects in pages of 3
    assert [r.query.get("limit") for r in service_lists] == ["3", "3", "3"]
    assert "continue" not in service_lists[0].query
    assert all("continue" in r.query for r in service_lists[1:])


async def test_not_synced_until_both_kinds_listed(fake: FakeKube, tmp_path: Path) -> None:
    populate(fake, 2)
    fake.inject(resource="endpointslices", verb="list", status=500)
    async with source(fake, tmp_path) as zone:
        await eventually(lambda: len(zone.services) == 2)
        await asyncio.sleep(0.3)
        assert not zone.synced
        fake.clear_faults()
        await eventually(lambda: zone.synced)
        assert aaaa(zone, name("svc1")) == {"fd00:10:96::2"}


async def test_watch_events_add_modify_delete(fake: FakeKube, tmp_path: Path) -> None:
    populate(fake, 1)
    async with source(fake, tmp_path) as zone:
        await eventually(lambda: zone.synced)
        await fake.wait_watching(2)
        fake.put(service("default", "new", ["fd00:10:96::99"]))
        await eventually(lambda: aaaa(zone, name("new")) == {"fd00:10:96::99"})
        fake.put(service("default", "new", ["fd00:10:96::98"]))
        await eventually(lambda: aaaa(zone, name("new")) == {"fd00:10:96::98"})
        fake.delete("services", "default", "new")
        await eventually(lambda: not zone.exists(name("new")))
        # endpoint slices of a headless service
        fake.put(service("default", "db", headless=True))
        fake.put(endpoint_slice("default", "db-1", "db", ["fd00:10:244::1"], hostnames=["db-0"]))
        await eventually(lambda: aaaa(zone, f"db-0.{name('db')}") == {"fd00:10:244::1"})
        fake.put(endpoint_slice("default", "db-1", "db", ["fd00:10:244::2"], hostnames=["db-0"]))
        await eventually(lambda: aaaa(zone, f"db-0.{name('db')}") == {"fd00:10:244::2"})
        fake.delete("endpointslices", "default", "db-1")
        await eventually(lambda: not zone.exists(name("db")))  # headless without endpoints: NXDOMAIN


async def test_bookmarks_advance_resume_point(fake: FakeKube, tmp_path: Path) -> None:
    fake.bookmark_interval = 0.05
    populate(fake, 1)
    async with source(fake, tmp_path) as zone:
        await eventually(lambda: zone.synced)
        await fake.wait_watching(2)
        for i in range(5):
            fake.put(service("default", f"more{i}", [f"fd00:10:96::{i + 100:x}"]))
        latest = fake.rv
        await asyncio.sleep(0.3)  # the endpointslices watch sees only bookmarks meanwhile
        fake.compact()  # if the slices informer had not moved on, its resume point is now too old
        count = len(list(fake.lists("endpointslices")))

        def slice_watches() -> list[Any]:
            return [r for r in fake.requests if r.verb == "watch" and r.resource == "endpointslices"]

        before = len(slice_watches())
        fake.end_watches()
        await eventually(lambda: len(slice_watches()) > before)
        watches = slice_watches()
        assert int(watches[-1].query["resourceVersion"]) >= latest
        assert watches[-1].query.get("allowWatchBookmarks", "").lower() == "true"
        assert len(list(fake.lists("endpointslices"))) == count  # no relist needed


@pytest.mark.parametrize("form", ["error_event", "http", "watch_restart"])
async def test_relist_after_410_has_no_gap(fake: FakeKube, tmp_path: Path, form: str) -> None:
    fake.gone_as_http = form == "http"
    populate(fake, 10)
    async with source(fake, tmp_path) as zone:
        await eventually(lambda: zone.synced)
        await fake.wait_watching(2)
        # Hold the relist's first page so that the relist is demonstrably in progress.
        fake.inject(resource="services", verb="list", mode="hang", times=1)
        list_count = len(list(fake.lists("services")))
        if form == "error_event":
            fake.send_error_410()
        else:
            fake.end_watches()  # the re-watch from the old resourceVersion meets the 410
        fake.put(service("default", "svc3", ["fd00:10:96::333"]))  # only a relist can see this
        fake.compact()
        await eventually(lambda: len(list(fake.lists("services"))) > list_count)
        for _ in range(20):  # the old answers stay while the new list is incomplete
            assert aaaa(zone, name("svc9")) == {"fd00:10:96::a"}
            assert aaaa(zone, name("svc3")) == {"fd00:10:96::4"}
            await asyncio.sleep(0.01)
        fake.clear_faults()
        await eventually(lambda: aaaa(zone, name("svc3")) == {"fd00:10:96::333"})
        assert all(zone.exists(name(f"svc{i}")) for i in range(10))


async def test_expired_continue_token_restarts_the_list(fake: FakeKube, tmp_path: Path) -> None:
    populate(fake, 7)
    original = fake._list
    compacted: list[bool] = []

    def compacting_list(resource: str, namespace: str | None, selector: list[Any], query: dict[str, str]) -> Any:
        # Compact exactly when the Services' second page is asked for, so that its token is expired.
        # (Counting every list call raced: the EndpointSlice informer lists at the same time, and when
        # its list came second the compaction happened before the Services' first page was served.)
        if resource == "services" and "continue" in query and not compacted:
            compacted.append(True)
            fake.compact()
        return original(resource, namespace, selector, query)

    fake._list = compacting_list  # type: ignore[method-assign]
    async with source(fake, tmp_path) as zone:
        await eventually(lambda: zone.synced)
        assert len(zone.services) == 7
    services = list(fake.lists("services"))
    assert compacted
    assert "continue" in services[1].query
    assert any("continue" not in r.query for r in services[2:])  # started over


async def test_api_outage_keeps_data_and_catches_up(fake: FakeKube, tmp_path: Path) -> None:
    populate(fake, 3)
    async with source(fake, tmp_path) as zone:
        await eventually(lambda: zone.synced)
        await fake.wait_watching(2)
        await fake.stop()
        fake.put(service("default", "during-outage", ["fd00:10:96::77"]))
        fake.delete("services", "default", "svc0")
        await asyncio.sleep(0.5)  # several failed attempts
        assert aaaa(zone, name("svc0")) == {"fd00:10:96::1"}  # last good data
        assert not zone.exists(name("during-outage"))
        await fake.start()  # same port, same data and history: the re-watch catches up
        await eventually(lambda: aaaa(zone, name("during-outage")) == {"fd00:10:96::77"})
        await eventually(lambda: not zone.exists(name("svc0")))
        # and once more with history compacted while down: catching up needs a relist
        await fake.stop()
        fake.put(service("default", "svc1", ["fd00:10:96::111"]))
        fake.compact()
        await asyncio.sleep(0.3)
        assert aaaa(zone, name("svc1")) == {"fd00:10:96::2"}
        await fake.start()
        await eventually(lambda: aaaa(zone, name("svc1")) == {"fd00:10:96::111"})


async def test_watch_disconnect_and_hang_recover(fake: FakeKube, tmp_path: Path) -> None:
    populate(fake, 1)
    settings = InformerSettings(
        page_size=3,
        watch_timeout=30,
        inactivity_timeout=0.5,
        list_timeout=2,
        connect_timeout=1,
        backoff_initial=0.05,
        backoff_max=0.2,
    )
    async with source(fake, tmp_path, settings) as zone:
        await eventually(lambda: zone.synced)
        await fake.wait_watching(2)
        fake.end_watches(abort=True)  # connection reset mid-stream
        fake.put(service("default", "after-reset", ["fd00:10:96::55"]))
        await eventually(lambda: bool(aaaa(zone, name("after-reset"))))
        await fake.wait_watching(2)
        # a watch that connects but never sends anything (a partition): the inactivity timeout ends it
        fake.inject(resource="services", verb="watch", mode="hang", times=1)
        fake.end_watches()
        await asyncio.sleep(0.1)
        fake.put(service("default", "after-hang", ["fd00:10:96::56"]))
        await eventually(lambda: bool(aaaa(zone, name("after-hang"))), timeout=5)


async def test_forbidden_logs_the_missing_permission_and_retries(
    fake: FakeKube, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    populate(fake, 1)
    fake.inject(resource="endpointslices", verb="list", status=403)
    with caplog.at_level(logging.DEBUG, logger="dnsd.kube.informer"):
        async with source(fake, tmp_path) as zone:
            await eventually(lambda: len(list(fake.lists("endpointslices"))) >= 3)
            assert not zone.synced
            errors = [r for r in caplog.records if r.levelno == logging.ERROR]
            assert len(errors) == 1  # one clear line, repeats are quiet
            message = errors[0].getMessage()
            assert "forbidden: cannot list discovery.k8s.io/endpointslices at cluster scope" in message
            assert "grant get/list/watch" in message
            fake.clear_faults()
            await eventually(lambda: zone.synced)
    assert any("recovered" in r.getMessage() for r in caplog.records)


async def test_namespace_filter_watches_per_namespace(fake: FakeKube, tmp_path: Path) -> None:
    populate(fake, 2, "team-a")
    populate(fake, 2, "team-b")
    populate(fake, 2, "team-c")
    async with source(fake, tmp_path, namespaces=["team-a", "team-b"]) as zone:
        await eventually(lambda: zone.synced)
        assert zone.exists(name("svc0", "team-a"))
        assert zone.exists(name("svc1", "team-b"))
        assert not zone.exists(name("svc0", "team-c"))
        await fake.wait_watching(4)
        fake.put(service("team-b", "late", ["fd00:10:96::42"]))
        fake.put(service("team-c", "late", ["fd00:10:96::43"]))
        await eventually(lambda: zone.exists(name("late", "team-b")))
        assert not zone.exists(name("late", "team-c"))
        # a 410 relist of one namespace's services keeps the other namespace's
        fake.send_error_410()
        await eventually(lambda: len(list(fake.lists("services"))) >= 4)
        await fake.wait_watching(4)
        assert zone.exists(name("svc0", "team-a")) and zone.exists(name("late", "team-b"))
    assert {r.namespace for r in fake.requests} == {"team-a", "team-b"}


async def test_label_selector_and_expose_annotation(fake: FakeKube, tmp_path: Path) -> None:
    fake.put(service("default", "public", labels={"dns": "global"}))
    fake.put(service("default", "private", labels={"dns": "internal"}))
    fake.put(service("default", "hidden", labels={"dns": "global"}, annotations={"dnsd.k8s.ooo/expose": "false"}))
    async with source(fake, tmp_path, label_selector="dns=global") as zone:
        await eventually(lambda: zone.synced)
        assert zone.exists(name("public"))
        assert not zone.exists(name("private"))
        assert not zone.exists(name("hidden"))
        await fake.wait_watching(2)
        fake.put(service("default", "public", labels={"dns": "internal"}))  # leaves the selector
        await eventually(lambda: not zone.exists(name("public")))
        fake.put(service("default", "private", labels={"dns": "global"}))  # enters it
        await eventually(lambda: zone.exists(name("private")))
    assert all(r.query.get("labelSelector") == "dns=global" for r in fake.requests if r.resource == "services")


async def test_invalid_object_is_skipped_with_one_warning(
    fake: FakeKube, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    populate(fake, 1)
    fake.put(endpoint_slice("default", "orphan", "x", ["fd00::1"]) | {"metadata": {"name": "orphan"}})
    async with source(fake, tmp_path) as zone:
        await eventually(lambda: zone.synced)
        assert zone.exists(name("svc0"))
    warnings = [r for r in caplog.records if "orphan" in r.getMessage()]
    assert len(warnings) == 1


async def test_no_configuration_is_a_one_line_startup_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(StartupError) as info:
        await connect(None, environ={"HOME": str(tmp_path)})
    assert "no Kubernetes configuration" in str(info.value)
    assert "\n" not in str(info.value)
    bad = tmp_path / "bad"
    bad.write_text("clusters: [")
    with pytest.raises(StartupError, match=r"kubeconfig .*bad .*not usable"):
        await connect(str(bad))
    with pytest.raises(StartupError, match="does not exist"):
        await connect(str(tmp_path / "missing"))


async def test_kubeconfig_from_environment(fake: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    path = fake.write_kubeconfig(tmp_path / "from-env")
    connection = await connect(None, environ={"KUBECONFIG": str(path), "HOME": str(tmp_path)})
    try:
        assert "$KUBECONFIG" in connection.description
    finally:
        await connection.close()
    home = tmp_path / "home"
    (home / ".kube").mkdir(parents=True)
    fake.write_kubeconfig(home / ".kube" / "config")
    connection = await connect(None, environ={"HOME": str(home)})
    try:
        assert str(home) in connection.description
    finally:
        await connection.close()
