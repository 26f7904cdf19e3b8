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
from dataclasses import dataclass
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

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


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

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


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
    return tuple(ports)


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
