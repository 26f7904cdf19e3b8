"""Slim records of the Kubernetes objects dnsd serves, and the converters from API objects.

This is the only code that knows the shape of Service and EndpointSlice objects. Both sources, the
manifests file and the live informer, hand plain dicts in the API's JSON shape (camelCase keys, as
`kubectl get -o yaml` prints and as the API server sends) to `service_from_api` /
`slice_from_api`, and keep only what comes back: a few strings and tuples per object instead of the
whole object, so that 50,000 services stay small (CoreDNS's object/service.go does the same).

Objects with names that are not valid DNS labels are rejected here with `InvalidObject`, whose
message the caller logs once as a warning; a bad annotation drops only itself.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from dnsd.metrics import OBJECTS_SKIPPED

logger = logging.getLogger(__name__)

EXPOSE_ANNOTATION = "dnsd.k8s.ooo/expose"
TTL_ANNOTATION = "dnsd.k8s.ooo/ttl"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
#: ExternalDNS's annotations (ARCHITECTURE.md "Contract: more names"): the GA prefix wins over the alpha one.
HOSTNAME_ANNOTATIONS = ("external-dns.kubernetes.io/hostname", "external-dns.alpha.kubernetes.io/hostname")
EXTERNAL_TTL_ANNOTATIONS = ("external-dns.kubernetes.io/ttl", "external-dns.alpha.kubernetes.io/ttl")
_DURATION = re.compile(r"^(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?$")

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_HOST_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


class InvalidObject(ValueError):
    """An API object that cannot be served; the message says which object and why."""


@dataclass(frozen=True, slots=True)
class Port:
    """A named port: becomes `_<name>._<protocol>` SRV records. Unnamed ports are not kept."""

    name: str
    protocol: str  # lower case: tcp, udp, sctp
    port: int


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    """What dnsd keeps of a Service."""

    namespace: str
    name: str
    headless: bool
    addresses: tuple[str, ...]  # ClusterIPs, externalIPs, load-balancer ingress IPs (canonical text)
    external_name: str | None
    ports: tuple[Port, ...]
    publish_not_ready: bool
    expose: bool
    ttl: int | None
    #: Extra names from the ExternalDNS hostname annotation (validated, lower case, `*.` allowed).
    hostnames: tuple[str, ...] = ()
    #: (namespace, name), made once: both views key their tables by it, and a tuple per use would
    #: cost 56 bytes per table per view (megabytes at 50,000 Services). Always derived: a value given
    #: to the constructor is ignored (it accepts one so that a record rebuilt from its slots works).
    key: tuple[str, str] = field(default=("", ""), repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.namespace, self.name))


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One endpoint of a slice: its addresses, optional hostname and readiness."""

    addresses: tuple[str, ...]
    hostname: str | None
    ready: bool


@dataclass(frozen=True, slots=True)
class SliceRecord:
    """What dnsd keeps of an EndpointSlice; `service` is the owning Service's name (from its label)."""

    namespace: str
    name: str
    service: str
    endpoints: tuple[Endpoint, ...]
    ports: tuple[Port, ...]
    #: (namespace, name) and (namespace, service), made once for the same reason as `ServiceRecord.key`.
    key: tuple[str, str] = field(init=False, repr=False, compare=False)
    service_key: tuple[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", (self.namespace, self.name))
        object.__setattr__(self, "service_key", (self.namespace, self.service))


def _meta(obj: dict[str, Any], kind: str) -> tuple[str, str, dict[str, Any]]:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        raise InvalidObject(f"{kind} without metadata")
    name = meta.get("name")
    namespace = meta.get("namespace") or "default"
    if not isinstance(name, str) or not isinstance(namespace, str):
        raise InvalidObject(f"{kind} without a name")
    return namespace, name, meta


def _check_label(value: str, what: str, ident: str) -> str:
    """The label lower-cased and interned: namespaces and service names repeat across thousands of
    records (every slice names its service), so one shared string each keeps a large cluster small."""
    lowered = value.lower()
    if not _DNS_LABEL.match(lowered):
        raise InvalidObject(f"{ident}: {what} {value!r} is not a valid DNS label")
    return sys.intern(lowered)


#: Every distinct Port ever seen, so that 50,000 services with `http/tcp/80` share one object.
_PORTS: dict[tuple[str, str, int], Port] = {}
#: Past this many distinct ports the table stops growing (new ones are simply not shared).
_MAX_SHARED_PORTS = 65_536


def _port(name: str, protocol: str, number: int) -> Port:
    key = (name, protocol, number)
    port = _PORTS.get(key)
    if port is None:
        port = Port(sys.intern(name), sys.intern(protocol), number)
        if len(_PORTS) < _MAX_SHARED_PORTS:
            _PORTS[key] = port
    return port


def _canonical_ip(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None


def _ports(raw: Any, ident: str) -> tuple[Port, ...]:
    ports: list[Port] = []
    if not isinstance(raw, list):
        return ()
    for item in raw:
        if not isinstance(item, dict):
            continue
        name = item.get("name")
        number = item.get("port")
        if not name or not isinstance(name, str):
            continue  # unnamed ports have no SRV record
        if not _PORT_NAME.match(name.lower()):
            logger.warning("%s: port name %r is not a valid DNS label; no SRV for it", ident, name)
            continue
        if not isinstance(number, int) or not 0 < number < 65536:
            continue
        protocol = str(item.get("protocol") or "TCP").lower()
        if protocol not in ("tcp", "udp", "sctp"):
            continue
        ports.append(_port(name.lower(), protocol, number))
    return _port_tuple(tuple(ports))


#: Every distinct tuple of ports, shared the same way: most Services and slices of a cluster have one of
#: a few port lists, and a tuple each costs 56 bytes or more (megabytes at 50,000 Services and slices).
_PORT_TUPLES: dict[tuple[Port, ...], tuple[Port, ...]] = {}


def _port_tuple(ports: tuple[Port, ...]) -> tuple[Port, ...]:
    found = _PORT_TUPLES.get(ports)
    if found is None:
        found = ports
        if len(_PORT_TUPLES) < _MAX_SHARED_PORTS:
            _PORT_TUPLES[ports] = ports
    return found


def service_from_api(obj: dict[str, Any]) -> ServiceRecord:
    """Slim a Service (API JSON shape); raises InvalidObject when it cannot be served at all."""
    namespace, name, meta = _meta(obj, "Service")
    ident = f"Service {namespace}/{name}"
    namespace = _check_label(namespace, "namespace", ident)
    name = _check_label(name, "name", ident)
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    annotations = meta.get("annotations") or {}
    if not isinstance(spec, dict) or not isinstance(annotations, dict):
        raise InvalidObject(f"{ident}: malformed spec or annotations")

    expose = True
    raw_expose = annotations.get(EXPOSE_ANNOTATION)
    if raw_expose is not None:
        text = str(raw_expose).strip().lower()
        if text in ("false", "no", "0"):
            expose = False
        elif text not in ("true", "yes", "1"):
            logger.warning("%s: annotation %s=%r is not true/false; ignored", ident, EXPOSE_ANNOTATION,
                           raw_expose)
    ttl: int | None = None
    for ttl_key in (TTL_ANNOTATION, *EXTERNAL_TTL_ANNOTATIONS):
        raw_ttl = annotations.get(ttl_key)
        if raw_ttl is None:
            continue
        ttl = parse_ttl(raw_ttl)
        if ttl is not None:
            break
        logger.warning("%s: annotation %s=%r is not a TTL in seconds; ignored", ident, ttl_key, raw_ttl)
    hostnames = _hostnames(annotations, ident)

    svc_type = spec.get("type") or "ClusterIP"
    external_name: str | None = None
    headless = False
    addresses: list[str] = []
    if svc_type == "ExternalName":
        raw_target = spec.get("externalName")
        target = str(raw_target or "").strip().rstrip(".").lower()
        labels = target.split(".") if target else []
        if not labels or len(target) > 253 or not all(_HOST_LABEL.match(lbl) for lbl in labels):
            raise InvalidObject(f"{ident}: externalName {raw_target!r} is not a valid domain name")
        external_name = target
    else:
        cluster_ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
        headless = any(str(ip) == "None" for ip in cluster_ips) or not cluster_ips
        if not headless:
            addresses.extend(ip for ip in map(_canonical_ip, cluster_ips) if ip)
        addresses.extend(ip for ip in map(_canonical_ip, spec.get("externalIPs") or []) if ip)
        ingress = (status.get("loadBalancer") or {}).get("ingress") or [] if isinstance(status, dict) else []
        for entry in ingress:
            if isinstance(entry, dict):
                ip = _canonical_ip(entry.get("ip"))
                if ip:
                    addresses.append(ip)
    return ServiceRecord(
        namespace=namespace,
        name=name,
        headless=headless,
        addresses=tuple(dict.fromkeys(addresses)),
        external_name=external_name,
        ports=_ports(spec.get("ports"), ident),
        publish_not_ready=bool(spec.get("publishNotReadyAddresses")),
        expose=expose,
        ttl=ttl,
        hostnames=hostnames,
    )


def parse_ttl(raw: Any) -> int | None:
    """A TTL annotation: seconds (`"60"`), or a duration as ExternalDNS accepts (`"1m30s"`); None if neither."""
    text = str(raw).strip().lower()
    if text.isascii() and text.isdigit():  # isdigit alone takes "²", which int() does not
        value = int(text)
    else:
        match = _DURATION.match(text)
        if not text or match is None:
            return None
        hours, minutes, seconds = (int(g or 0) for g in match.groups())
        value = hours * 3600 + minutes * 60 + seconds
    return value if value <= 2**31 - 1 else None


def valid_hostname(raw: Any) -> str | None:
    """A host name as given in an annotation, Ingress or route: lower case, no trailing dot, an optional
    leading `*.`; None when it is not a valid domain name."""
    if not isinstance(raw, str):
        return None
    text = raw.strip().rstrip(".").lower()
    labels = text.split(".")
    if labels and labels[0] == "*":
        labels = labels[1:]
    if len(labels) < 2 or len(text) > 253 or not all(_HOST_LABEL.match(label) for label in labels):
        return None
    return sys.intern(text)


def _hostnames(annotations: dict[str, Any], ident: str) -> tuple[str, ...]:
    """The names of the first hostname annotation set (GA before alpha); invalid ones warned and skipped."""
    for key in HOSTNAME_ANNOTATIONS:
        raw = annotations.get(key)
        if raw is None:
            continue
        names: list[str] = []
        bad: list[str] = []
        for item in str(raw).split(","):
            if not item.strip():
                continue
            name = valid_hostname(item)
            if name is None:
                bad.append(item.strip())
            else:
                names.append(name)
        if bad:
            OBJECTS_SKIPPED.labels(reason="invalid_hostname").inc(len(bad))
            logger.warning("%s: annotation %s: %s not a valid host name; skipped", ident, key,
                           ", ".join(repr(b) for b in bad))
        return tuple(dict.fromkeys(names))
    return ()


def slice_from_api(obj: dict[str, Any]) -> SliceRecord:
    """Slim an EndpointSlice (discovery.k8s.io/v1, API JSON shape)."""
    namespace, name, meta = _meta(obj, "EndpointSlice")
    ident = f"EndpointSlice {namespace}/{name}"
    labels = meta.get("labels") or {}
    service = labels.get(SERVICE_NAME_LABEL) if isinstance(labels, dict) else None
    if not isinstance(service, str) or not service:
        raise InvalidObject(f"{ident}: no {SERVICE_NAME_LABEL} label")
    namespace = _check_label(namespace, "namespace", ident)
    service = _check_label(service, "service name", ident)
    address_type = obj.get("addressType")
    endpoints: list[Endpoint] = []
    for item in obj.get("endpoints") or []:
        if not isinstance(item, dict):
            continue
        addresses = tuple(ip for ip in map(_canonical_ip, item.get("addresses") or []) if ip)
        if address_type == "FQDN" or not addresses:
            continue
        conditions = item.get("conditions") or {}
        ready = conditions.get("ready") if isinstance(conditions, dict) else None
        hostname = item.get("hostname")
        if hostname is not None:
            hostname = str(hostname).lower()
            if not _DNS_LABEL.match(hostname):
                logger.warning("%s: hostname %r is not a valid DNS label; ignored", ident, item["hostname"])
                hostname = None
        # discovery.k8s.io/v1: "a nil value indicates an unknown state ... interpreted as ready"
        endpoints.append(Endpoint(addresses, hostname, ready is None or bool(ready)))
    return SliceRecord(
        namespace=namespace,
        name=name,
        service=service,
        endpoints=tuple(endpoints),
        ports=_ports(obj.get("ports"), ident),
    )


def namespace_from_api(obj: dict[str, Any]) -> str:
    """A Namespace's name, validated as a DNS label."""
    _, name, _ = _meta(obj, "Namespace")
    return _check_label(name, "name", f"Namespace {name}")


# ---- Ingress and Gateway API (ARCHITECTURE.md "Contract: more names") ---------------------------------
#
# These records keep only what naming needs: the host names (validated here), the addresses and target
# host names of the object's status, and for routes the parents that both the route and the Gateway's
# controller agree on. Class filters and zones are judged by the zone index, which knows the options.

INGRESS_CLASS_ANNOTATION = "kubernetes.io/ingress.class"
GATEWAY_GROUP = "gateway.networking.k8s.io"
#: The route kinds whose hostnames are published (all v1 in Gateway API v1.6), by API kind.
ROUTE_KINDS = {"HTTPRoute": "httproute", "GRPCRoute": "grpcroute", "TLSRoute": "tlsroute"}


@dataclass(frozen=True, slots=True)
class IngressRecord:
    """What dnsd keeps of an Ingress (networking.k8s.io/v1)."""

    namespace: str
    name: str
    ingress_class: str | None  # spec.ingressClassName, else the legacy annotation
    hosts: tuple[str, ...]  # spec.rules[].host and spec.tls[].hosts, validated, `*.` allowed
    addresses: tuple[str, ...]  # status.loadBalancer.ingress[].ip
    targets: tuple[str, ...]  # status.loadBalancer.ingress[].hostname (CNAME targets)

    @property
    def ident(self) -> tuple[str, str, str]:
        return ("ingress", self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class Listener:
    """One Gateway listener: its name and port (what a parentRef's sectionName/port select) and hostname."""

    name: str
    port: int
    hostname: str | None  # None: the listener accepts any route hostname


@dataclass(frozen=True, slots=True)
class GatewayRecord:
    """What dnsd keeps of a Gateway (gateway.networking.k8s.io/v1)."""

    namespace: str
    name: str
    gateway_class: str
    listeners: tuple[Listener, ...]
    addresses: tuple[str, ...]  # status.addresses of type IPAddress (or unset)
    targets: tuple[str, ...]  # status.addresses of type Hostname

    @property
    def ident(self) -> tuple[str, str, str]:
        return ("gateway", self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class ParentRef:
    """A Gateway a route is attached to, optionally to one listener (by name and/or port)."""

    namespace: str
    name: str
    section: str | None
    port: int | None


@dataclass(frozen=True, slots=True)
class RouteRecord:
    """What dnsd keeps of an HTTPRoute, GRPCRoute or TLSRoute: its hostnames and its accepted parents."""

    kind: str  # httproute, grpcroute, tlsroute
    namespace: str
    name: str
    hostnames: tuple[str, ...]
    #: Parents both in spec.parentRefs and in status.parents with Accepted=True (as ExternalDNS does:
    #: a route the Gateway's controller rejected serves no traffic, so it gets no name).
    parents: tuple[ParentRef, ...]

    @property
    def ident(self) -> tuple[str, str, str]:
        return (self.kind, self.namespace, self.name)


HostRecord = IngressRecord | GatewayRecord | RouteRecord


def _valid_hosts(raw: list[Any], ident: str, what: str) -> tuple[str, ...]:
    """Validated host names; the invalid ones are counted and warned about in one line for the object."""
    names: list[str] = []
    bad: list[str] = []
    for item in raw:
        if item is None or (isinstance(item, str) and not item.strip()):
            continue
        name = valid_hostname(item)
        if name is None:
            bad.append(repr(item))
        else:
            names.append(name)
    if bad:
        OBJECTS_SKIPPED.labels(reason="invalid_hostname").inc(len(bad))
        logger.warning("%s: %s %s not a valid host name; skipped", ident, what, ", ".join(bad))
    return tuple(dict.fromkeys(names))


def _status_addresses(entries: Any, ip_key: str, host_key: str | None, type_key: str | None
                      ) -> tuple[tuple[str, ...], tuple[str, ...]]:
    addresses: list[str] = []
    targets: list[str] = []
    for entry in entries if isinstance(entries, list) else ():
        if not isinstance(entry, dict):
            continue
        if type_key is not None:  # Gateway status.addresses: {type, value}
            kind = entry.get(type_key) or "IPAddress"
            if kind == "IPAddress":
                ip = _canonical_ip(entry.get(ip_key))
                if ip:
                    addresses.append(ip)
            elif kind == "Hostname":
                target = valid_hostname(entry.get(ip_key))
                if target and not target.startswith("*."):
                    targets.append(target)
            continue
        ip = _canonical_ip(entry.get(ip_key))
        if ip:
            addresses.append(ip)
        elif host_key is not None:
            target = valid_hostname(entry.get(host_key))
            if target and not target.startswith("*."):
                targets.append(target)
    return tuple(dict.fromkeys(addresses)), tuple(dict.fromkeys(targets))


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def ingress_from_api(obj: dict[str, Any]) -> IngressRecord:
    """Slim an Ingress (networking.k8s.io/v1, API JSON shape)."""
    namespace, name, meta = _meta(obj, "Ingress")
    ident = f"Ingress {namespace}/{name}"
    namespace = _check_label(namespace, "namespace", ident)
    name = sys.intern(name.lower())
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    annotations = meta.get("annotations") or {}
    if not isinstance(spec, dict) or not isinstance(status, dict) or not isinstance(annotations, dict):
        raise InvalidObject(f"{ident}: malformed spec, status or annotations")
    ingress_class = spec.get("ingressClassName")
    if not isinstance(ingress_class, str) or not ingress_class:
        legacy = annotations.get(INGRESS_CLASS_ANNOTATION)  # what ExternalDNS also honours
        ingress_class = legacy if isinstance(legacy, str) and legacy else None
    raw_hosts: list[Any] = [rule.get("host") for rule in _dicts(spec.get("rules"))]
    for tls in _dicts(spec.get("tls")):
        hosts = tls.get("hosts")
        if isinstance(hosts, list):
            raw_hosts.extend(hosts)
    hosts = _valid_hosts(raw_hosts, ident, "host")
    load_balancer = status.get("loadBalancer") or {}
    entries = load_balancer.get("ingress") if isinstance(load_balancer, dict) else None
    addresses, targets = _status_addresses(entries, "ip", "hostname", None)
    return IngressRecord(namespace, name, sys.intern(ingress_class) if ingress_class else None, hosts,
                         addresses, targets)


def gateway_from_api(obj: dict[str, Any]) -> GatewayRecord:
    """Slim a Gateway (gateway.networking.k8s.io/v1, API JSON shape)."""
    namespace, name, _ = _meta(obj, "Gateway")
    ident = f"Gateway {namespace}/{name}"
    namespace = _check_label(namespace, "namespace", ident)
    name = sys.intern(name.lower())
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    if not isinstance(spec, dict) or not isinstance(status, dict):
        raise InvalidObject(f"{ident}: malformed spec or status")
    gateway_class = spec.get("gatewayClassName")
    if not isinstance(gateway_class, str) or not gateway_class:
        raise InvalidObject(f"{ident}: no spec.gatewayClassName")
    listeners: list[Listener] = []
    bad: list[Any] = []
    for item in _dicts(spec.get("listeners")):
        lname, port, raw_host = item.get("name"), item.get("port"), item.get("hostname")
        if not isinstance(lname, str) or not isinstance(port, int) or isinstance(port, bool):
            continue
        hostname = None
        if raw_host is not None:
            hostname = valid_hostname(raw_host)
            if hostname is None:
                bad.append(repr(raw_host))
                continue  # a listener with an invalid hostname accepts nothing the API would let through
        listeners.append(Listener(sys.intern(lname), port, hostname))
    if bad:
        OBJECTS_SKIPPED.labels(reason="invalid_hostname").inc(len(bad))
        logger.warning("%s: listener hostname %s not a valid host name; skipped", ident, ", ".join(bad))
    addresses, targets = _status_addresses(status.get("addresses"), "value", None, "type")
    return GatewayRecord(namespace, name, sys.intern(gateway_class), tuple(listeners), addresses, targets)


def _parent_ref(ref: dict[str, Any], route_namespace: str) -> ParentRef | None:
    """A parentRef that names a Gateway (group and kind default to Gateway API's Gateway), else None."""
    group = ref.get("group", GATEWAY_GROUP)
    kind = ref.get("kind", "Gateway")
    name = ref.get("name")
    if group != GATEWAY_GROUP or kind != "Gateway" or not isinstance(name, str) or not name:
        return None
    namespace = ref.get("namespace") or route_namespace
    section = ref.get("sectionName")
    port = ref.get("port")
    return ParentRef(
        sys.intern(str(namespace).lower()),
        sys.intern(name.lower()),
        section if isinstance(section, str) and section else None,
        port if isinstance(port, int) and not isinstance(port, bool) else None,
    )


def _accepted(parent_status: dict[str, Any]) -> bool:
    conditions = _dicts(parent_status.get("conditions"))
    return any(c.get("type") == "Accepted" and c.get("status") == "True" for c in conditions)


def route_from_api(obj: dict[str, Any], api_kind: Any = None) -> RouteRecord:
    """Slim an HTTPRoute, GRPCRoute or TLSRoute (gateway.networking.k8s.io/v1, API JSON shape).

    `api_kind` is the kind when the caller knows it (a list's items need not carry their kind).
    """
    api_kind = api_kind or obj.get("kind")
    kind = ROUTE_KINDS.get(api_kind) if isinstance(api_kind, str) else None
    if kind is None:
        raise InvalidObject(f"{api_kind!r} is not a route kind dnsd serves")
    namespace, name, _ = _meta(obj, api_kind)
    ident = f"{api_kind} {namespace}/{name}"
    namespace = _check_label(namespace, "namespace", ident)
    name = sys.intern(name.lower())
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    if not isinstance(spec, dict) or not isinstance(status, dict):
        raise InvalidObject(f"{ident}: malformed spec or status")
    raw_hosts = spec.get("hostnames")
    hostnames = _valid_hosts(raw_hosts if isinstance(raw_hosts, list) else [], ident, "hostname")
    wanted = [p for p in (_parent_ref(r, namespace) for r in _dicts(spec.get("parentRefs"))) if p is not None]
    accepted = {
        p for p in (_parent_ref(s.get("parentRef") or {}, namespace)
                    for s in _dicts(status.get("parents")) if _accepted(s))
        if p is not None
    }
    parents = tuple(dict.fromkeys(p for p in wanted if p in accepted))
    return RouteRecord(kind, namespace, name, hostnames, parents)


def intersect_hostnames(listener: str | None, route: tuple[str, ...]) -> tuple[str, ...]:
    """The names a route gets on one listener (Gateway API's hostname intersection).

    A Gateway API wildcard `*.x` matches one or more labels. A route without hostnames takes the
    listener's; a listener without hostname takes the route's; of an exact name and a wildcard that
    matches it, the exact name; of two wildcards, the narrower.
    """
    if listener is None:
        return route
    if not route:
        return (listener,)
    out: list[str] = []
    for host in route:
        match = _intersect(listener, host)
        if match is not None:
            out.append(match)
    return tuple(dict.fromkeys(out))


def _intersect(a: str, b: str) -> str | None:
    if a == b:
        return a
    a_wild, b_wild = a.startswith("*."), b.startswith("*.")
    if a_wild and b.endswith(a[1:]):  # b is a name (or narrower wildcard) under a's suffix
        return b
    if b_wild and a.endswith(b[1:]):
        return a
    return None
