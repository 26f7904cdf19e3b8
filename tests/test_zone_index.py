"""ZoneIndex internals that the answer tests cannot see: shared names, the compact storage, relists in steps.

The zone stores an RRset with one owner in a compact form and switches to a per-owner table when a
second Service contributes the same name (two Services sharing an external IP share its PTR name).
These tests pin down that the merge and the way back are exact, and that `resync_*` (the informer's
relist) yields to the event loop while never letting an unchanged name disappear.
"""

from __future__ import annotations

import asyncio
import ipaddress

import dnsd.config
from dnsd.kube.model import Endpoint, Port, ServiceRecord, SliceRecord
from dnsd.zone import AAAA, PTR, SRV, ZoneIndex, reverse_name

ZONE = "c2.k8s.ooo"


def make_zone() -> ZoneIndex:
    config = dnsd.config.from_mapping({"zone": ZONE, "reverse_zone": ["2001:db8:42::/48"], "recursion": "off"})
    zone = ZoneIndex(config)
    zone.mark_synced()
    return zone


def svc(name: str, *addresses: str, namespace: str = "default", headless: bool = False) -> ServiceRecord:
    return ServiceRecord(namespace, name, headless, addresses, None, (Port("http", "tcp", 80),), False, True, None)


def base(name: str, namespace: str = "default") -> str:
    return f"{name}.{namespace}.svc.{ZONE}"


def test_two_services_sharing_an_address_share_its_ptr_name() -> None:
    zone = make_zone()
    ptr = reverse_name("2001:db8:42::7")
    zone.put_service(svc("one", "2001:db8:42::7"))
    assert zone.rrset(ptr, PTR) == (30, (base("one"),))

    zone.put_service(svc("two", "2001:db8:42::7"))
    ttl, targets = zone.rrset(ptr, PTR) or (0, ())
    assert ttl == 30 and set(targets) == {base("one"), base("two")}

    zone.delete_service("default", "one")
    assert zone.rrset(ptr, PTR) == (30, (base("two"),))
    zone.put_service(svc("two", "2001:db8:42::8"))  # moves away: the old PTR name must go entirely
    assert zone.rrset(ptr, PTR) is None and not zone.exists(ptr)
    assert zone.rrset(reverse_name("2001:db8:42::8"), PTR) == (30, (base("two"),))


def test_removing_everything_restores_the_empty_state() -> None:
    zone = make_zone()
    before = (dict(zone._names), dict(zone._present), dict(zone._below), dict(zone._contributions))
    zone.put_service(svc("a", "2001:db8:42::1"))
    zone.put_service(svc("b", "2001:db8:42::1"))
    zone.put_service(svc("h", headless=True))
    zone.put_slice(SliceRecord("default", "h-1", "h", (Endpoint(("2001:db8:42::9",), "web-0", True),),
                               (Port("http", "tcp", 80),)))
    assert zone.rrset(f"web-0.{base('h')}", AAAA) is not None
    assert zone.rrset(f"_http._tcp.{base('h')}", SRV) is not None
    for key in ("a", "b", "h"):
        zone.delete_service("default", key)
    zone.delete_slice("default", "h-1")
    assert (zone._names, zone._present, zone._below, zone._contributions) == before
    assert zone._slices_by_service == {}


async def test_resync_yields_and_never_hides_an_unchanged_name() -> None:
    zone = make_zone()
    count = 5000
    for i in range(count):
        zone.put_service(svc(f"s{i}", f"2001:db8:42::{i:x}"))
    watched = base("s4321")
    missing: list[int] = []
    zone.subscribe(lambda changed: missing.append(zone.serial) if not zone.exists(watched) else None)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(tick())
    # The relist: every other service changed address, s0 is gone, one new service appears.
    fresh = [svc(f"s{i}", f"2001:db8:42::{i + (10000 if i % 2 else 0):x}") for i in range(1, count)]
    fresh.append(svc("new", "2001:db8:42::ffff"))
    changed = await zone.resync_services(fresh)
    ticker.cancel()

    assert changed == count // 2 + 2  # the odd ones, s0 deleted, "new" added
    assert ticks >= count // 1000  # the loop ran between steps
    assert missing == []
    assert not zone.exists(base("s0")) and zone.exists(base("new"))
    assert zone.rrset(base("s3"), AAAA) == (30, (ipaddress.IPv6Address(f"2001:db8:42::{3 + 10000:x}").packed,))


async def test_resync_of_one_namespace_leaves_the_others_alone() -> None:
    zone = make_zone()
    zone.put_service(svc("a", "2001:db8:42::1", namespace="red"))
    zone.put_service(svc("b", "2001:db8:42::2", namespace="blue"))
    await zone.resync_services([], "red")
    assert not zone.exists(base("a", "red"))
    assert zone.rrset(base("b", "blue"), AAAA) is not None
