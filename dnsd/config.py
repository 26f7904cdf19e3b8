"""Configuration: one frozen `Config`, built from defaults < YAML file (`--config`) < command-line flags.

Every option of the contract is a flag `--some-option` and a YAML key `some_option`; both spellings come
from the single table `OPTIONS`, so they cannot drift. `load()` validates everything and raises
`ConfigError` naming the first bad key; `cli` turns that into one line on stderr and exit status 2.
This module knows nothing of sockets or DNS wire formats.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dnsd import __version__
from dnsd.errors import ConfigError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: RFC 6052 section 2.2: the only prefix lengths a NAT64 prefix may have.
DNS64_PREFIX_LENGTHS = (32, 40, 48, 56, 64, 96)

#: RFC 6052 section 2.1: the Well-Known Prefix.
WELL_KNOWN_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")

_LABEL_RE = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A socket address to bind or to send to."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Nameserver:
    """An apex NS target; `addresses` become glue when the name is inside the zone."""

    name: str
    addresses: tuple[IPAddress, ...] = ()


@dataclass(frozen=True, slots=True)
class TransferAllow:
    """`--transfer-allow CIDR[=KEY]`: clients in `network` may transfer, signed with `key` when given."""

    network: IPNetwork
    key: str | None = None


@dataclass(frozen=True, slots=True)
class NotifyTarget:
    """`--notify ADDR[:PORT][=KEY]`: a secondary told of every new serial, signed with `key` when given."""

    endpoint: Endpoint
    key: str | None = None


@dataclass(frozen=True, slots=True)
class Config:
    """Everything dnsd needs to run; names are the YAML keys of the contract."""

    zone: str  # the first --zone: the cluster domain lies in it
    cluster_domain: str
    listen: tuple[Endpoint, ...] = (Endpoint("::", 53),)
    source: str = "kubernetes"
    kubeconfig: str | None = None
    nameserver: tuple[Nameserver, ...] = ()
    ttl: int = 30
    reverse_zone: tuple[IPNetwork, ...] = ()
    recursion: str = "iterate"
    forwarder: tuple[Endpoint, ...] = ()
    root_hints: str | None = None
    allow_recursion: tuple[IPNetwork, ...] = ()
    dns64_prefix: ipaddress.IPv6Network = WELL_KNOWN_PREFIX
    no_dns64: bool = False
    http: Endpoint | None = Endpoint("::", 8080)
    log_level: str = "info"
    log_format: str = "text"
    workers: int = 1
    rrl_responses_per_second: int = 0
    rrl_slip: int = 2
    # Extensions beyond the contract table (documented in the README's configuration reference).
    namespaces: tuple[str, ...] = ()
    label_selector: str | None = None
    negative_ttl: int = 5
    edns_udp_size: int = 1232
    tcp_idle_timeout: float = 10.0
    tcp_max_connections: int = 1024
    tcp_max_per_client: int = 64
    recursion_max_outstanding: int = 4096
    recursion_max_per_client: int = 1024
    recursion_max_per_zone: int = 100
    recursion_jostle_timeout: float = 0.2
    serve_stale: int = 86400
    lame_duck: float = 5.0
    query_log_sample: float = 0.0
    dns64_exclude: tuple[ipaddress.IPv6Network, ...] = ()
    dns64_allow_nonglobal: bool = False
    rrl_ipv4_prefix: int = 24
    rrl_ipv6_prefix: int = 56
    # The validating resolver (ARCHITECTURE.md "Contract: the validating resolver").
    dnssec_validation: bool = True
    trust_anchor: tuple[str, ...] = ()
    negative_trust_anchor: tuple[str, ...] = ()
    # Zone transfers (ARCHITECTURE.md "Contract: zone transfers (dnsd as hidden primary)").
    transfer_allow: tuple[TransferAllow, ...] = ()
    tsig_key_file: tuple[str, ...] = ()
    notify: tuple[NotifyTarget, ...] = ()
    ixfr_journal: int = 1000
    # Signing (ARCHITECTURE.md "Contract: DNSSEC for the zones").
    dnssec_keys: str | None = None
    dnssec_denial: str = "nsec3"
    delegation_check_interval: int = 3600  # `dnsd check` in the server, every N seconds; 0 off
    # The publication policy (ARCHITECTURE.md "Contract: what the Internet sees").
    publish_networks: tuple[IPNetwork, ...] = ()
    # Every --zone, the first being `zone` (set by `from_mapping`; empty means just `zone`).
    zones: tuple[str, ...] = ()
    # Ingress and Gateway API hostname sources (ARCHITECTURE.md "Contract: more names").
    ingress: bool = False
    ingress_class: tuple[str, ...] = ()
    gateway_api: bool = False
    gateway_class: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def all_zones(self) -> tuple[str, ...]:
        """Every forward zone dnsd is authoritative for, the cluster's first."""
        return self.zones or (self.zone,)

    @property
    def source_path(self) -> Path | None:
        """The manifests file for `--source file:PATH`, else None."""
        return Path(self.source[5:]) if self.source.startswith("file:") else None


# ---------------------------------------------------------------------------------------------------
# Value parsers: each takes the raw value (from YAML or a flag string) and returns the typed value,
# raising ValueError with a short reason. `load` adds the key name.


def parse_domain(value: Any) -> str:
    """A domain name in canonical form: lower case, no trailing dot, each label valid for DNS."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a domain name")
    name = value.strip().rstrip(".").lower()
    if not name:
        raise ValueError("the root zone cannot be served")
    if len(name) > 253:
        raise ValueError("name longer than 253 characters")
    for label in name.split("."):
        if not _LABEL_RE.match(label):
            raise ValueError(f"invalid label {label!r}")
    return name


def parse_endpoint(value: Any, default_port: int | None = None) -> Endpoint:
    """`ADDR:PORT`, `[V6ADDR]:PORT`, or (when `default_port` is given) a bare address."""
    if not isinstance(value, str | int):
        raise ValueError("expected ADDR:PORT")
    text = str(value).strip()
    host: str
    port: int | None = default_port
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"unclosed '[' in {text!r}")
        host = text[1:end]
        rest = text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"expected ':PORT' after ']' in {text!r}")
            port = _parse_port(rest[1:])
    elif text.count(":") == 1:
        host, port_text = text.split(":")
        port = _parse_port(port_text)
    else:
        host = text
    if port is None:
        raise ValueError(f"missing port in {text!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    return Endpoint(host, port)


def _parse_port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise ValueError(f"invalid port {text!r}")
    return int(text)


def parse_network(value: Any) -> IPNetwork:
    """A CIDR network; host bits must be zero so that typos do not silently widen an ACL."""
    if not isinstance(value, str):
        raise ValueError("expected a CIDR network such as 2001:db8::/48")
    try:
        return ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(str(exc)) from None


def parse_reverse_zone(value: Any) -> IPNetwork:
    """A network whose PTR names dnsd serves: IPv6 on a nibble, IPv4 on an octet boundary."""
    net = parse_network(value)
    step = 4 if net.version == 6 else 8
    if net.prefixlen % step:
        raise ValueError(f"{net} is not on a {'nibble' if step == 4 else 'octet'} boundary")
    return net


def parse_dns64_prefix(value: Any) -> ipaddress.IPv6Network:
    """A NAT64 prefix of an RFC 6052 length whose bits 64..71 (the u-octet) are zero."""
    net = parse_network(value)
    if net.version != 6:
        raise ValueError("the NAT64 prefix must be IPv6")
    if net.prefixlen not in DNS64_PREFIX_LENGTHS:
        raise ValueError(f"prefix length /{net.prefixlen} is not one of 32, 40, 48, 56, 64, 96 (RFC 6052)")
    if net.prefixlen > 64 and (int(net.network_address) >> 56) & 0xFF:
        raise ValueError("bits 64 to 71 (the u-octet) must be zero (RFC 6052 section 2.2)")
    return ipaddress.IPv6Network(net)


def parse_nameserver(value: Any) -> Nameserver:
    """`NAME` or `NAME=ADDR,ADDR` (glue), as for `--nameserver`; YAML may also give {name, addresses}."""
    if isinstance(value, dict):
        name = parse_domain(value.get("name"))
        raw = value.get("addresses") or []
        if not isinstance(raw, list):
            raise ValueError("addresses must be a list")
        addresses = [str(a) for a in raw]
    elif isinstance(value, str):
        name_text, _, addr_text = value.partition("=")
        name = parse_domain(name_text)
        addresses = [a for a in addr_text.split(",") if a.strip()]
    else:
        raise ValueError("expected NAME[=ADDR,...]")
    try:
        addrs = tuple(ipaddress.ip_address(a.strip()) for a in addresses)
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    return Nameserver(name, addrs)


def parse_int(minimum: int, maximum: int) -> Callable[[Any], int]:
    """An integer parser bounded to [minimum, maximum]."""

    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError("expected an integer")
        try:
            number = int(str(value).strip(), 10)
        except ValueError:
            raise ValueError(f"expected an integer, got {value!r}") from None
        if not minimum <= number <= maximum:
            raise ValueError(f"{number} is outside {minimum}..{maximum}")
        return number

    return parse


def parse_float(minimum: float, maximum: float) -> Callable[[Any], float]:
    """A float parser bounded to [minimum, maximum]."""

    def parse(value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        try:
            number = float(str(value).strip())
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None
        if not minimum <= number <= maximum:
            raise ValueError(f"{number} is outside {minimum}..{maximum}")
        return number

    return parse


def parse_choice(*choices: str) -> Callable[[Any], str]:
    """One of a closed set of words, case-insensitive."""

    def parse(value: Any) -> str:
        text = str(value).strip().lower()
        if text not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return text

    return parse


def parse_bool(value: Any) -> bool:
    """YAML booleans, or the words true/false/yes/no/1/0 from a flag."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def parse_source(value: Any) -> str:
    """`kubernetes` or `file:PATH`."""
    text = str(value).strip()
    if text == "kubernetes":
        return text
    if text.startswith("file:") and len(text) > 5:
        return text
    raise ValueError(f"{value!r} is neither 'kubernetes' nor 'file:PATH'")


def parse_path(value: Any) -> str:
    """A file path (existence is checked where the file is used)."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a file path")
    return value.strip()


def parse_http(value: Any) -> Endpoint | None:
    """`ADDR:PORT` for the HTTP side, or `off` / empty to disable it."""
    if value is None or str(value).strip().lower() in ("", "off", "none", "false"):
        return None
    return parse_endpoint(value)


def _key_name(text: str) -> str | None:
    name = text.strip().rstrip(".").lower()
    if not name:
        return None
    if len(name) > 253 or any(not label or len(label) > 63 for label in name.split(".")):
        raise ValueError(f"{text!r} is not a TSIG key name")
    return name


def parse_transfer_allow(value: Any) -> TransferAllow:
    """`CIDR` or `CIDR=KEY`: who may AXFR/IXFR, and with which TSIG key."""
    if not isinstance(value, str):
        raise ValueError("expected CIDR[=KEY]")
    network, _, key = value.partition("=")
    return TransferAllow(parse_network(network), _key_name(key) if key else None)


def parse_notify(value: Any) -> NotifyTarget:
    """`ADDR[:PORT][=KEY]` (port 53 by default; `[V6ADDR]:PORT` for IPv6 with a port)."""
    if not isinstance(value, str):
        raise ValueError("expected ADDR[:PORT][=KEY]")
    address, _, key = value.partition("=")
    return NotifyTarget(parse_endpoint(address, default_port=53), _key_name(key) if key else None)


def parse_namespace(value: Any) -> str:
    """A Kubernetes namespace name (RFC 1123 label)."""
    text = str(value).strip().lower()
    if not _LABEL_RE.match(text) or "_" in text:
        raise ValueError(f"{value!r} is not a namespace name")
    return text


def parse_anchor_name(value: Any) -> str:
    """A negative trust anchor: a domain name, or '.' for the root (lower case, no trailing dot)."""
    if isinstance(value, str) and value.strip() == ".":
        return ""
    return parse_domain(value)


def parse_label_selector(value: Any) -> str:
    """A Kubernetes label selector string, passed to the API as is."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError("expected a label selector such as 'dnsd.k8s.ooo/public=true'")
    return value.strip()


def parse_class_name(value: Any) -> str:
    """An IngressClass or GatewayClass name: a DNS subdomain as Kubernetes object names are."""
    text = str(value).strip() if value is not None else ""
    if not re.match(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$", text) or len(text) > 253:
        raise ValueError(f"{value!r} is not a class name (a lower-case DNS subdomain)")
    return text


@dataclass(frozen=True, slots=True)
class Option:
    """One configuration key: its flag, how to parse a value, whether it repeats, its help text."""

    key: str
    parse: Callable[[Any], Any]
    help: str
    repeat: bool = False
    flag_only_bool: bool = False  # `--no-dns64`: a switch on the command line, a boolean in YAML
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    Option("zone", parse_domain, "a delegated zone, e.g. c2.k8s.ooo (required; repeatable, the cluster "
           "domain lies in the first)", repeat=True, metavar="NAME"),
    Option("cluster_domain", parse_domain, "where service names hang (default: the zone)", metavar="NAME"),
    Option("listen", parse_endpoint, "UDP and TCP listener (default [::]:53)", repeat=True,
           metavar="ADDR:PORT"),
    Option("source", parse_source, "kubernetes or file:PATH (default kubernetes)", metavar="SOURCE"),
    Option("kubeconfig", parse_path, "kubeconfig file (default: in-cluster, $KUBECONFIG, ~/.kube/config)",
           metavar="PATH"),
    Option("nameserver", parse_nameserver, "apex NS, with glue when inside the zone (default ns1.<zone>)",
           repeat=True, metavar="NAME[=ADDR,...]"),
    Option("ttl", parse_int(0, 2**31 - 1), "TTL of records made from cluster objects (default 30)",
           metavar="SECONDS"),
    Option("reverse_zone", parse_reverse_zone, "network whose PTR records dnsd serves", repeat=True,
           metavar="CIDR"),
    Option("recursion", parse_choice("iterate", "forward", "off"),
           "how names outside the zones are resolved (default iterate)", metavar="MODE"),
    Option("forwarder", lambda v: parse_endpoint(v, default_port=53), "upstream for forward mode",
           repeat=True, metavar="ADDR[:PORT]"),
    Option("root_hints", parse_path, "root hints file for iterate mode (default: bundled IANA hints)",
           metavar="FILE"),
    Option("allow_recursion", parse_network,
           "clients that may recurse (default loopback, RFC 1918, fc00::/7)", repeat=True, metavar="CIDR"),
    Option("publish_networks", parse_network,
           "addresses clients outside --allow-recursion receive (default: all but private-use ones)",
           repeat=True, metavar="CIDR"),
    Option("dns64_prefix", parse_dns64_prefix, "NAT64 prefix (default 64:ff9b::/96)", metavar="PREFIX"),
    Option("no_dns64", parse_bool, "turn DNS64 synthesis off", flag_only_bool=True),
    Option("http", parse_http, "metrics and health endpoints (default [::]:8080; 'off' disables)",
           metavar="ADDR:PORT"),
    Option("log_level", parse_choice("debug", "info", "warning", "error"), "log level (default info)",
           metavar="LEVEL"),
    Option("log_format", parse_choice("text", "json"), "text or json (default text)", metavar="FORMAT"),
    Option("workers", parse_int(1, 256), "processes answering on the same ports (default 1)", metavar="N"),
    Option("rrl_responses_per_second", parse_int(0, 1_000_000),
           "response rate limit per client network (default 0: off)", metavar="N"),
    Option("rrl_slip", parse_int(0, 100), "every Nth limited response is sent truncated (default 2)",
           metavar="N"),
    Option("namespaces", parse_namespace, "only serve services of these namespaces", repeat=True,
           metavar="NAMESPACE"),
    Option("label_selector", parse_label_selector, "only serve services matching this selector",
           metavar="SELECTOR"),
    Option("negative_ttl", parse_int(0, 86400), "SOA minimum: TTL of negative answers (default 5)",
           metavar="SECONDS"),
    Option("edns_udp_size", parse_int(512, 4096), "EDNS UDP payload size dnsd offers (default 1232)",
           metavar="BYTES"),
    Option("tcp_idle_timeout", parse_float(0.1, 3600), "seconds an idle TCP connection is kept (default 10)",
           metavar="SECONDS"),
    Option("lame_duck", parse_float(0, 600),
           "seconds between SIGTERM (readyz turns 503) and closing the listeners (default 5)",
           metavar="SECONDS"),
    Option("query_log_sample", parse_float(0, 1), "fraction of queries logged on dnsd.query (default 0)",
           metavar="FRACTION"),
    Option("dns64_exclude", lambda v: _parse_v6_network(v), "AAAA networks treated as absent for DNS64",
           repeat=True, metavar="CIDR"),
    Option("dns64_allow_nonglobal", parse_bool,
           "synthesize with the well-known prefix for non-global IPv4 too (RFC 6052 3.1 forbids it)",
           metavar="BOOL"),
    Option("rrl_ipv4_prefix", parse_int(8, 32), "RRL client network size for IPv4 (default 24)",
           metavar="BITS"),
    Option("rrl_ipv6_prefix", parse_int(16, 128), "RRL client network size for IPv6 (default 56)",
           metavar="BITS"),
    Option("tcp_max_connections", parse_int(1, 1_000_000), "TCP connections open at once (default 1024)",
           metavar="N"),
    Option("tcp_max_per_client", parse_int(1, 1_000_000), "TCP connections open at once per client address "
           "(default 64)", metavar="N"),
    Option("recursion_max_outstanding", parse_int(1, 1_000_000),
           "recursive queries in progress at once; beyond it clients get SERVFAIL (default 4096)", metavar="N"),
    Option("recursion_max_per_client", parse_int(1, 1_000_000),
           "recursive queries in progress at once per client address (default 1024)", metavar="N"),
    Option("recursion_max_per_zone", parse_int(1, 1_000_000),
           "recursive queries in progress at once towards one zone's servers; beyond it a query for that "
           "zone gets SERVFAIL (default 100)", metavar="N"),
    Option("recursion_jostle_timeout", parse_float(0, 60),
           "seconds after which a recursive query in progress gives its slot to a new one when every slot "
           "is taken (default 0.2, as Unbound's jostle-timeout; 0: never, the new query is refused)",
           metavar="SECONDS"),
    Option("serve_stale", parse_int(0, 7 * 86400),
           "seconds past expiry an answer may still be served (TTL 30, EDE 3) when refreshing it fails or "
           "takes longer than 1.8 s (RFC 8767; default 86400, 0 off)", metavar="SECONDS"),
    Option("dnssec_validation", parse_bool, "validate recursive answers with DNSSEC: on or off (default on)",
           metavar="on|off"),
    Option("trust_anchor", parse_path, "DS or DNSKEY records in zone-file format trusted instead of the "
           "bundled root KSKs", repeat=True, metavar="FILE"),
    Option("negative_trust_anchor", parse_anchor_name, "no validation at or below this name (RFC 7646)",
           repeat=True, metavar="NAME"),
    Option("transfer_allow", parse_transfer_allow,
           "clients that may AXFR/IXFR every zone, with =KEY only when TSIG-signed with that key "
           "(default: nobody)", repeat=True, metavar="CIDR[=KEY]"),
    Option("tsig_key_file", parse_path, "TSIG keys in tsig-keygen's format (hmac-sha256/384/512)", repeat=True,
           metavar="FILE"),
    Option("notify", parse_notify, "secondary sent a NOTIFY on every new serial, signed with =KEY",
           repeat=True, metavar="ADDR[:PORT][=KEY]"),
    Option("ixfr_journal", parse_int(0, 1_000_000), "serials kept for IXFR (default 1000; 0: AXFR only)",
           metavar="N"),
    Option("dnssec_keys", parse_path, "sign every zone with the BIND key files in DIR (dnsd keygen, "
           "dnssec-keygen)", metavar="DIR"),
    Option("dnssec_denial", parse_choice("nsec3", "compact"), "authenticated denial: nsec3 or compact "
           "(default nsec3)", metavar="nsec3|compact"),
    Option("delegation_check_interval", parse_int(0, 7 * 86400),
           "seconds between two checks of each zone's delegation in its parent (NS, glue, DS), as "
           "`dnsd check` does; sets dnsd_delegation_ok (default 3600, 0 off)", metavar="SECONDS"),
    Option("ingress", parse_bool, "serve Ingress hosts (spec.rules[].host, spec.tls[].hosts) with their "
           "load-balancer status", flag_only_bool=True),
    Option("ingress_class", parse_class_name, "only Ingresses of this class (ingressClassName, or the "
           "kubernetes.io/ingress.class annotation)", repeat=True, metavar="NAME"),
    Option("gateway_api", parse_bool, "serve Gateway API listener and HTTPRoute/GRPCRoute/TLSRoute hostnames "
           "with the Gateway's status.addresses", flag_only_bool=True),
    Option("gateway_class", parse_class_name, "only Gateways of this gatewayClassName", repeat=True,
           metavar="NAME"),
)

_BY_KEY = {opt.key: opt for opt in OPTIONS}

DEFAULT_ALLOW_RECURSION = (
    "127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7",
)

#: What the Internet does not receive unless --publish-networks says otherwise: private-use,
#: shared (RFC 6598), loopback, link-local and unique-local addresses.
DEFAULT_UNPUBLISHED = (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "fc00::/7", "fe80::/10", "::1/128",
)


def _parse_v6_network(value: Any) -> ipaddress.IPv6Network:
    net = parse_network(value)
    if not isinstance(net, ipaddress.IPv6Network):
        raise ValueError("expected an IPv6 network")
    return net


class _OneLineParser(argparse.ArgumentParser):
    """argparse prints usage plus an error; the contract wants one line naming the option."""

    def error(self, message: str) -> Any:
        raise ConfigError("command line", message)


def build_parser() -> argparse.ArgumentParser:
    """The command line, generated from `OPTIONS`; every value stays a raw string until `load`."""
    parser = _OneLineParser(
        prog="dnsd",
        description="Authoritative DNS for a Kubernetes zone, with recursion and DNS64.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--version", action="version", version=f"dnsd {__version__}")
    parser.add_argument("--config", metavar="FILE", help="YAML file with any of these options")
    for opt in OPTIONS:
        if opt.flag_only_bool:
            parser.add_argument(opt.flag, action="store_const", const=True, help=opt.help)
        elif opt.repeat:
            parser.add_argument(opt.flag, action="append", metavar=opt.metavar, help=opt.help)
        else:
            parser.add_argument(opt.flag, metavar=opt.metavar, help=opt.help)
    return parser


def read_yaml(path: str) -> dict[str, Any]:
    """The `--config` file as a mapping; any read or syntax problem is a ConfigError on `config`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError("config", f"{path} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("config", f"{path} must hold a mapping of option keys")
    return data


def load(argv: Sequence[str]) -> Config:
    """Parse flags and the optional YAML file into a validated Config (raises ConfigError)."""
    args = vars(build_parser().parse_args(list(argv)))
    raw: dict[str, Any] = {}
    config_path = args.pop("config", None)
    if config_path is not None:
        for key, value in read_yaml(config_path).items():
            if key not in _BY_KEY:
                raise ConfigError(str(key), "unknown configuration key")
            raw[key] = value
    raw.update(args)  # flags win over the file
    return from_mapping(raw)


def from_mapping(raw: dict[str, Any]) -> Config:
    """Validate a mapping of option keys to raw values (YAML types or flag strings)."""
    values: dict[str, Any] = {}
    for key, value in raw.items():
        opt = _BY_KEY.get(key)
        if opt is None:
            raise ConfigError(key, "unknown configuration key")
        try:
            if opt.repeat:
                items = value if isinstance(value, list) else [value]
                if value is None:
                    items = []
                values[key] = tuple(opt.parse(item) for item in items)
            else:
                if isinstance(value, list | dict):
                    raise ValueError("expected a single value, not a list or mapping")
                values[key] = opt.parse(value)
        except ValueError as exc:
            raise ConfigError(key, str(exc)) from None
    if not values.get("zone"):
        raise ConfigError("zone", "required (for example --zone c2.k8s.ooo)")
    zones: tuple[str, ...] = tuple(dict.fromkeys(values["zone"]))
    for other in zones:
        for inner in zones:
            if inner != other and inner.endswith("." + other):
                raise ConfigError("zone", f"{inner} lies inside {other}: give one of them")
    zone = values["zone"] = zones[0]
    values["zones"] = zones
    cluster_domain = values.setdefault("cluster_domain", zone)
    if not any(cluster_domain == z or cluster_domain.endswith("." + z) for z in zones):
        raise ConfigError("cluster_domain", f"{cluster_domain} is not inside the zone {zone}")
    if not values.get("listen"):
        values.pop("listen", None)
    if not values.get("nameserver"):
        values["nameserver"] = (Nameserver(f"ns1.{zone}"),)
    if "allow_recursion" not in values:
        values["allow_recursion"] = tuple(ipaddress.ip_network(n) for n in DEFAULT_ALLOW_RECURSION)
    if values.get("recursion") == "forward" and not values.get("forwarder"):
        raise ConfigError("forwarder", "recursion 'forward' needs at least one forwarder")
    for ns in values["nameserver"]:
        if ns.addresses and not any(ns.name == z or ns.name.endswith("." + z) for z in zones):
            raise ConfigError("nameserver", f"glue given for {ns.name}, which is outside the zones")
    return Config(**values)
