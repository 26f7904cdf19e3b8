"""The zone index: every name dnsd is authoritative for, updated incrementally per cluster object.

Sources (the manifests file, the Kubernetes informer, a worker's feed from the watching process) call
`ZoneIndex.replace` with a full state, or `put_service` / `delete_service` / `put_slice` /
`delete_slice` per event. Each call recomputes only the records of the one Service concerned
(`records_for_service`) and diffs them into the name table, so the cost of an event is proportional
to that Service, never to the cluster. A full relist (`replace`) diffs too: names that did not change
are never removed, so there is no moment where answers vanish.

Ingresses, Gateways and routes (`put_object` / `delete_object` / `resync_objects`) own their names the
same way, keyed (kind, namespace, name); a Gateway's event also rebuilds the routes attached to it
(`_routes_by_gateway`), so its cost is that Gateway's routes, never the cluster. The options
(`--ingress`, `--gateway-api`, the class filters) are judged here, so both sources hand every object.

Names are lower-case dotted text without the trailing dot. A name *exists* when it owns records, was
marked present (a Namespace), or has an existing name below it (an empty non-terminal, RFC 8020).
Every change reports the changed owner names to subscribers (the answer cache), which is how
invalidation stays exact. This module knows nothing of sockets or wire formats beyond packing
addresses; `authority` turns lookups into responses.

The SOA serial is designed for secondaries (`dnsd.xfr`). Every served zone (each `--zone`, each
`--reverse-zone`) has its own (`serials`, `serial_of`), which moves only when that zone's records
changed, so that a change in one zone sends no NOTIFY and causes no transfer for the others; the
global `serial` (the newest of all, as a single zone would have it) is kept for the metric, the log
and the followers. The rules below hold per zone, restricted to the changes of that zone:

* **Same data, same serial, on every replica.** The serial is not a clock: it is taken from the
  source's own version of the data. For Kubernetes that is the resourceVersion (etcd's cluster-wide
  revision) of the newest object the zone holds: every object carries its resourceVersion, so two
  replicas that listed, or watched, the same Services and EndpointSlices compute the same maximum,
  whenever and however often they listed. An update that changes no record still moves it (a
  replica that lists later sees that object's new resourceVersion, so the one that watched must move
  too); a deletion moves it to the resourceVersion of the DELETED event. For the manifests file it is
  the file's modification time in seconds (one file mounted into every replica: one serial). Before
  the first full sync the serial is exactly that version; afterwards it takes the version when that
  is newer in RFC 1982 arithmetic, and `serial + 1` when it is not (a relist after 410 whose newest
  object is older than a deletion it missed, two file changes within one second), so it never goes
  backwards. resourceVersions are 64-bit; the serial is their low 32 bits, which RFC 1982 compares
  correctly as long as fewer than 2**31 revisions pass between two looks of a secondary.
* **Never backwards across restarts**: a restarted process lists the same objects and gets the same
  maximum. The one exception is a deletion that is the newest change of all: a fresh list no longer
  sees the deleted object, so a restarted replica starts below the serial the deletion gave; the next
  change to any object brings every replica to the same, higher serial again.
* **Per zone.** At the first full sync every zone takes the version of the full state. Afterwards,
  at the end of each batch, each zone whose records changed (exactly: with the journal on, a change
  that leaves a name's merged records as they were is none) takes the batch's version when newer
  than its serial, else its serial + 1; so does each zone in which the object of an event that
  changed no record has records (the "update that changes no record" rule above, per zone); the
  others keep theirs. A restarted replica starts every
  zone at the version of its list, never below what a zone had (the deletion exception aside), but
  a zone unchanged for a while may have an older serial on replicas that watched all along: the
  zone serials are the same on replicas that saw the same stream of events, and a `--workers`
  follower takes them as published rather than deriving them. The Internet's view (`dnsd.views`)
  derives its own from what changed in it, so an unpublished address's change moves none of them.
* **One serial per batch.** A relist is applied in steps that yield to the event loop, and a
  `--workers` follower applies the watching process's batches; data changed in a step without the
  serial moving yet is *unsettled*: transfers wait (`settled`) until the serial moves, so that a
  transfer never carries data that is not exactly the data of its serial.

The journal (for IXFR; kept only when `--transfer-allow` lets someone transfer): after the first full
sync, every change of the merged RRsets of a name is
diffed at the record level (RR by RR, the TTL part of the record) into the pending diff, where an
addition and a deletion of the same record cancel, so that each serial's diff is exact: it deletes
only records that were there and adds only records that were not (Knot rejects anything else). When
a zone's serial moves its pending diff becomes a `JournalEntry` of that zone; each zone keeps its
last `journal_limit` entries (and at most `MAX_JOURNAL_RECORDS` records in all), holding only its own
records, so `journal_since(apex, serial)` leads exactly from one of the zone's serials to the next.
Followers build the same journals from the same batches.

Snapshots (for AXFR/IXFR streaming): `open_snapshot` copies the list of names (references to strings
the index already holds, not a copy of their records; the names of other zones are skipped while
reading) and registers a reader; while a reader
is open, every name about to change first has its old records saved in the reader's overlay. The
transfer reads each listed name from the overlay when present, else live, so it sends exactly the
zone as it was at its serial, however long the client takes, at a cost proportional to the changes
made during the transfer.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import ipaddress
import logging
import sys
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar, Union

from dnsd.config import Config
from dnsd.kube.model import (
    GatewayRecord,
    HostRecord,
    IngressRecord,
    RouteRecord,
    ServiceRecord,
    SliceRecord,
    intersect_hostnames,
)
from dnsd.metrics import OBJECTS_SKIPPED

logger = logging.getLogger(__name__)

# RR types dnsd serves.
A, NS, CNAME, SOA, PTR, TXT, AAAA, SRV = 1, 2, 5, 6, 12, 16, 28, 33

#: The Kubernetes DNS schema version dnsd implements (kubernetes/dns docs/specification.md; 1.1.0 adds
#: AAAA wherever A is specified).
SCHEMA_VERSION = "1.1.0"

#: SOA timers: refresh, retry, expire (RFC 1912 2.2 ranges). Secondaries learn of changes by NOTIFY
#: within a second; the two-hour refresh is only the safety net for a lost NOTIFY.
SOA_TIMERS = (7200, 1800, 1209600)

#: Records (deleted plus added) the IXFR journal holds at most, whatever `--ixfr-journal` says: a relist
#: that changes a whole large cluster makes one huge entry, and AXFR is the better answer then anyway.
MAX_JOURNAL_RECORDS = 1_000_000

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
#: One RRset of one owner alone at its name, (rtype, ttl, rdatas, owner): what most names hold.
Single = tuple[int, int, tuple[Rdata, ...], Owner]
#: What `_names` holds per name: a `Single`, or type -> Shared for anything else.
Entry = Union[Single, dict[int, Shared]]  # noqa: UP007
#: One resource record as transferred: (owner, type, ttl, rdata).
XfrRR = tuple[str, int, int, Union[Rdata, tuple[str, str, int, int, int, int, int]]]  # noqa: UP007
RRKey = tuple[str, int, Rdata]  # a record without its TTL


def serial_gt(a: int, b: int) -> bool:
    """RFC 1982 3.2: a is greater than b in 32-bit serial number arithmetic."""
    return a != b and ((a > b and a - b < 2**31) or (a < b and b - a > 2**31))


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One serial's change: the exact records removed and added between `old` and `new`."""

    old: int
    new: int
    deleted: tuple[XfrRR, ...]
    added: tuple[XfrRR, ...]


@dataclass(slots=True, eq=False)  # identity: two readers of one zone at one serial are two readers
class Snapshot:
    """A zone as it was at `serial`, read name by name while the index moves on (see the module doc)."""

    zone: ZoneIndex
    apex: ZoneApex
    serial: int
    names: list[str]
    overlay: dict[str, dict[int, RRset]] = field(default_factory=dict)

    def records(self) -> Iterator[XfrRR]:
        """Every record of the zone at `serial` except the SOA, apex first.

        `names` holds every name of the index; the ones of other zones are skipped here, lazily, so
        that opening a snapshot of a large zone costs one list copy and no per-name work.
        """
        zone = self.zone
        overlay = self.overlay
        apex = self.apex
        find = zone.find_apex
        live = zone._names
        single_zone = len(zone.apexes) == 1
        for name in self.names:
            if not single_zone and name != apex.name and find(name) is not apex:
                continue
            saved = overlay.get(name)
            if saved is None:
                entry = live.get(name)
                if entry is None:
                    continue
                if isinstance(entry, tuple):  # one owner, one type: the common case
                    rtype, ttl, rdatas = entry[0], entry[1], entry[2]
                    for rdata in rdatas:
                        yield name, rtype, ttl, rdata
                    continue
                by_type = entry
                for rtype in sorted(by_type):
                    shared = by_type[rtype]
                    if isinstance(shared, tuple):  # one owner, the common case: no merge needed
                        ttl, rdatas = shared[0], shared[1]
                    else:
                        merged = zone.rrset(name, rtype)
                        if merged is None:
                            continue
                        ttl, rdatas = merged
                    for rdata in rdatas:
                        yield name, rtype, ttl, rdata
                continue
            for rtype, (ttl, rdatas) in sorted(saved.items()):
                for rdata in rdatas:
                    yield name, rtype, ttl, rdata

    def close(self) -> None:
        """Stop saving old records for this reader."""
        readers = self.zone._readers
        for i, reader in enumerate(readers):
            if reader is self:
                del readers[i]
                break


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
            *(ZoneApex(name) for name in config.all_zones),
            *(ZoneApex(reverse_apex(net), net) for net in config.reverse_zone),
        )
        self._apex_names = {z.name for z in self.apexes}
        self.synced = False
        self.services: dict[tuple[str, str], ServiceRecord] = {}
        self.slices: dict[tuple[str, str], SliceRecord] = {}
        # (namespace, service) -> its slices' keys: a tuple, not a set (a one-element set costs 216 bytes,
        # a tuple 48: 16 MB at 50,000 Services in two views); a Service has a handful of slices at most.
        self._slices_by_service: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {}
        self.namespaces: set[str] = set()
        #: Ingresses, Gateways and routes by (kind, namespace, name): their names are owned by that key.
        self.objects: dict[tuple[str, str, str], HostRecord] = {}
        #: Gateway (namespace, name) -> the routes whose accepted parents name it, so that a Gateway's
        #: event refreshes exactly its routes (cost proportional to them, never to the cluster).
        self._routes_by_gateway: dict[tuple[str, str], set[tuple[str, str, str]]] = {}
        # name -> type -> Shared. One owner (the common case) is stored as (ttl, rdatas, owner) rather
        # than a dict: at 50,000 services the difference is tens of megabytes. A name with one type of
        # one owner (nearly every name) is a `Single` 4-tuple instead of a dict: 72 bytes, not 288.
        self._names: dict[str, Entry] = {}
        #: Wildcard owners and delegation points, for `existence`: none today (see there).
        self._cuts: frozenset[str] = frozenset()
        self._wildcards: dict[str, int] = {}  # parent of a `*.` name -> how many count it (see _cuts)
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
        self._publishers: list[Callable[[list[Op], int, dict[str, int]], None]] = []
        #: Indexes that follow this one and whose serials a late --workers follower must take over
        #: (the Internet's view): `snapshot` carries them.
        self._views: list[ZoneIndex] = []
        # ---- serial, IXFR journal, transfer snapshots (see the module docstring) ----
        self.serial = 1
        self._version: int | None = None  # the source's newest version of the data (resourceVersion, mtime)
        self._version_used: int | None = None  # the version the current serial was taken from
        self._batch = 0  # >0 while a stepped relist runs: the serial moves at its end
        self._based = False  # the first synced serial is set: from now on the journal records
        self._dirty = False  # data changed since the serial last moved
        #: Each served zone's own serial (apex name -> serial): what its SOA, transfers and NOTIFY carry.
        self.serials: dict[str, int] = {z.name: 1 for z in self.apexes}
        self._apex_by_name = {z.name: z for z in self.apexes}
        self._dirty_zones: set[str] = set()  # zones whose data changed since their serial last moved
        self._version_zones: set[str] = set()  # zones an event that changed no record was about
        # The journal costs a diff per change: kept only when someone may transfer.
        self.journal_limit = config.ixfr_journal if config.transfer_allow else 0
        self.journals: dict[str, deque[JournalEntry]] = {z.name: deque() for z in self.apexes}
        self.journal_records = 0
        # apex name -> (pending deletions, pending additions) of that zone's next journal entry
        self._pending: dict[str, tuple[dict[RRKey, int], dict[RRKey, int]]] = {z.name: ({}, {}) for z in self.apexes}
        self._readers: list[Snapshot] = []
        self._serial_subscribers: list[Callable[[ZoneApex, int], None]] = []
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
            return apex, True, ((types[0],) if isinstance(types, tuple) else types.keys())
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
        if name.startswith("*."):
            # An RFC 4592 wildcard (ExternalDNS hostnames): its parent becomes a cut, so that no
            # negative template answers a name it may synthesize (the slow path decides there).
            parent = name[2:]
            count = self._wildcards.get(parent, 0) + delta
            if count:
                self._wildcards[parent] = count
            else:
                self._wildcards.pop(parent, None)
            self._cuts = frozenset(self._wildcards)
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
        entry = self._names.get(name)
        if not entry:
            return None
        if isinstance(entry, tuple):
            return (entry[1], entry[2]) if entry[0] == rtype else None
        by_owner = entry.get(rtype)
        if by_owner is None:
            return None
        if isinstance(by_owner, tuple):
            return by_owner[0], by_owner[1]
        ttl = min(t for t, _ in by_owner.values())
        merged: dict[Rdata, None] = {}
        for _, (_, rdatas) in sorted(by_owner.items(), key=lambda item: item[0]):
            merged.update(dict.fromkeys(rdatas))
        return ttl, tuple(merged)

    def rrsets_at(self, name: str) -> dict[int, RRset]:
        """Every merged RRset at a name, by type (for transfers and the journal)."""
        out: dict[int, RRset] = {}
        for rtype in _types_of(self._names.get(name)):
            rrset = self.rrset(name, rtype)
            if rrset is not None:
                out[rtype] = rrset
        return out

    def names(self) -> list[str]:
        """Every owner name that holds records (for the signer's first pass)."""
        return list(self._names)

    def types_at(self, name: str) -> list[int]:
        """The RR types present at a name, in ascending order."""
        return sorted(_types_of(self._names.get(name)))

    def soa_rdata(self, apex: ZoneApex | None = None) -> tuple[str, str, int, int, int, int, int]:
        """mname, rname, serial, refresh, retry, expire, minimum (of `apex`; default the first zone).

        Each forward zone's rname is its own hostmaster; reverse zones keep the first zone's.
        """
        mname = self.config.nameserver[0].name if self.config.nameserver else f"ns1.{self.apex}"
        owner = self.apex if apex is None or apex.reverse_network is not None else apex.name
        serial = self.serials[self.apexes[0].name if apex is None else apex.name]
        return (mname, f"hostmaster.{owner}", serial, *SOA_TIMERS, self.config.negative_ttl)

    def serial_of(self, apex: ZoneApex) -> int:
        """The serial of one served zone (each moves only when its own data changes)."""
        return self.serials[apex.name]

    @property
    def journal(self) -> deque[JournalEntry]:
        """The first zone's IXFR journal (the others are in `journals`)."""
        return self.journals[self.apexes[0].name]

    def published_names(self) -> tuple[int, int]:
        """(Service names, annotated hostnames) that exist in this index (for the names metric)."""
        exists = self.exists
        domain = self.cluster_domain
        services = hostnames = 0
        for service in self.services.values():
            if exists(f"{service.name}.{service.namespace}.svc.{domain}"):
                services += 1
                hostnames += sum(1 for h in service.hostnames if exists(h))
        return services, hostnames

    def object_names(self) -> dict[str, int]:
        """Distinct names published from Ingresses, Gateways and routes, by source (for the names metric)."""
        names: dict[str, set[str]] = {"ingress": set(), "gateway": set(), "route": set()}
        for ident in self.objects:
            source = ident[0] if ident[0] in ("ingress", "gateway") else "route"
            names[source].update(entry[0] for entry in self._contributions.get(ident, ()))
        return {source: len(found) for source, found in names.items()}

    @property
    def record_count(self) -> int:
        """Number of RRsets currently served (for the zone records metric)."""
        return sum(1 if isinstance(types, tuple) else len(types) for types in self._names.values())

    # ---- transfers ------------------------------------------------------------------------------

    @property
    def settled(self) -> bool:
        """True when the data is exactly the data of `serial` (no change waits for the serial to move)."""
        return not self._dirty and not self._batch

    def open_snapshot(self, apex: ZoneApex) -> Snapshot:
        """A reader of one zone at the current serial (call only when `settled`); close it when done."""
        names = [apex.name] if apex.name in self._names else []
        names.extend(n for n in self._names if n != apex.name)
        snapshot = Snapshot(self, apex, self.serials[apex.name], names)
        self._readers.append(snapshot)
        return snapshot

    def journal_since(self, apex: ZoneApex, serial: int) -> list[JournalEntry] | None:
        """The entries of `apex`'s journal leading from its `serial` to its current serial, or None when
        that serial is not in the journal (each entry holds only that zone's records)."""
        entries = list(self.journals[apex.name])
        for i, entry in enumerate(entries):
            if entry.old == serial:
                return entries[i:] if entries[-1].new == self.serials[apex.name] else None
        return None

    def subscribe_serial(self, callback: Callable[[ZoneApex, int], None]) -> None:
        """Call `callback(apex, serial)` every time the serial of a zone moves (NOTIFY, the SOA's RRSIG)."""
        self._serial_subscribers.append(callback)

    # ---- subscribing ----------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[set[str]], None]) -> None:
        """Call `callback(changed_names)` after every change; the serial has already moved."""
        self._subscribers.append(callback)

    # ---- writing --------------------------------------------------------------------------------

    def put_extra(self, owner: Owner, records: Records) -> None:
        """Set the records of a non-Kubernetes owner (the signer's DNSKEY, CDS, CDNSKEY, NSEC3PARAM).

        They go through `_apply` like a Service's records, so transfers, the journal, subscribers
        and answers see them as ordinary zone data.
        """
        changed: set[str] = set()
        self._apply(owner, records, changed)
        self._commit(changed)

    def mark_synced(self) -> None:
        """The source has delivered a full state: names in the zone may now be answered.

        The first full state is also when the bulk of the process's objects exist, and they live as
        long as it does: they are collected once and then frozen out of the cyclic garbage collector's
        way (`gc.freeze`). Otherwise every full collection walks all of them, holding the event loop
        for 15 to 100 ms with 2,000 Services (measured during reloads: the soak's p99.9). Records
        that change later are young objects again; none of the zone's structures hold cycles, so
        what is frozen and later dropped is still freed by its reference count.
        The memory the load freed on the way (JSON pages, temporary records) goes back to the system
        (`release_free_memory`).
        """
        if not self.synced:
            self.synced = True
            self._record(("synced",))
            self._commit(set(), force=True)
            gc.collect()
            gc.freeze()
            # Full collections still walk every tracked object made since (the recursor's cache, the
            # fast path's name sets, changed records): tens of milliseconds each, and with the default
            # threshold one every half minute under a steady load with reloads (the soak's p99.9).
            # Ten times rarer, they stop showing in the latency quantiles; cycles are still collected.
            generation0, generation1, _ = gc.get_threshold()
            gc.set_threshold(generation0, generation1, FULL_COLLECTION_THRESHOLD)
            release_free_memory()

    def replace(
        self,
        services: Iterable[ServiceRecord],
        slices: Iterable[SliceRecord],
        namespaces: Iterable[str] = (),
        version: int | None = None,
        objects: Iterable[HostRecord] | None = None,
    ) -> int:
        """Make the index hold exactly this state, touching only what differs; returns #objects changed.

        `version` is the source's version of this state (the serial design in the module docstring).
        `objects` (Ingresses, Gateways, routes) replace the ones held when given, else are left alone.
        """
        self.see_version(version)
        changed: set[str] = set()
        count = self._replace(tuple(services), tuple(slices), frozenset(namespaces), changed,
                              None if objects is None else tuple(objects))
        self._commit(changed)
        return count

    # ---- followers (--workers) ------------------------------------------------------------------

    def publish_to(self, publish: Callable[[list[Op], int, dict[str, int]], None]) -> None:
        """From now on, hand every committed batch of changes, the new serial and zone serials to `publish`.

        The watching process of `--workers` uses it to feed the others, which `follow` the same
        operations, so that every worker holds the same data under the same serial; the Internet's
        view (`dnsd.views`) follows every process's cluster index the same way. A follower passes on
        the batches it follows.
        """
        self._journal = []
        self._publishers.append(publish)

    def snapshot(self) -> list[Op]:
        """Operations that rebuild the current state from nothing (for a worker that starts late)."""
        ops: list[Op] = [("replace", tuple(self.services.values()), tuple(self.slices.values()),
                          frozenset(self.namespaces), tuple(self.objects.values()))]
        if self.synced:
            ops.append(("synced",))
            # The zone serials are history (which zone changed when), not state: a late follower takes
            # them over, for this index and for each view that follows it.
            ops.append(("view_serials", {self.view_name: dict(self.serials),
                                         **{v.view_name: dict(v.serials) for v in self._views}}))
        return ops

    #: Which index this is in a `("view_serials", ...)` operation (see `snapshot`).
    view_name = "cluster"

    def follow(self, ops: list[Op], serial: int, serials: dict[str, int] | None = None) -> None:
        """Apply a batch published by the watching process, and take its serial.

        `serials` (the publisher's zone serials) is given when this index holds the same view as the
        publisher (a --workers follower): it takes them. Without it (the Internet's view of the cluster
        index), each zone whose own data changed moves by the same rule as `_commit`, once the
        publisher's batch is complete (its serial moved), so that a change of unpublished data only
        moves no serial here.
        """
        changed: set[str] = set()
        was_synced = self.synced
        taken: dict[str, int] | None = None
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
                self._replace(op[1], op[2], op[3], changed, op[4] if len(op) > 4 else None)
            elif kind == "put_object":
                self._put_object(op[1], changed)
            elif kind == "delete_object":
                self._delete_object(op[1], changed)
            elif kind == "namespaces":
                self._set_namespaces(op[1], changed)
            elif kind == "synced":
                self.synced = True
            elif kind == "version":
                self.see_version(op[1])
            elif kind == "view_serials":
                taken = op[1].get(self.view_name)
        if changed:
            self._dirty = True
        batch_done = serial != self.serial
        if batch_done:
            self._move_serial(serial)
        if taken is not None:
            serials = taken
        if serials is not None:
            for name, zone_serial in serials.items():
                if name in self.serials:
                    self._move_zone(name, zone_serial, journal=was_synced)
        elif not was_synced:
            for name in self.serials:
                self._move_zone(name, serial, journal=False)
        elif batch_done:
            self._move_dirty_zones()
        if not was_synced:
            self._dirty_zones.clear()  # the first full state: no zone has a serial to move from yet
        if self._journal is not None:
            self._journal = []  # what we applied is passed on as received, not as re-recorded
            for publish in self._publishers:
                publish(ops, serial, dict(self.serials))
        self._notify(changed)  # always: the serial (in every SOA-bearing answer) may have moved

    def _record(self, op: Op) -> None:
        if self._journal is not None:
            self._journal.append(op)

    def _replace(self, services: tuple[ServiceRecord, ...], slices: tuple[SliceRecord, ...],
                 namespaces: frozenset[str], changed: set[str],
                 objects: tuple[HostRecord, ...] | None = None) -> int:
        if objects is None:
            self._record(("replace", services, slices, namespaces))
        else:
            self._record(("replace", services, slices, namespaces, objects))
        new_services = {s.key: s for s in services}
        new_slices = {s.key: s for s in slices}
        new_namespaces = set(namespaces)
        affected: set[tuple[str, str]] = set()
        for key in self.services.keys() | new_services.keys():
            new_service = new_services.get(key)
            if self.services.get(key) != new_service:
                affected.add(key)
                if new_service is not None:
                    self._warn_outside(new_service)
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
            _link(self._slices_by_service, rec.service_key, skey)
        for ns in self.namespaces - new_namespaces:
            self._apply(("namespace", ns), {}, changed)
        for ns in new_namespaces - self.namespaces:
            self._apply(("namespace", ns), {f"{ns}.svc.{self.cluster_domain}": {}}, changed)
        self.namespaces = new_namespaces
        for key in affected:
            self._apply(("service", *key), self._service_records(key), changed)
        count = len(affected)
        if objects is not None:
            journal, self._journal = self._journal, None  # recorded whole above, not object by object
            try:
                new_objects = {o.ident: o for o in objects}
                for ident in [i for i in self.objects if i not in new_objects]:
                    count += self._delete_object(ident, changed)
                for record in new_objects.values():
                    count += self._put_object(record, changed)
            finally:
                self._journal = journal
        return count

    def see_version(self, version: int | None) -> None:
        """The source has seen this version of the data (a resourceVersion, the file's mtime)."""
        if version is not None and (self._version is None or version > self._version):
            self._version = version
            if self._journal is not None:
                self._journal.append(("version", version))

    def put_service(self, record: ServiceRecord, version: int | None = None) -> None:
        """Add or replace one Service."""
        self.see_version(version)
        changed: set[str] = set()
        self._put_service(record, changed)
        self._unchanged_event(("service", *record.key), version, changed)
        self._commit(changed)

    def delete_service(self, namespace: str, name: str, version: int | None = None) -> None:
        """Remove one Service (its slices stay until deleted, as in the API)."""
        self.see_version(version)
        changed: set[str] = set()
        self._delete_service((namespace, name), changed)
        self._unchanged_event(("service", namespace, name), version, changed)
        self._commit(changed)

    def put_slice(self, record: SliceRecord, version: int | None = None) -> None:
        """Add or replace one EndpointSlice."""
        self.see_version(version)
        changed: set[str] = set()
        self._put_slice(record, changed)
        self._unchanged_event(("service", record.namespace, record.service), version, changed)
        self._commit(changed)

    def delete_slice(self, namespace: str, name: str, version: int | None = None) -> None:
        """Remove one EndpointSlice."""
        self.see_version(version)
        changed: set[str] = set()
        old = self.slices.get((namespace, name))
        self._delete_slice((namespace, name), changed)
        if old is not None:
            self._unchanged_event(("service", old.namespace, old.service), version, changed)
        self._commit(changed)

    async def resync_all(self, services: Iterable[ServiceRecord], slices: Iterable[SliceRecord],
                         namespaces: Iterable[str] = (), version: int | None = None,
                         objects: Iterable[HostRecord] | None = None) -> int:
        """`replace` in steps that yield to the event loop, for a reload of the manifests file.

        A reload of 2,000 changed Services applied in one piece held the loop for about 50 ms (the
        soak's p99.9); this applies it like the informer's relist: new Namespaces first (so that no
        name vanishes in between), then Services and EndpointSlices in steps of `RESYNC_STEP`, each
        committed whole, then the Namespaces that are gone. Returns how many objects changed.
        The whole reload is one batch: one new serial and one journal entry (as `replace` gives),
        whatever the number of steps.
        """
        self.see_version(version)
        wanted = frozenset(namespaces)
        changed: set[str] = set()
        self._batch += 1
        try:
            self._set_namespaces(frozenset(self.namespaces) | wanted, changed)
            self._commit(changed)
            count = await self.resync_services(services)
            count += await self.resync_slices(slices)
            if objects is not None:
                count += await self.resync_objects(None, objects)
            changed = set()
            self._set_namespaces(wanted, changed)
        finally:
            self._batch -= 1
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

    async def resync_services(self, records: Iterable[ServiceRecord], namespace: str | None = None,
                              version: int | None = None) -> int:
        """Make the Services (of `namespace`, or all) exactly `records`; returns how many changed.

        For a relist: it diffs like `replace` but yields to the event loop every `RESYNC_STEP`
        objects, so that 50,000 unchanged Services do not stall answers for a fifth of a second.
        Each step is committed whole, every name is always either its old or its new self, and
        names that did not change never vanish. Only this kind is touched: the other kind's watch
        may keep delivering events in between.
        """
        self.see_version(version)
        return await self._resync(self.services, records, namespace, self._put_service, self._delete_service)

    async def resync_slices(self, records: Iterable[SliceRecord], namespace: str | None = None,
                            version: int | None = None) -> int:
        """`resync_services` for EndpointSlices."""
        self.see_version(version)
        return await self._resync(self.slices, records, namespace, self._put_slice, self._delete_slice)

    def put_object(self, record: HostRecord, version: int | None = None) -> None:
        """Add or replace one Ingress, Gateway or route."""
        self.see_version(version)
        changed: set[str] = set()
        self._put_object(record, changed)
        self._unchanged_event(record.ident, version, changed)
        self._commit(changed)

    def delete_object(self, ident: tuple[str, str, str], version: int | None = None) -> None:
        """Remove one Ingress, Gateway or route by (kind, namespace, name)."""
        self.see_version(version)
        changed: set[str] = set()
        self._delete_object(ident, changed)
        self._unchanged_event(ident, version, changed)
        self._commit(changed)

    async def resync_objects(self, kinds: Collection[str] | None, records: Iterable[HostRecord],
                             namespace: str | None = None, version: int | None = None) -> int:
        """`resync_services` for Ingresses, Gateways and routes of `kinds` (None: every kind)."""
        self.see_version(version)
        new = {r.ident: r for r in records}
        work: list[tuple[tuple[str, str, str], HostRecord | None]] = [
            (ident, None) for ident in self.objects
            if ident not in new and (kinds is None or ident[0] in kinds) and namespace in (None, ident[1])
        ]
        work.extend(new.items())
        changed: set[str] = set()
        count = 0
        self._batch += 1
        try:
            for done, (ident, record) in enumerate(work, 1):
                count += self._delete_object(ident, changed) if record is None else self._put_object(record, changed)
                if done % RESYNC_STEP == 0:
                    self._commit(changed)
                    changed = set()
                    await asyncio.sleep(0)
        finally:
            self._batch -= 1
        self._commit(changed)
        return count

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
        self._batch += 1
        try:
            for done, (key, record) in enumerate(work, 1):
                if record is None:
                    count += delete(key, changed)
                else:
                    count += put(record, changed)
                if done % RESYNC_STEP == 0:
                    self._commit(changed)
                    changed = set()
                    await asyncio.sleep(0)
        finally:
            self._batch -= 1
        self._commit(changed)
        return count

    # ---- internals ------------------------------------------------------------------------------

    #: Whether this index warns of annotated hostnames outside every zone (the Internet's view does not:
    #: it follows the cluster index, which already did).
    warns = True

    def _put_service(self, record: ServiceRecord, changed: set[str]) -> bool:
        if self.services.get(record.key) == record:
            return False
        self._warn_outside(record)
        self._record(("put_service", record))
        self.services[record.key] = record
        self._refresh(record.key, changed)
        return True

    def _warn_outside(self, record: ServiceRecord) -> None:
        """One warning per new version of a Service whose annotated hostnames lie outside every zone."""
        if self.warns and record.hostnames:
            outside = [h for h in record.hostnames if self.find_apex(h) is None]
            if outside:
                OBJECTS_SKIPPED.labels(reason="outside_zones").inc(len(outside))
                logger.warning("Service %s/%s: hostname %s outside every zone; skipped", record.namespace,
                               record.name, ", ".join(outside))

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
            _unlink(self._slices_by_service, (old.namespace, old.service), record.key)
            self._refresh((old.namespace, old.service), changed)
        _link(self._slices_by_service, record.service_key, record.key)
        self._refresh(record.service_key, changed)
        return True

    def _delete_slice(self, key: tuple[str, str], changed: set[str]) -> bool:
        old = self.slices.pop(key, None)
        if old is None:
            return False
        self._record(("delete_slice", key))
        owner = (old.namespace, old.service)
        _unlink(self._slices_by_service, owner, key)
        self._refresh(owner, changed)
        return True

    def _put_object(self, record: HostRecord, changed: set[str]) -> bool:
        ident = record.ident
        old = self.objects.get(ident)
        if old == record:
            return False
        self._warn_outside_object(record)
        self._record(("put_object", record))
        self.objects[ident] = record
        self._object_changed(ident, old, record, changed)
        return True

    def _delete_object(self, ident: tuple[str, str, str], changed: set[str]) -> bool:
        old = self.objects.pop(ident, None)
        if old is None:
            return False
        self._record(("delete_object", ident))
        self._object_changed(ident, old, None, changed)
        return True

    def _object_changed(self, ident: tuple[str, str, str], old: HostRecord | None, new: HostRecord | None,
                        changed: set[str]) -> None:
        """Rebuild the one object's names, and for a Gateway those of the routes attached to it."""
        if isinstance(old, RouteRecord):
            for parent in old.parents:
                routes = self._routes_by_gateway.get((parent.namespace, parent.name))
                if routes is not None:
                    routes.discard(ident)
                    if not routes:
                        del self._routes_by_gateway[(parent.namespace, parent.name)]
        if isinstance(new, RouteRecord):
            for parent in new.parents:
                self._routes_by_gateway.setdefault((parent.namespace, parent.name), set()).add(ident)
        self._apply(ident, self._object_records(ident), changed)
        if ident[0] == "gateway":
            for route in sorted(self._routes_by_gateway.get((ident[1], ident[2]), ())):
                self._apply(route, self._object_records(route), changed)

    def _warn_outside_object(self, record: HostRecord) -> None:
        """One warning per new version of an object with host names outside every zone."""
        if not self.warns:
            return
        if isinstance(record, IngressRecord):
            names, what = record.hosts, "Ingress"
        elif isinstance(record, GatewayRecord):
            names = tuple(x.hostname for x in record.listeners if x.hostname is not None)
            what = "Gateway"
        else:
            names, what = record.hostnames, {"httproute": "HTTPRoute", "grpcroute": "GRPCRoute"}.get(
                record.kind, "TLSRoute")
        outside = [h for h in names if self.find_apex(h) is None]
        if outside:
            OBJECTS_SKIPPED.labels(reason="outside_zones").inc(len(outside))
            logger.warning("%s %s/%s: host %s outside every zone; skipped", what, record.namespace, record.name,
                           ", ".join(outside))

    def _gateway_served(self, gateway: GatewayRecord) -> bool:
        classes = self.config.gateway_class
        return self.config.gateway_api and (not classes or gateway.gateway_class in classes)

    def _object_records(self, ident: tuple[str, str, str]) -> Records:
        """The records one Ingress, Gateway or route contributes (none when its option or class is off)."""
        record = self.objects.get(ident)
        records: Records = {}
        if isinstance(record, IngressRecord):
            classes = self.config.ingress_class
            if self.config.ingress and (not classes or record.ingress_class in classes):
                self._host_records(record.hosts, record.addresses, record.targets, records)
        elif isinstance(record, GatewayRecord):
            if self._gateway_served(record):
                hosts = tuple(x.hostname for x in record.listeners if x.hostname is not None)
                self._host_records(hosts, record.addresses, record.targets, records)
        elif isinstance(record, RouteRecord) and self.config.gateway_api:
            for parent in record.parents:
                gateway = self.objects.get(("gateway", parent.namespace, parent.name))
                if not isinstance(gateway, GatewayRecord) or not self._gateway_served(gateway):
                    continue
                for listener in gateway.listeners:
                    if parent.section is not None and listener.name != parent.section:
                        continue
                    if parent.port is not None and listener.port != parent.port:
                        continue
                    names = intersect_hostnames(listener.hostname, record.hostnames)
                    self._host_records(names, gateway.addresses, gateway.targets, records)
        return records

    def _published(self, addresses: tuple[str, ...]) -> tuple[str, ...]:
        """The addresses this index may serve (all of them; the Internet's view filters)."""
        return addresses

    def _host_records(self, names: Iterable[str], addresses: tuple[str, ...], targets: tuple[str, ...],
                      records: Records) -> None:
        """A/AAAA of the addresses at each in-zone name, or a CNAME to the first target when there are none.

        A wildcard name (`*.x`) goes into the zone as it is and answers per RFC 4592, as k8s_gateway and
        ExternalDNS do: it also matches deeper names that do not exist (an Ingress `*.x` means one label).
        """
        ttl = self.config.ttl
        addresses = self._published(addresses)
        packed = [_pack(a) for a in addresses]
        # The RRsets of one object, built once and shared (`_shared_rrset`) by all its names, by every
        # route of the same Gateway and by both views: 20,000 names then cost one tuple each, not three.
        own: dict[int, RRset] = {}
        for rtype, rdata in packed:
            own[rtype] = (ttl, (*own.get(rtype, (ttl, ()))[1], rdata))
        if not own and targets:
            own[CNAME] = (ttl, (targets[0],))
        shared = {rtype: _shared_rrset(rrset) for rtype, rrset in own.items()}
        for name in names:
            if not shared or not self._in_served_zone(name):
                continue
            types = records.get(name)
            if types is None:
                records[name] = dict(shared)
                continue
            if CNAME in types or (CNAME in shared and types):
                continue  # a CNAME stands alone (RFC 1034 3.6.2): the first source of this name wins
            for rtype, (_, rdatas) in shared.items():
                prev = types.get(rtype, (ttl, ()))[1]
                merged = (*prev, *(r for r in rdatas if r not in prev))
                types[rtype] = _shared_rrset((ttl, merged))

    def _refresh(self, key: tuple[str, str], changed: set[str]) -> None:
        self._apply(("service", *key), self._service_records(key), changed)

    def _commit(self, changed: set[str], force: bool = False) -> None:
        serial_before = self.serial
        serials_before = dict(self.serials)
        if changed:
            self._dirty = True
        if not self._batch:
            version = None if self._version is None else self._version & 0xFFFFFFFF
            if not self._based:
                # Until the first full sync (and at it) the serial is the version itself, so that
                # replicas whose informers finished their lists in a different order agree.
                if version is not None and version != self.serial:
                    self._move_serial(version)
                elif self._dirty and version is None:
                    self._move_serial((self.serial + 1) & 0xFFFFFFFF)
                self._dirty = False
                self._version_used = self._version
                self._based = self.synced
                for name in self.serials:  # every zone starts at the version of the full state
                    self._move_zone(name, self.serial, journal=False)
                self._dirty_zones.clear()
            elif self._dirty or self._version != self._version_used:
                if version is not None and serial_gt(version, self.serial):
                    self._move_serial(version)
                else:
                    self._move_serial((self.serial + 1) & 0xFFFFFFFF)
                self._version_used = self._version
                self._move_dirty_zones()
        zones_moved = self.serials != serials_before
        if self._journal is not None and (self._journal or self.serial != serial_before or zones_moved):
            # A moved serial is published even without operations: the last step of a stepped
            # relist or reload may have gone out already, and followers must take the serial too.
            ops, self._journal = self._journal, []
            for publish in self._publishers:
                publish(ops, self.serial, dict(self.serials))
        if changed or force or self.serial != serial_before or zones_moved:
            self._notify(changed)  # a moved serial alone changes every SOA-bearing answer

    def _move_serial(self, serial: int) -> None:
        """The global serial (the newest of all: the metric, the log, what followers are handed) moves."""
        self.serial = serial
        self._dirty = False

    def _mark_dirty(self, names: Iterable[str], changed: set[str]) -> None:
        """The zones of these names, where changed, have data their serial does not describe yet.

        Called from `_apply` whatever the caller (a signer's `put_extra` included). With the journal
        on, `_track` knows exactly which names' records changed (an owner's change that leaves the
        merged records as they were, such as a PTR two Services share, is none) and marks their zones
        itself; without it, every name whose contribution changed counts.
        """
        find = self.find_apex
        dirty = self._dirty_zones
        for name in names:
            if name not in changed:
                continue
            apex = find(name)
            if apex is not None:
                dirty.add(apex.name)

    def _unchanged_event(self, owner: Owner, version: int | None, changed: set[str]) -> None:
        """An event with a version that changed no record still moves the zones its object has records in.

        A replica that lists later sees the object's new resourceVersion, so the one that watched
        moves those zones too (a single zone behaves exactly as before zones had serials of their own).
        """
        if version is None or changed or not self._based:
            return
        find = self.find_apex
        for entry in self._contributions.get(owner, ()):
            apex = find(entry[0])
            if apex is not None:
                self._version_zones.add(apex.name)

    def _move_dirty_zones(self) -> None:
        """Each zone whose data changed takes the version when newer (RFC 1982), else serial + 1."""
        version = None if self._version is None else self._version & 0xFFFFFFFF
        zones = self._dirty_zones | self._version_zones
        self._version_zones = set()
        for name in sorted(zones):
            current = self.serials[name]
            self._move_zone(name, version if version is not None and serial_gt(version, current)
                            else (current + 1) & 0xFFFFFFFF)

    def _move_zone(self, name: str, serial: int, journal: bool = True) -> None:
        """A zone's serial moves: its pending diff becomes its journal entry from the old serial to this one.

        `journal=False` for the first serial of a full state (nothing before it to diff against).
        """
        old = self.serials[name]
        if old == serial:
            return
        self._dirty_zones.discard(name)
        pending_del, pending_add = self._pending[name]
        self._pending[name] = ({}, {})
        self.serials[name] = serial
        if journal and self.synced and self.journal_limit:
            # Sorted: the order of a diff must not depend on set iteration (hash seeds differ between
            # processes), so that every --workers process sends the same bytes for the same IXFR.
            deleted = tuple(sorted(((k[0], k[1], ttl, k[2]) for k, ttl in pending_del.items()), key=_rr_order))
            added = tuple(sorted(((k[0], k[1], ttl, k[2]) for k, ttl in pending_add.items()), key=_rr_order))
            entries = self.journals[name]
            entries.append(JournalEntry(old, serial, deleted, added))
            self.journal_records += len(deleted) + len(added)
            while entries and (len(entries) > self.journal_limit or self.journal_records > MAX_JOURNAL_RECORDS):
                dropped = entries.popleft()
                self.journal_records -= len(dropped.deleted) + len(dropped.added)
            for other in self.journals.values():  # the record bound is for all zones together
                while other and self.journal_records > MAX_JOURNAL_RECORDS:
                    dropped = other.popleft()
                    self.journal_records -= len(dropped.deleted) + len(dropped.added)
        apex = self._apex_by_name[name]
        for callback in self._serial_subscribers:
            callback(apex, serial)

    def _track(self, name: str, before: dict[int, RRset]) -> None:
        """Diff one name's records before and after a change into its zone's pending diff (exact, see above)."""
        after = self.rrsets_at(name)
        if before == after:
            return
        apex = self.find_apex(name)
        if apex is None:
            return  # outside every zone (an out-of-zone nameserver's glue): no transfer carries it
        self._dirty_zones.add(apex.name)
        pending_del, pending_add = self._pending[apex.name]
        for rtype, (ttl, rdatas) in before.items():
            new = after.get(rtype)
            for rdata in rdatas:
                if new is not None and new[0] == ttl and rdata in new[1]:
                    continue
                key = (name, rtype, rdata)
                if pending_add.get(key) == ttl:
                    del pending_add[key]  # added earlier in this serial: the net change is nothing
                else:
                    pending_del[key] = ttl
        for rtype, (ttl, rdatas) in after.items():
            old = before.get(rtype)
            for rdata in rdatas:
                if old is not None and old[0] == ttl and rdata in old[1]:
                    continue
                key = (name, rtype, rdata)
                if pending_del.get(key) == ttl:
                    del pending_del[key]  # deleted earlier in this serial: back as it was
                else:
                    pending_add[key] = ttl

    def _notify(self, changed: set[str]) -> None:
        for callback in self._subscribers:
            callback(changed)

    def _in_served_zone(self, name: str) -> bool:
        return self.find_apex(name) is not None

    def _apply(self, owner: Owner, new: Records, changed: set[str]) -> None:
        """Replace one owner's contribution by `new`, recording every owner name that changed.

        With a journal (after the first sync) or an open transfer snapshot, the records of each name
        about to change are read first, to diff them into the journal and save them for the readers.
        """
        old_flat = self._contributions.get(owner, ())
        new_flat = _flatten(new)
        if old_flat == new_flat:
            return
        tracking = (self.synced and self.journal_limit) or self._readers
        names = {entry[0] for entry in old_flat} | {entry[0] for entry in new_flat}
        if not tracking:
            self._apply_flat(owner, new, old_flat, new_flat, changed)
            self._mark_dirty(names, changed)
            return
        before = {name: self.rrsets_at(name) for name in names}
        for reader in self._readers:
            for name, records in before.items():
                reader.overlay.setdefault(name, records)
        self._apply_flat(owner, new, old_flat, new_flat, changed)
        if self.synced and self.journal_limit:
            for name, records in before.items():
                self._track(name, records)
        else:
            self._mark_dirty(names, changed)

    def _apply_flat(self, owner: Owner, new: Records, old_flat: Flat, new_flat: Flat, changed: set[str]) -> None:
        old = _unflatten(old_flat)
        for name in old.keys() - new.keys():
            self._withdraw(owner, name, old[name])
            changed.add(name)
        for name, types in new.items():
            previous = old.get(name)
            if previous == types:
                continue
            # One string per name, shared by both views, `_present`, `_names` and the contributions.
            name = sys.intern(name)
            if previous is None:
                self._present[name] = self._present.get(name, 0) + 1
                if self._present[name] == 1:
                    self._count_first_label(name, +1)
                    self._adjust_ancestors(name, +1)
            else:
                self._remove_types(owner, name, previous)
            by_type = _expand(self._names.get(name))
            for rtype, rrset in types.items():
                _add_owner(by_type, rtype, owner, rrset)
            self._store(name, by_type)
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
        entry = self._names.get(name)
        if entry is None:
            return
        by_type = _expand(entry)
        for rtype in types:
            _remove_owner(by_type, rtype, owner)
        self._store(name, by_type)

    def _store(self, name: str, by_type: dict[int, Shared]) -> None:
        """Keep a name's types in their compact form: a `Single` when one owner's one RRset is all."""
        if not by_type:
            self._names.pop(name, None)
            return
        if len(by_type) == 1:
            (rtype, shared), = by_type.items()
            if isinstance(shared, tuple):
                self._names[name] = (rtype, shared[0], shared[1], shared[2])
                return
        self._names[name] = by_type

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
        records = records_for_service(service, slices, self.cluster_domain, self.config.ttl, self._in_served_zone)
        return add_hostnames(records, service, self.cluster_domain, self._in_served_zone)


def _find_malloc_trim() -> Callable[[int], int] | None:
    if sys.platform != "linux":
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
        return None


_MALLOC_TRIM = _find_malloc_trim()


#: `gc.set_threshold`'s third value once synced (the default is 10): see `ZoneIndex.mark_synced`.
FULL_COLLECTION_THRESHOLD = 100


def release_free_memory() -> None:
    """Return the heap memory freed so far to the system (glibc `malloc_trim(0)`; nothing elsewhere).

    For after a full list or relist: parsing tens of thousands of API objects page by page frees as
    much memory as the zone keeps, and glibc keeps freed chunks inside its heaps (only the top of a
    heap is ever returned), so without this the process's RSS stays tens of megabytes above what it
    holds. It costs a walk over the free chunks (milliseconds), so it runs only after full lists.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


K = TypeVar("K")


def _link(index: dict[K, tuple[K, ...]], owner: K, key: K) -> None:
    """Add `key` to `owner`'s keys (a small tuple) in `index`."""
    keys = index.get(owner, ())
    if key not in keys:
        index[owner] = (*keys, key)


def _unlink(index: dict[K, tuple[K, ...]], owner: K, key: K) -> None:
    """Remove `key` from `owner`'s keys; an owner left without keys leaves the index."""
    keys = tuple(k for k in index.get(owner, ()) if k != key)
    if keys:
        index[owner] = keys
    else:
        index.pop(owner, None)


#: RRsets of Ingress and Gateway names, shared: the routes of one Gateway all carry its addresses.
_RRSETS: dict[RRset, RRset] = {}
#: Past this many distinct RRsets the table stops growing (new ones are simply not shared).
_MAX_SHARED_RRSETS = 65_536


def _shared_rrset(rrset: RRset) -> RRset:
    found = _RRSETS.get(rrset)
    if found is None:
        found = rrset
        if len(_RRSETS) < _MAX_SHARED_RRSETS:
            _RRSETS[rrset] = rrset
    return found


def _rr_order(record: XfrRR) -> tuple[str, int, str]:
    return record[0], record[1], repr(record[3])


def _wire(name: str) -> bytes:
    """Wire form of a plain dotted name ("" is the root)."""
    return b"".join(bytes((len(label),)) + label.encode() for label in name.split(".") if label) + b"\x00"


def _flatten(records: Records) -> Flat:
    """Records as one tuple; a name present without records (a Namespace) becomes (name, 0, 0, ())."""
    flat: list[tuple[str, int, int, tuple[Rdata, ...]]] = []
    for name, types in records.items():
        name = sys.intern(name)  # the one copy `_apply_flat` keys the name by
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


def _types_of(entry: Entry | None) -> Collection[int]:
    """The RR types of one `_names` entry."""
    if entry is None:
        return ()
    return (entry[0],) if isinstance(entry, tuple) else entry.keys()


def _expand(entry: Entry | None) -> dict[int, Shared]:
    """A `_names` entry as a type -> Shared dict to change (a fresh one for a `Single` or nothing)."""
    if entry is None:
        return {}
    if isinstance(entry, tuple):
        return {entry[0]: (entry[1], entry[2], entry[3])}
    return entry


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


def add_hostnames(records: Records, service: ServiceRecord, cluster_domain: str,
                  in_zone: Callable[[str], bool]) -> Records:
    """The Service's own name's A/AAAA (or CNAME) also under its annotated hostnames inside the zones.

    Built from the finished records, so a view that withheld the addresses withholds these too.
    """
    if not service.hostnames:
        return records
    base = records.get(f"{service.name}.{service.namespace}.svc.{cluster_domain}")
    if not base:
        return records
    copied = {rtype: rrset for rtype, rrset in base.items() if rtype in (A, AAAA, CNAME)}
    if not copied:
        return records
    for hostname in service.hostnames:
        if in_zone(hostname):
            types = records.setdefault(hostname, {})
            for rtype, rrset in copied.items():
                if rtype not in types:
                    types[rtype] = rrset
    return records
