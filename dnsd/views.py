"""What the Internet sees: the zone as if unpublished addresses did not exist (the publication policy).

Clients inside `--allow-recursion` are the cluster and get the full `ZoneIndex`; everyone else is the
Internet and gets an `InternetView`: a second index that follows every batch of the cluster index
(`ZoneIndex.publish_to`, the mechanism `--workers` followers use), so it is updated per event at the
cost of that event, holds the same global serial, and keeps its own IXFR journal and its own serial
per zone, which is why zone transfers and NOTIFY carry it: a zone's serial here moves only when what
the Internet sees of that zone changed, so a change of an unpublished address moves none. It
computes each Service's records from the same slim objects with the
addresses outside `--publish-networks` (by default: the private-use ones) removed first, so every
consequence follows from the one rule:

* A/AAAA, SRV targets' additional records (they are the targets' A/AAAA) and PTR hold only
  published addresses; endpoints without one are gone with their hostnames and SRV records.
* A ClusterIP Service left without addresses makes no records, and a headless Service without
  endpoints is NXDOMAIN already (the spec), so an object with no published address does not exist;
  the empty non-terminals only its names created (`_tcp.<svc>`, `<ns>.svc`) vanish with them.
* Namespaces are not marked present: a namespace exists for the Internet only through a published
  object in it. ExternalName CNAMEs are unaffected (no address to filter).
* Ingress and Gateway names carry only published addresses; one left with none is answered with the
  status's host name CNAME when there is one, and does not exist otherwise.
* Apex glue is filtered like any other address.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from functools import lru_cache

from dnsd.config import DEFAULT_UNPUBLISHED, Config, IPNetwork
from dnsd.kube.model import Endpoint, ServiceRecord, SliceRecord
from dnsd.zone import Op, Owner, Records, ZoneIndex, add_hostnames, records_for_service


class Publication:
    """The `--publish-networks` predicate: may the Internet receive this address?"""

    def __init__(self, networks: tuple[IPNetwork, ...]) -> None:
        self.explicit = bool(networks)
        self.networks = networks or tuple(ipaddress.ip_network(n) for n in DEFAULT_UNPUBLISHED)
        # (family, network as int, mask as int): inet_pton and integer masks cost about a microsecond an
        # address, a twentieth of ipaddress's parser, which a relist of 50,000 Services would feel.
        self._masks = tuple(
            (socket.AF_INET if net.version == 4 else socket.AF_INET6, int(net.network_address), int(net.netmask))
            for net in self.networks
        )
        # Small: a relist asks once per address, a watch event for a handful; a cache the size of the
        # cluster would cost tens of megabytes at 50,000 Services.
        self.allows = lru_cache(maxsize=4096)(self._decide)

    def _decide(self, address: str) -> bool:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        value = int.from_bytes(socket.inet_pton(family, address))
        if family == socket.AF_INET6 and value >> 32 == 0xFFFF:  # IPv4-mapped: judged as the IPv4 address
            family, value = socket.AF_INET, value & 0xFFFFFFFF
        inside = any(f == family and value & mask == net for f, net, mask in self._masks)
        return inside if self.explicit else not inside

    def service(self, record: ServiceRecord) -> ServiceRecord:
        """The Service with only its published addresses (the same object when all are)."""
        kept = tuple(a for a in record.addresses if self.allows(a))
        return record if len(kept) == len(record.addresses) else dataclasses.replace(record, addresses=kept)

    def slice(self, record: SliceRecord) -> SliceRecord:
        """The slice with only published endpoint addresses; endpoints left without one are dropped."""
        endpoints: list[Endpoint] = []
        changed = False
        for endpoint in record.endpoints:
            kept = tuple(a for a in endpoint.addresses if self.allows(a))
            if len(kept) != len(endpoint.addresses):
                changed = True
                if kept:
                    endpoints.append(dataclasses.replace(endpoint, addresses=kept))
            else:
                endpoints.append(endpoint)
        return dataclasses.replace(record, endpoints=tuple(endpoints)) if changed else record


class InternetView(ZoneIndex):
    """The zone index the Internet is answered from; fed only by following a cluster `ZoneIndex`."""

    warns = False

    def __init__(self, config: Config, cluster: ZoneIndex | None = None) -> None:
        self.publication = Publication(config.publish_networks)
        super().__init__(config)  # builds the static records, which need the predicate
        if cluster is not None:
            cluster.publish_to(self._follow_cluster)
            cluster._views.append(self)  # a late --workers follower takes our zone serials over

    view_name = "internet"

    def _follow_cluster(self, ops: list[Op], serial: int, serials: dict[str, int]) -> None:
        # The cluster's zone serials are not ours: a zone's serial here moves only when what the
        # Internet sees of it changed (`ZoneIndex.follow` without serials).
        self.follow(ops, serial)

    def _service_records(self, key: tuple[str, str]) -> Records:
        service = self.services.get(key)
        if service is None or not service.expose:
            return {}
        allowed = self.publication
        slices = [allowed.slice(self.slices[s]) for s in sorted(self._slices_by_service.get(key, ()))]
        published = allowed.service(service)
        records = records_for_service(published, slices, self.cluster_domain, self.config.ttl, self._in_served_zone)
        return add_hostnames(records, published, self.cluster_domain, self._in_served_zone)

    def _published(self, addresses: tuple[str, ...]) -> tuple[str, ...]:
        """Ingress and Gateway addresses: only the published ones (their CNAME targets are unaffected)."""
        allows = self.publication.allows
        return tuple(a for a in addresses if allows(a))

    def _static_records(self) -> Records:
        records = super()._static_records()
        allows = self.publication.allows
        for ns in self.config.nameserver:
            types = records.get(ns.name)
            if not types:
                continue
            for rtype in list(types):
                if rtype not in (1, 28):
                    continue
                ttl, rdatas = types[rtype]
                kept = tuple(r for r in rdatas if isinstance(r, bytes) and allows(str(ipaddress.ip_address(r))))
                if kept:
                    types[rtype] = (ttl, kept)
                else:
                    del types[rtype]
            if not types:
                del records[ns.name]
        return records

    def put_extra(self, owner: Owner, records: Records) -> None:
        """The view's own signer's apex records (DNSKEY, CDS, CDNSKEY, NSEC3PARAM), without a serial move.

        The view's serial is the cluster index's (it follows it), so it must never move on its own:
        the cluster's signer puts the same apex records right after this one (app.py ticks the
        Internet's signer first), which moves the cluster's serial, and the view takes that serial,
        with this change in its journal entry, when it follows the batch.
        """
        changed: set[str] = set()
        self._apply(owner, records, changed)
        if changed:
            self._notify(changed)  # not marked dirty: `settled` (transfers wait on it) is the cluster's

    def _apply(self, owner: Owner, new: Records, changed: set[str]) -> None:
        if owner[0] == "namespace":
            new = {}  # a namespace exists for the Internet only through a published object in it
        super()._apply(owner, new, changed)
