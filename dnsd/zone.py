"""The zone index: every name dnsd is authoritative for, updated incrementally per cluster object.

Sources (the manifests file, the Kubernetes informer, a worker's feed from the watching process) call
`ZoneIndex.replace` with a full state, or `put_service` / `delete_service` / `put_slice` /
`delete_slice` per event. Each call recomputes only the records of the one Service concerned
(`records_for_service`) and diffs them into the name table, so the cost of an event is proportional
to that Service, never to the cluster. A full relist (`replace`) diffs too: names that did not change
are never removed, so there is no moment where answers vanish.

Names are lower-case dotted text without the trailing dot. A name *exists* when it owns records, was
marked present (a Namespace), or has an existing name below it (an empty non-terminal, RFC 8020).
Every change bumps the SOA serial and reports the changed owner names to subscribers (the answer
cache), which is how invalidation stays exact. This module knows nothing of sockets or wire formats
beyond packing addresses; `authority` turns lookups into responses.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import logging
import sys
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar, Union

from dnsd.config import Config
from dnsd.kube.model import ServiceRecord, SliceRecord

logger = logging.getLogger(__name__)

# RR types dnsd serves.
A, NS, CNAME, SOA, PTR, TXT, AAAA, SRV = 1, 2, 5, 6, 12, 16, 28, 33

#: The Kubernetes DNS schema version dnsd implements (kubernetes/dns docs/specification.md; 1.1.0 adds
#: AAAA wherever A is specified).
SCHEMA_VERSION = "1.1.0"

#: SOA timers: refresh, retry, expire. dnsd has no secondaries (there is no zone transfer), so they only
#: need to be sane (RFC 1912 2.2 ranges).
SOA_TIMERS = (7200, 1800, 1209600)

Srv = tuple[int, int, int, str]  # priority, weight, port, target
#: bytes: A/AAAA address or TXT strings, already in wire form; str: a target name (CNAME, PTR, NS);
#: tuple: SRV.
Rdata = Union[bytes, str, Srv]  # noqa: UP007  # a type alias needs Union on 3.11 for tuple members
Owner = tuple[str, ...]
R = TypeVar("R", ServiceRecord, SliceRecord)
#: One change as published to --workers followers: ("put_service", record), ("delete_slice", key),
#: ("replace", services, slices, namespaces), ("synced",), ...
Op = tuple[Any, ...]

#: Objects a relist diffs between two yields to the event loop (about 5 ms of work).
RESYNC_STEP = 1000
RRset = tuple[int, tuple[Rdata, ...]]  # ttl, rdatas


class _EveryType:
    """A collection holding every RR type: what `existence` reports at and below a zone cut."""

    def __contains__(self, item: object) -> bool:
        return True

    def __iter__(self) -> Iterator[int]:
        return iter(range(65536))

    def __len__(self) -> int:
        return 65536


_EVERY_TYPE = _EveryType()
Records = dict[str, dict[int, RRset]]  # name -> type -> (ttl, rdatas)
Flat = tuple[tuple[str, int, int, tuple[Rdata, ...]], ...]  # ((name, type, ttl, rdatas), ...)
#: One RRset's contributions: (ttl, rdatas, owner) when one owner has it, else {owner: (ttl, rdatas)}.
Shared = Union[tuple[int, tuple[Rdata, ...], Owner], dict[Owner, RRset]]  # noqa: UP007


@dataclass(frozen=True, slots=True)
class ZoneApex:
    """One zone dnsd is authoritative for: the delegated zone or a reverse zone."""

    name: str
    reverse_network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None


def reverse_name(address: str) -> str:
    """The in-addr.arpa / ip6.arpa owner name of an address, without the trailing dot."""
    return ipaddress.ip_address(address).reverse_pointer.lower()


def reverse_apex(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    """The apex of the reverse zone of a network on a nibble (IPv6) or octet (IPv4) boundary."""
    if network.version == 4:
        octets = str(network.network_address).split(".")[: network.prefixlen // 8]
        return ".".join([*reversed(octets), "in-addr", "arpa"])
    nibbles = network.network_address.exploded.replace(":", "")[: network.prefixlen // 4]
    return ".".join([*reversed(nibbles), "ip6", "arpa"])


def endpoint_label(address: str) -> str:
    """The system-assigned hostname of an endpoint without one (spec 2.1): its address, dashed.

    IPv6 uses the exploded form so that the label never starts or ends with a dash.
    """
    ip = ipaddress.ip_address(address)
    text = ip.exploded if ip.version == 6 else str(ip)
    return text.replace(".", "-").replace(":", "-")


def _pack(address: str) -> tuple[int, bytes]:
    ip = ipaddress.ip_address(address)
    return (A if ip.version == 4 else AAAA), ip.packed


def txt_rdata(*strings: str) -> bytes:
    """TXT rdata: each string as a length-prefixed character-string."""
    out = bytearray()
    for text in strings:
        raw = text.encode()
        out += bytes([len(raw)]) + raw
    return bytes(out)


class ZoneIndex:
    """Names, records and existence of the served zones; mutated only through the put/delete methods."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.apex = config.zone
        self.cluster_domain = config.cluster_domain
        self.apexes: tuple[ZoneApex, ...] = (
            ZoneApex(config.zone), *(ZoneApex(reverse_apex(net), net) for net in config.reverse_zone)
        )
        self._apex_names = {z.name for z in self.apexes}
        self.serial = int(time.time()) & 0xFFFFFFFF
        self.synced = False
        self.services: dict[tuple[str, str], ServiceRecord] = {}
        self.slices: dict[tuple[str, str], SliceRecord] = {}
        self._slices_by_service: dict[tuple[str, str], set[tuple[str, str]]] = {}
        self.namespaces: set[str] = set()
        # name -> type -> Shared. One owner (the common case) is stored as (ttl, rdatas, owner) rather
        # than a dict: at 50,000 services the difference is tens of megabytes.
        self._names: dict[str, dict[int, Shared]] = {}
        #: Wildcard owners and delegation points, for `existence`: none today (see there).
        self._cuts: frozenset[str] = frozenset()
        #: First label (wire octets) of every existing name -> how many entries of _present/_below have
        #: it: a name whose first label is not here does not exist, whatever follows (`first_label_known`).
        self._first_labels: dict[bytes, int] = {}
        #: (wire form of each apex, the apex), most specific first, for `apex_of_wire`.
        self._apex_wires: tuple[tuple[bytes, ZoneApex], ...] = ()
        self._present: dict[str, int] = {}
        self._below: dict[str, int] = {}
        # owner -> its records, flattened to ((name, type, ttl, rdatas), ...) for the same reason.
        self._contributions: dict[Owner, Flat] = {}
        self._subscribers: list[Callable[[set[str]], None]] = []
        self._journal: list[Op] | None = None  # operations since the last commit, when publishing
        self._publish: Callable[[list[Op], int], None] | None = None
        self._apex_wires = tuple(sorted(((_wire(z.name), z) for z in self.apexes), key=lambda item: -len(item[0])))
        self._apply(("static",), self._static_records(), set())

    # ---- reading -------------------------------------------------------------------------------

    def find_apex(self, qname: str) -> ZoneApex | None:
        """The most specific served zone containing qname, or None when dnsd is not authoritative."""
        best: ZoneApex | None = None
        for zone in self.apexes:
            if (qname == zone.name or qname.endswith("." + zone.name)) and (
                best is None or len(zone.name) > len(best.name)
            ):
                best = zone
        return best

    def exists(self, name: str) -> bool:
        """True when the name owns records, is marked present, or is an empty non-terminal."""
        return name in self._present or name in self._below

    def existence(self, name: str) -> tuple[ZoneApex | None, bool, Collection[int]]:
        """(zone, exists, RR types at the name) in one go: what a negative answer depends on.

        The fast path asks this for every name it has not stored, so it costs what `find_apex` and
        two dictionary lookups cost. The zone is None outside every served zone. dnsd's zones hold no
        wildcards and no delegations below their apexes (nothing it serves creates them), so a name's
        own entry decides whether it exists; `_cuts` is where such names would be listed, and any name
        at or below one is reported as existing with every type, so that no template answers for it.
        """
        apex = self.find_apex(name)
        if apex is None:
            return None, False, ()
        if self._cuts and self._under_cut(name):
            return apex, True, _EVERY_TYPE
        types = self._names.get(name)
        if types is not None:
            return apex, True, types.keys()
        return apex, name in self._present or name in self._below, ()

    def apex_of_wire(self, name: bytes) -> tuple[ZoneApex | None, int]:
        """(the most specific zone whose wire apex ends `name`, where that apex starts in it).

        `name` is a lower-case wire name; the caller checks that the offset is a label boundary.
        """
        for apex_wire, apex in self._apex_wires:
            if name.endswith(apex_wire):
                return apex, len(name) - len(apex_wire)
        return None, -1

    def first_label_known(self, label: bytes) -> bool:
        """False when no existing name starts with this (lower-case, plain) label: the name is NXDOMAIN.

        The fast path asks this before spelling a never-seen name: a random-subdomain flood's first
        labels are random, so one dictionary lookup settles most of them. Cuts (see `existence`)
        count as known, so that no template ever answers below one.
        """
        return label in self._first_labels or bool(self._cuts)

    def _count_first_label(self, name: str, delta: int) -> None:
        label = name.split(".", 1)[0].encode()
        count = self._first_labels.get(label, 0) + delta
        if count:
            self._first_labels[label] = count
        else:
            del self._first_labels[label]

    def _under_cut(self, name: str) -> bool:
        labels = name.split(".")
        return any(".".join(labels[i:]) in self._cuts for i in range(len(labels)))

    def rrset(self, name: str, rtype: int) -> tuple[int, tuple[Rdata, ...]] | None:
        """(ttl, rdatas) of one RRset, merged across owners (two Services may share a PTR name)."""
        by_type = self._names.get(name)
        if not by_type:
            return None
        by_owner = by_type.get(rtype)
        if by_owner is None:
            return None
        if isinstance(by_owner, tuple):
            return by_owner[0], by_owner[1]
        ttl = min(t for t, _ in by_owner.values())
        merged: dict[Rdata, None] = {}
        for _, (_, rdatas) in sorted(by_owner.items(), key=lambda item: item[0]):
            merged.update(dict.fromkeys(rdatas))
        return ttl, tuple(merged)

    def types_at(self, name: str) -> list[int]:
        """The RR types present at a name, in ascending order."""
        return sorted(self._names.get(name, {}))

    def soa_rdata(self) -> tuple[str, str, int, int, int, int, int]:
        """mname, rname, serial, refresh, retry, expire, minimum."""
        mname = self.config.nameserver[0].name if self.config.nameserver else f"ns1.{self.apex}"
        return (mname, f"hostmaster.{self.apex}", self.serial, *SOA_TIMERS, self.config.negative_ttl)

    @property
    def record_count(self) -> int:
        """Number of RRsets currently served (for the zone records metric)."""
        return sum(len(types) for types in self._names.values())

    # ---- subscribing ----------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[set[str]], None]) -> None:
        """Call `callback(changed_names)` after every change; the serial has already moved."""
        self._subscribers.append(callback)

    # ---- writing --------------------------------------------------------------------------------

    def mark_synced(self) -> None:
        """The source has delivered a full state: names in the zone may now be answered.

        The first full state is also when the bulk of the process's objects exist, and they live as
        long as it does: they are collected once and then frozen out of the cyclic garbage collector's
        way (`gc.freeze`). Otherwise every full collection walks all of them, holding the event loop
        for 15 to 100 ms with 2,000 Services (measured during reloads: the soak's p99.9). Records
        that change later are young objects again; none of the zone's structures hold cycles, so
        what is frozen and later dropped is still freed by its reference count.
        """
        if not self.synced:
            self.synced = True
            self._record(("synced",))
            self._commit(set(), force=True)
            gc.collect()
            gc.freeze()

    def replace(
        self,
        services: Iterable[ServiceRecord],
        slices: Iterable[SliceRecord],
        namespaces: Iterable[str] = (),
    ) -> int:
        """Make the index hold exactly this state, touching only what differs; returns #services changed."""
        changed: set[str] = set()
        count = self._replace(tuple(services), tuple(slices), frozenset(namespaces), changed)
        self._commit(changed)
        return count

    # ---- followers (--workers) ------------------------------------------------------------------

    def publish_to(self, publish: Callable[[list[Op], int], None]) -> None:
        """From now on, hand every committed batch of changes and the new serial to `publish`.

        The watching process of `--workers` uses it to feed the others, which `follow` the same
        operations, so that every worker holds the same data under the same serial.
        """
        self._journal = []
        self._publish = publish

    def snapshot(self) -> list[Op]:
        """Operations that rebuild the current state from nothing (for a worker that starts late)."""
        ops: list[Op] = [("replace", tuple(self.services.values()), tuple(self.slices.values()),
                          frozenset(self.namespaces))]
        if self.synced:
            ops.append(("synced",))
        return ops

    def follow(self, ops: list[Op], serial: int) -> None:
        """Apply a batch published by the watching process, and take its serial."""
        changed: set[str] = set()
        for op in ops:
            kind = op[0]
            if kind == "put_service":
                self._put_service(op[1], changed)
            elif kind == "delete_service":
                self._delete_service(op[1], changed)
            elif kind == "put_slice":
                self._put_slice(op[1], changed)
            elif kind == "delete_slice":
                self._delete_slice(op[1], changed)
            elif kind == "replace":
                self._replace(op[1], op[2], op[3], changed)
            elif kind == "namespaces":
                self._set_namespaces(op[1], changed)
            elif kind == "synced":
                self.synced = True
        self.serial = serial
        self._notify(changed)  # always: the serial (in every SOA-bearing answer) may have moved

    def _record(self, op: Op) -> None:
        if self._journal is not None:
            self._journal.append(op)

    def _replace(self, services: tuple[ServiceRecord, ...], slices: tuple[SliceRecord, ...],
                 namespaces: frozenset[str], changed: set[str]) -> int:
        self._record(("replace", services, slices, namespaces))
        new_services = {s.key: s for s in services}
        new_slices = {s.key: s for s in slices}
        new_namespaces = set(namespaces)
        affected: set[tuple[str, str]] = set()
        for key in self.services.keys() | new_services.keys():
            if self.services.get(key) != new_services.get(key):
                affected.add(key)
        for key in self.slices.keys() | new_slices.keys():
            old, new = self.slices.get(key), new_slices.get(key)
            if old != new:
                if old is not None:
                    affected.add((old.namespace, old.service))
                if new is not None:
                    affected.add((new.namespace, new.service))
        self.services = new_services
        self.slices = new_slices
        self._slices_by_service = {}
        for skey, rec in new_slices.items():
            self._slices_by_service.setdefault((rec.namespace, rec.service), set()).add(skey)
        for ns in self.namespaces - new_namespaces:
            self._apply(("namespace", ns), {}, changed)
        for ns in new_namespaces - self.namespaces:
            self._apply(("namespace", ns), {f"{ns}.svc.{self.cluster_domain}": {}}, changed)
        self.namespaces = new_namespaces
        for key in affected:
            self._apply(("service", *key), self._service_records(key), changed)
        return len(affected)

    def put_service(self, record: ServiceRecord) -> None:
        """Add or replace one Service."""
        changed: set[str] = set()
        self._put_service(record, changed)
        self._commit(changed)

    def delete_service(self, namespace: str, name: str) -> None:
        """Remove one Service (its slices stay until deleted, as in the API)."""
        changed: set[str] = set()
        self._delete_service((namespace, name), changed)
        self._commit(changed)

    def put_slice(self, record: SliceRecord) -> None:
        """Add or replace one EndpointSlice."""
        changed: set[str] = set()
        self._put_slice(record, changed)
        self._commit(changed)

    def delete_slice(self, namespace: str, name: str) -> None:
        """Remove one EndpointSlice."""
        changed: set[str] = set()
        self._delete_slice((namespace, name), changed)
        self._commit(changed)

    async def resync_all(self, services: Iterable[ServiceRecord], slices: Iterable[SliceRecord],
                         namespaces: Iterable[str] = ()) -> int:
        """`replace` in steps that yield to the event loop, for a reload of the manifests file.

        A reload of 2,000 changed Services applied in one piece held the loop for about 50 ms (the
        soak's p99.9); this applies it like the informer's relist: new Namespaces first (so that no
        name vanishes in between), then Services and EndpointSlices in steps of `RESYNC_STEP`, each
        committed whole, then the Namespaces that are gone. Returns how many objects changed.
        """
        wanted = frozenset(namespaces)
        changed: set[str] = set()
        self._set_namespaces(frozenset(self.namespaces) | wanted, changed)
        self._commit(changed)
        count = await self.resync_services(services)
        count += await self.resync_slices(slices)
        changed = set()
        self._set_namespaces(wanted, changed)
        self._commit(changed)
        return count

    def _set_namespaces(self, namespaces: frozenset[str], changed: set[str]) -> None:
        if namespaces == self.namespaces:
            return
        self._record(("namespaces", namespaces))
        for ns in self.namespaces - namespaces:
            self._apply(("namespace", ns), {}, changed)
        for ns in namespaces - self.namespaces:
            self._apply(("namespace", ns), {f"{ns}.svc.{self.cluster_domain}": {}}, changed)
        self.namespaces = set(namespaces)

    async def resync_services(self, records: Iterable[ServiceRecord], namespace: str | None = None) -> int:
        """Make the Services (of `namespace`, or all) exactly `records`; returns how many changed.

        For a relist: it diffs like `replace` but yields to the event loop every `RESYNC_STEP`
        objects, so that 50,000 unchanged Services do not stall answers for a fifth of a second.
        Each step is committed whole, every name is always either its old or its new self, and
        names that did not change never vanish. Only this kind is touched: the other kind's watch
        may keep delivering events in between.
        """
        return await self._resync(self.services, records, namespace, self._put_service, self._delete_service)

    async def resync_slices(self, records: Iterable[SliceRecord], namespace: str | None = None) -> int:
        """`resync_services` for EndpointSlices."""
        return await self._resync(self.slices, records, namespace, self._put_slice, self._delete_slice)

    async def _resync(
        self,
        current: dict[tuple[str, str], R],
        records: Iterable[R],
        namespace: str | None,
        put: Callable[[R, set[str]], bool],
        delete: Callable[[tuple[str, str], set[str]], bool],
    ) -> int:
        new = {r.key: r for r in records}
        work: list[tuple[tuple[str, str], R | None]] = [
            (key, None) for key in current if key not in new and (namespace is None or key[0] == namespace)
        ]
        work.extend(new.items())
        changed: set[str] = set()
        count = 0
        for done, (key, record) in enumerate(work, 1):
            if record is None:
                count += delete(key, changed)
            else:
                count += put(record, changed)
            if done % RESYNC_STEP == 0:
                self._commit(changed)
                changed = set()
                await asyncio.sleep(0)
        self._commit(changed)
        return count

    # ---- internals ------------------------------------------------------------------------------

    def _put_service(self, record: ServiceRecord, changed: set[str]) -> bool:
        if self.services.get(record.key) == record:
            return False
        self._record(("put_service", record))
        self.services[record.key] = record
        self._refresh(record.key, changed)
        return True

    def _delete_service(self, key: tuple[str, str], changed: set[str]) -> bool:
        if self.services.pop(key, None) is None:
            return False
        self._record(("delete_service", key))
        self._refresh(key, changed)
        return True

    def _put_slice(self, record: SliceRecord, changed: set[str]) -> bool:
        old = self.slices.get(record.key)
        if old == record:
            return False
        self._record(("put_slice", record))
        self.slices[record.key] = record
        if old is not None and old.service != record.service:
            self._slices_by_service.get((old.namespace, old.service), set()).discard(record.key)
            self._refresh((old.namespace, old.service), changed)
        self._slices_by_service.setdefault((record.namespace, record.service), set()).add(record.key)
        self._refresh((record.namespace, record.service), changed)
        return True

    def _delete_slice(self, key: tuple[str, str], changed: set[str]) -> bool:
        old = self.slices.pop(key, None)
        if old is None:
            return False
        self._record(("delete_slice", key))
        owner = (old.namespace, old.service)
        siblings = self._slices_by_service.get(owner)
        if siblings is not None:
            siblings.discard(key)
            if not siblings:
                del self._slices_by_service[owner]
        self._refresh(owner, changed)
        return True

    def _refresh(self, key: tuple[str, str], changed: set[str]) -> None:
        self._apply(("service", *key), self._service_records(key), changed)

    def _commit(self, changed: set[str], force: bool = False) -> None:
        if changed:
            self.serial = max(self.serial + 1, int(time.time())) & 0xFFFFFFFF
        if self._journal:
            ops, self._journal = self._journal, []
            if self._publish is not None:
                self._publish(ops, self.serial)
        if changed or force:
            self._notify(changed)

    def _notify(self, changed: set[str]) -> None:
        for callback in self._subscribers:
            callback(changed)

    def _in_served_zone(self, name: str) -> bool:
        return self.find_apex(name) is not None

    def _apply(self, owner: Owner, new: Records, changed: set[str]) -> None:
        """Replace one owner's contribution by `new`, recording every owner name that changed."""
        old_flat = self._contributions.get(owner, ())
        new_flat = _flatten(new)
        if old_flat == new_flat:
            return
        old = _unflatten(old_flat)
        for name in old.keys() - new.keys():
            self._withdraw(owner, name, old[name])
            changed.add(name)
        for name, types in new.items():
            previous = old.get(name)
            if previous == types:
                continue
            if previous is None:
                name = sys.intern(name)
                self._present[name] = self._present.get(name, 0) + 1
                if self._present[name] == 1:
                    self._count_first_label(name, +1)
                    self._adjust_ancestors(name, +1)
            else:
                self._remove_types(owner, name, previous)
            by_type = self._names.setdefault(name, {})
            for rtype, rrset in types.items():
                _add_owner(by_type, rtype, owner, rrset)
            if not by_type:
                del self._names[name]
            changed.add(name)
        if new_flat:
            self._contributions[owner] = new_flat
        else:
            self._contributions.pop(owner, None)

    def _withdraw(self, owner: Owner, name: str, types: dict[int, RRset]) -> None:
        self._remove_types(owner, name, types)
        count = self._present[name] - 1
        if count:
            self._present[name] = count
        else:
            del self._present[name]
            self._count_first_label(name, -1)
            self._adjust_ancestors(name, -1)

    def _remove_types(self, owner: Owner, name: str, types: dict[int, RRset]) -> None:
        by_type = self._names.get(name)
        if by_type is None:
            return
        for rtype in types:
            _remove_owner(by_type, rtype, owner)
        if not by_type:
            del self._names[name]

    def _adjust_ancestors(self, name: str, delta: int) -> None:
        """Count `name` in every ancestor strictly between it and its zone's apex (ENT bookkeeping)."""
        if name in self._apex_names:
            return
        labels = name.split(".")
        for i in range(1, len(labels)):
            ancestor = sys.intern(".".join(labels[i:]))
            before = self._below.get(ancestor, 0)
            count = before + delta
            if count:
                self._below[ancestor] = count
            else:
                self._below.pop(ancestor, None)
            if not before or not count:
                self._count_first_label(ancestor, +1 if count else -1)
            if ancestor in self._apex_names:
                break

    def _static_records(self) -> Records:
        """Apex NS (+ glue) of every zone and `dns-version` TXT; SOA is synthesized on demand."""
        records: Records = {}
        ttl = self.config.ttl
        ns_names = tuple(ns.name for ns in self.config.nameserver)
        for zone in self.apexes:
            records.setdefault(zone.name, {})[NS] = (ttl, ns_names)
        for ns in self.config.nameserver:
            for address in ns.addresses:
                rtype, packed = _pack(str(address))
                types = records.setdefault(ns.name, {})
                prev = types.get(rtype, (ttl, ()))[1]
                types[rtype] = (ttl, (*prev, packed))
        records.setdefault(f"dns-version.{self.cluster_domain}", {})[TXT] = (ttl, (txt_rdata(SCHEMA_VERSION),))
        return records

    def _service_records(self, key: tuple[str, str]) -> Records:
        service = self.services.get(key)
        if service is None or not service.expose:
            return {}
        slices = [self.slices[s] for s in sorted(self._slices_by_service.get(key, ()))]
        return records_for_service(service, slices, self.cluster_domain, self.config.ttl, self._in_served_zone)


def _wire(name: str) -> bytes:
    """Wire form of a plain dotted name ("" is the root)."""
    return b"".join(bytes((len(label),)) + label.encode() for label in name.split(".") if label) + b"\x00"


def _flatten(records: Records) -> Flat:
    """Records as one tuple; a name present without records (a Namespace) becomes (name, 0, 0, ())."""
    flat: list[tuple[str, int, int, tuple[Rdata, ...]]] = []
    for name, types in records.items():
        if not types:
            flat.append((name, 0, 0, ()))
        flat.extend((name, rtype, ttl, rdatas) for rtype, (ttl, rdatas) in types.items())
    return tuple(flat)


def _unflatten(flat: Flat) -> Records:
    records: Records = {}
    for name, rtype, ttl, rdatas in flat:
        types = records.setdefault(name, {})
        if rtype:
            types[rtype] = (ttl, rdatas)
    return records


def _add_owner(by_type: dict[int, Shared], rtype: int, owner: Owner, rrset: RRset) -> None:
    """Set `owner`'s share of one RRset, turning the compact single-owner form into a dict on a second owner."""
    current = by_type.get(rtype)
    if current is None or (isinstance(current, tuple) and current[2] == owner):
        by_type[rtype] = (rrset[0], rrset[1], owner)
    elif isinstance(current, tuple):
        by_type[rtype] = {current[2]: (current[0], current[1]), owner: rrset}
    else:
        current[owner] = rrset


def _remove_owner(by_type: dict[int, Shared], rtype: int, owner: Owner) -> None:
    """Drop `owner`'s share of one RRset, going back to the compact form when one owner is left."""
    current = by_type.get(rtype)
    if current is None:
        return
    if isinstance(current, tuple):
        if current[2] == owner:
            del by_type[rtype]
        return
    current.pop(owner, None)
    if len(current) == 1:
        (other, (ttl, rdatas)), = current.items()
        by_type[rtype] = (ttl, rdatas, other)
    elif not current:
        del by_type[rtype]


def records_for_service(
    service: ServiceRecord,
    slices: list[SliceRecord],
    cluster_domain: str,
    default_ttl: int,
    in_zone: Callable[[str], bool],
) -> Records:
    """Every record one Service contributes, per the Kubernetes DNS specification with zone = Z."""
    ttl = default_ttl if service.ttl is None else service.ttl
    base = f"{service.name}.{service.namespace}.svc.{cluster_domain}"
    records: Records = {}

    def add(name: str, rtype: int, rdata: Rdata) -> None:
        types = records.setdefault(name, {})
        prev = types.get(rtype, (ttl, ()))[1]
        if rdata not in prev:
            types[rtype] = (ttl, (*prev, rdata))

    def add_ptr(address: str, target: str) -> None:
        name = reverse_name(address)
        if in_zone(name):
            add(name, PTR, target)

    if service.external_name is not None:
        add(base, CNAME, service.external_name)
        return records

    if not service.headless:
        for address in service.addresses:
            rtype, packed = _pack(address)
            add(base, rtype, packed)
            add_ptr(address, base)
        if service.addresses:
            for port in service.ports:
                add(f"_{port.name}._{port.protocol}.{base}", SRV, (0, 100, port.port, base))
        return records

    # Headless: the ready endpoints (all of them with publishNotReadyAddresses), from every slice.
    for address in service.addresses:  # externalIPs / LB ingress of a headless service
        rtype, packed = _pack(address)
        add(base, rtype, packed)
        add_ptr(address, base)
    for slice_record in slices:
        for endpoint in slice_record.endpoints:
            if not (endpoint.ready or service.publish_not_ready):
                continue
            for address in endpoint.addresses:
                hostname = endpoint.hostname or endpoint_label(address)
                target = f"{hostname}.{base}"
                rtype, packed = _pack(address)
                add(base, rtype, packed)
                add(target, rtype, packed)
                add_ptr(address, target)
                for port in slice_record.ports:
                    add(f"_{port.name}._{port.protocol}.{base}", SRV, (0, 100, port.port, target))
    return records
