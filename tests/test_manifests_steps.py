"""A reload of the manifests file is applied in steps that yield to the event loop, like a relist.

One reload of 2,000 changed Services applied in one piece held the loop for about 50 ms (the soak's
p99.9 under reloads). These tests reload real files through `ManifestSource` and check that the loop
runs between steps, that no unchanged name is ever missing meanwhile, and that the end state is the
one a single `replace` gives.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from pathlib import Path
from typing import Any

import dnsd.config
from dnsd.kube.manifests import ManifestSource
from dnsd.zone import AAAA, RESYNC_STEP, ZoneIndex

ZONE = "c2.k8s.ooo"


def _manifests(path: Path, services: int, generation: int, namespaces: tuple[str, ...]) -> None:
    """`services` Services spread over namespaces a and b, addresses of `generation`; Namespace objects as given."""
    items: list[dict[str, Any]] = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}
                                   for ns in namespaces]
    for i in range(services):
        address = f"fd00:10:96:{generation:x}::{i:x}"
        items.append({
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": f"svc{i}", "namespace": "ab"[i % 2]},
            "spec": {"type": "ClusterIP", "clusterIP": address, "clusterIPs": [address], "ipFamilies": ["IPv6"],
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
        })
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))


def _zone() -> ZoneIndex:
    return ZoneIndex(dnsd.config.from_mapping({"zone": ZONE, "recursion": "off"}))


def _state(zone: ZoneIndex) -> tuple[Any, ...]:
    return (dict(zone._names), dict(zone._present), dict(zone._below), set(zone.namespaces), dict(zone.services))


async def test_a_reload_yields_between_steps_and_ends_where_replace_ends(tmp_path: Path) -> None:
    path = tmp_path / "cluster.json"
    count = 3 * RESYNC_STEP + 17
    _manifests(path, count, 0, ("a", "b", "x"))
    zone = _zone()
    source = ManifestSource(path, zone)
    source.load()
    zone.mark_synced()
    watched = {f"svc{i}.{'ab'[i % 2]}.svc.{ZONE}": ipaddress.ip_address(f"fd00:10:96:1::{i:x}").packed
               for i in range(0, count, count // 50)}

    _manifests(path, count, 1, ("a", "b", "y"))  # every address changes, Namespace x goes, y arrives
    parsed = await asyncio.to_thread(source._read)
    serial = zone.serial
    serials: list[int] = []
    progress: list[int] = []  # how many watched names already carry their new address
    missing: set[str] = set()

    async def watch() -> None:  # what a query between two steps would see
        while True:
            serials.append(zone.serial)
            progress.append(sum(1 for name, new in watched.items() if (zone.rrset(name, AAAA) or (0, ()))[1] == (new,)))
            missing.update(name for name in watched if not zone.exists(name))
            await asyncio.sleep(0)

    task = asyncio.ensure_future(watch())
    await asyncio.sleep(0)
    serials.clear()
    progress.clear()
    assert await source._apply_stepped(parsed)
    task.cancel()
    # one yield per RESYNC_STEP Services, each after a commit of its own: queries in between see the
    # reload part done
    assert len({p for p in progress if 0 < p < len(watched)}) >= count // RESYNC_STEP - 1, progress
    # the whole reload is one batch: the serial moves once, at its end (one journal entry for IXFR)
    assert set(serials) == {serial}, "the serial moved between steps"
    assert not missing, "a name that only changed its address vanished during the reload"

    expected = _zone()
    ManifestSource(path, expected).load()
    assert _state(zone) == _state(expected)
    assert zone.rrset(f"svc5.b.svc.{ZONE}", AAAA) == (30, (bytes.fromhex("fd000010009600010000000000000005"),))
    assert not zone.exists(f"x.svc.{ZONE}") and zone.exists(f"y.svc.{ZONE}")
    assert zone.serial > serial
