"""The zone's memory-saving representations give exactly the answers the plain ones gave.

A name with one RRset of one owner (nearly every name) is stored as one 4-tuple instead of a type
table; a second type or a second owner turns it into the table, and removing them turns it back. These
tests walk those transitions and check every reader (`rrset`, `existence`, `types_at`, `rrsets_at`,
`record_count`, transfer snapshots) against what the records must be, and that the storage after the
way back is the same as if the extra records had never been there. They also pin down that record keys
are made once and shared by both views, and that names are one string in both views.
"""

from __future__ import annotations

import dataclasses
import pickle

import dnsd.config
from dnsd.kube.model import IngressRecord, Port, ServiceRecord
from dnsd.views import InternetView
from dnsd.zone import AAAA, CNAME, PTR, SRV, ZoneIndex, release_free_memory, reverse_name

ZONE = "c2.k8s.ooo"
HOSTS = "example.net"


def make_zone(transfer: bool = False) -> ZoneIndex:
    mapping = {"zone": [ZONE, HOSTS], "reverse_zone": ["2001:db8:42::/48"], "recursion": "off", "ingress": True}
    if transfer:
        mapping["transfer_allow"] = ["127.0.0.1/32"]
    zone = ZoneIndex(dnsd.config.from_mapping(mapping))
    zone.mark_synced()
    return zone


def svc(name: str, *addresses: str, hostnames: tuple[str, ...] = ()) -> ServiceRecord:
    return ServiceRecord("default", name, False, addresses, None, (Port("http", "tcp", 80),), False, True, None,
                         hostnames)


def base(name: str) -> str:
    return f"{name}.default.svc.{ZONE}"


def records(zone: ZoneIndex) -> set[tuple[str, int, int, object]]:
    """Every record a transfer of the first zone sends (the snapshot reader walks the storage itself)."""
    apex = zone.apexes[0]
    snapshot = zone.open_snapshot(apex)
    try:
        return set(snapshot.records())
    finally:
        snapshot.close()


def test_one_owner_one_type_is_compact_and_answers() -> None:
    zone = make_zone()
    zone.put_service(svc("web", "2001:db8:42::5"))
    name = base("web")
    entry = zone._names[name]
    assert isinstance(entry, tuple) and entry[0] == AAAA
    assert zone.rrset(name, AAAA) == (30, (bytes.fromhex("20010db8004200000000000000000005"),))
    assert zone.rrset(name, SRV) is None
    apex, exists, types = zone.existence(name)
    assert apex is not None and exists and AAAA in types and SRV not in types
    assert zone.types_at(name) == [AAAA]
    assert set(zone.rrsets_at(name)) == {AAAA}
    assert (name, AAAA, 30, bytes.fromhex("20010db8004200000000000000000005")) in records(zone)
    assert zone.rrset(f"_http._tcp.{name}", SRV) == (30, ((0, 100, 80, name),))


def test_second_owner_and_second_type_and_back() -> None:
    zone = make_zone(transfer=True)
    zone.put_service(svc("web", "2001:db8:42::5"))
    pristine = (dict(zone._names), dict(zone._present), dict(zone._below), dict(zone._contributions))
    ptr = reverse_name("2001:db8:42::5")
    count = zone.record_count

    # A second owner of the same RRset (two Services sharing an address share its PTR name).
    zone.put_service(svc("api", "2001:db8:42::5"))
    assert isinstance(zone._names[ptr], dict)
    ttl, targets = zone.rrset(ptr, PTR) or (0, ())
    assert ttl == 30 and set(targets) == {base("web"), base("api")}

    # A second type at one name: an Ingress host with an IPv4 address (A), then the same name as the
    # Service's annotated hostname (its AAAA): two owners, two types.
    host = f"shop.{HOSTS}"
    zone.put_object(IngressRecord("default", "shop", None, (host,), ("192.0.2.7",), ()))
    assert isinstance(zone._names[host], tuple)
    zone.put_service(svc("web", "2001:db8:42::5", hostnames=(host,)))
    by_type = zone._names[host]
    assert isinstance(by_type, dict) and set(by_type) == {1, AAAA}
    assert zone.types_at(host) == [1, AAAA]
    assert zone.rrset(host, 1) == (30, (bytes([192, 0, 2, 7]),))
    assert zone.rrset(host, AAAA) == (30, (bytes.fromhex("20010db8004200000000000000000005"),))
    _apex, exists, types = zone.existence(host)
    assert exists and set(types) == {1, AAAA}
    assert zone.rrset(host, CNAME) is None

    # And back: the storage is exactly what it was, in its compact form again.
    zone.delete_object(("ingress", "default", "shop"))
    assert isinstance(zone._names[host], tuple)
    zone.put_service(svc("web", "2001:db8:42::5"))
    zone.delete_service("default", "api")
    assert isinstance(zone._names[ptr], tuple)
    assert (zone._names, zone._present, zone._below, zone._contributions) == pristine
    assert zone.record_count == count
    # The IXFR journal saw every step as record changes of the merged RRsets, nothing else.
    assert zone.journal and all(entry.deleted or entry.added for entry in zone.journal)


def test_names_are_one_string_in_both_views_and_keys_are_shared() -> None:
    config = dnsd.config.from_mapping({"zone": ZONE, "recursion": "off", "publish_networks": ["2001:db8::/32"]})
    cluster = ZoneIndex(config)
    internet = InternetView(config, cluster)
    record = svc("web", "2001:db8:42::5")
    cluster.put_service(record)
    cluster.mark_synced()
    name = base("web")
    assert internet.rrset(name, AAAA) == cluster.rrset(name, AAAA)
    cluster_name = next(n for n in cluster._names if n == name)
    internet_name = next(n for n in internet._names if n == name)
    assert cluster_name is internet_name
    flat = internet._contributions[("service", "default", "web")]
    assert all(entry[0] is cluster_name for entry in flat if entry[0] == name)
    assert record.key is record.key and record.key == ("default", "web")
    assert next(k for k in internet.services) is record.key


def test_record_keys_are_derived_whatever_the_constructor_is_given() -> None:
    record = svc("web", "2001:db8:42::5")
    rebuilt = ServiceRecord(**{f: getattr(record, f) for f in record.__slots__})
    assert rebuilt == record and rebuilt.key == ("default", "web")
    renamed = dataclasses.replace(record, name="api")
    assert renamed.key == ("default", "api")
    wrong = ServiceRecord("default", "x", False, (), None, (), False, True, None, (), ("other", "y"))
    assert wrong.key == ("default", "x")
    copied = pickle.loads(pickle.dumps(record))  # noqa: S301  # our own bytes: what --workers followers receive
    assert copied == record and copied.key == record.key and hash(copied) == hash(record)


def test_release_free_memory_is_harmless() -> None:
    zone = make_zone()
    zone.put_service(svc("web", "2001:db8:42::5"))
    release_free_memory()
    assert zone.rrset(base("web"), AAAA) is not None


def test_once_synced_full_collections_are_rarer() -> None:
    """mark_synced freezes the first state and raises the full-collection threshold, so that full passes
    over what was made since (tens of ms each) stop showing in the latency quantiles."""
    import gc

    from dnsd import config as config_module
    from dnsd.zone import FULL_COLLECTION_THRESHOLD, ZoneIndex

    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        zone = ZoneIndex(config_module.from_mapping({"zone": "c2.k8s.ooo"}))
        zone.mark_synced()
        assert gc.get_threshold() == (700, 10, FULL_COLLECTION_THRESHOLD)
        assert FULL_COLLECTION_THRESHOLD > 10
    finally:
        gc.set_threshold(*before)
