"""DNS64 (RFC 6147) and IPv4-embedded IPv6 addresses (RFC 6052): pure functions, no I/O.

The recursor decides *when* to ask for an A record; this module decides everything else: which AAAA
answers count as empty, how an IPv4 address is embedded in the NAT64 prefix (all RFC 6052 prefix
lengths, skipping the u-octet), which IPv4 addresses may be synthesized, what TTL a synthesized record
gets, how a PTR name inside the prefix maps to in-addr.arpa, and the RFC 8880 `ipv4only.arpa` records.
It deliberately knows nothing of sockets, caches or message encoding, so that every rule can be tested
with plain values (see tests/test_dns64.py, which carries the RFC 6052 section 2.4 vectors).

Callers: `dnsd.recursor.Recursor.answer` (the only place that sends queries), and the NAT64 reachability
mapping of the iterator (`embed`), which reaches IPv4-only name servers through the same prefix.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

#: RFC 6052 section 2.1: the Well-Known Prefix.
WELL_KNOWN_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")

#: RFC 6147 section 5.1.4: IPv4-mapped addresses are never a usable AAAA answer, so they are always
#: treated as absent.
ALWAYS_EXCLUDED = (ipaddress.IPv6Network("::ffff:0:0/96"),)

#: RFC 8880 section 2: the special-use name and its two well-known IPv4 addresses.
IPV4ONLY_ARPA = "ipv4only.arpa"
IPV4ONLY_ADDRESSES = (ipaddress.IPv4Address("192.0.0.170"), ipaddress.IPv4Address("192.0.0.171"))
#: TTL for the locally answered ipv4only.arpa records; the records never change (RFC 8880 section 7.2
#: lets a DNS64 answer them itself), so a day is as long as the IANA zone's own TTLs.
IPV4ONLY_TTL = 86400

#: RFC 6147 section 5.1.7: without an SOA in the negative AAAA answer the synthesized TTL is capped.
NO_SOA_TTL_CAP = 600

_PREFIX_LENGTHS = (32, 40, 48, 56, 64, 96)


@dataclass(frozen=True, slots=True)
class Policy:
    """The DNS64 knobs of one server: prefix, extra excluded AAAA networks, the RFC 6052 3.1 switch."""

    prefix: ipaddress.IPv6Network = WELL_KNOWN_PREFIX
    exclude: tuple[ipaddress.IPv6Network, ...] = ()
    allow_nonglobal: bool = False

    def __post_init__(self) -> None:
        if self.prefix.prefixlen not in _PREFIX_LENGTHS:
            raise ValueError(f"RFC 6052 prefix length must be one of {_PREFIX_LENGTHS}")


def embed(prefix: ipaddress.IPv6Network, ipv4: ipaddress.IPv4Address) -> ipaddress.IPv6Address:
    """The IPv4-embedded IPv6 address of `ipv4` under `prefix` (RFC 6052 section 2.2).

    The 32 IPv4 bits follow the prefix, except that bits 64..71 (the u-octet) are skipped and stay
    zero; the suffix after the IPv4 bits is zero.
    """
    plen = prefix.prefixlen
    if plen not in _PREFIX_LENGTHS:
        raise ValueError(f"prefix length /{plen} is not an RFC 6052 length")
    v4 = int(ipv4)
    base = bytearray(prefix.network_address.packed)
    v4_bytes = v4.to_bytes(4, "big")
    pos = plen // 8
    for octet in v4_bytes:
        if pos == 8:
            pos = 9  # RFC 6052 2.2: the u-octet (bits 64..71) is reserved, always zero
        base[pos] = octet
        pos += 1
    if plen < 64:
        base[8] = 0
    return ipaddress.IPv6Address(bytes(base))


def extract(prefix: ipaddress.IPv6Network, ipv6: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address embedded in `ipv6`, or None when `ipv6` is not inside `prefix`."""
    if ipv6 not in prefix:
        return None
    raw = ipv6.packed
    pos = prefix.prefixlen // 8
    out = bytearray()
    while len(out) < 4:
        if pos == 8:
            pos = 9
        out.append(raw[pos])
        pos += 1
    return ipaddress.IPv4Address(bytes(out))


def is_excluded(aaaa_rdata: bytes, policy: Policy) -> bool:
    """Whether an AAAA rdata counts as absent (RFC 6147 5.1.4): IPv4-mapped, or in `policy.exclude`."""
    if len(aaaa_rdata) != 16:
        return True
    address = ipaddress.IPv6Address(aaaa_rdata)
    return any(address in net for net in ALWAYS_EXCLUDED) or any(address in net for net in policy.exclude)


def may_synthesize(ipv4: ipaddress.IPv4Address, policy: Policy) -> bool:
    """RFC 6052 section 3.1: the Well-Known Prefix MUST NOT be used with non-global IPv4 addresses.

    Only the WKP is restricted; a network-specific prefix may embed private addresses (that is how a
    site's NAT64 reaches its own RFC 1918 space). `allow_nonglobal` lifts the rule for operators who
    knowingly break it.
    """
    if policy.allow_nonglobal or policy.prefix != WELL_KNOWN_PREFIX:
        return True
    return ipv4.is_global


def synthesize(
    a_rdatas: Iterable[bytes], policy: Policy
) -> list[bytes]:
    """AAAA rdatas for the A rdatas that may be synthesized, in order (RFC 6147 5.1.5)."""
    out = []
    for rdata in a_rdatas:
        if len(rdata) != 4:
            continue
        ipv4 = ipaddress.IPv4Address(rdata)
        if may_synthesize(ipv4, policy):
            out.append(embed(policy.prefix, ipv4).packed)
    return out


def synthesized_ttl(a_ttl: int, soa: tuple[int, int] | None) -> int:
    """TTL of a synthesized AAAA (RFC 6147 section 5.1.7).

    `soa` is (TTL of the SOA record in the negative AAAA answer, its MINIMUM field), or None when that
    answer carried no SOA. With an SOA: the minimum of the A TTL and the negative-caching TTL of the
    AAAA answer; the SOA record's TTL is included because a cached negative answer counts it down (and
    RFC 2308 section 5 makes the negative TTL min(SOA TTL, MINIMUM) in the first place). Without one
    (a broken or an error answer), the A TTL capped at 600 seconds, as the RFC says.
    """
    if soa is None:
        return min(a_ttl, NO_SOA_TTL_CAP)
    return max(0, min(a_ttl, soa[0], soa[1]))


def wants_synthesis(qtype: int, do: bool, cd: bool) -> bool:
    """Whether a query may get synthesized AAAA at all.

    RFC 6147 section 5.5: a query with DO and CD set comes from a validating stub that will check
    signatures itself; synthesized records would fail its validation, so nothing is synthesized.
    """
    return qtype == 28 and not (do and cd)


def under(name: str, zone: str) -> bool:
    """Whether dotted `name` is `zone` or below it (both lower case, no trailing dot; '' is the root)."""
    return not zone or name == zone or name.endswith("." + zone)


def prefix_reverse_zone(prefix: ipaddress.IPv6Network) -> str:
    """The ip6.arpa zone of the NAT64 prefix (every RFC 6052 length is on a nibble boundary)."""
    nibbles = prefix.network_address.exploded.replace(":", "")[: prefix.prefixlen // 4]
    return ".".join(reversed(nibbles)) + ".ip6.arpa"


def ptr_target(qname: str, policy: Policy) -> str | None:
    """For a PTR qname inside the prefix's ip6.arpa, the in-addr.arpa name to alias it to.

    RFC 6147 section 5.3.1: the DNS64 answers reverse queries for synthesized addresses itself; dnsd
    uses the CNAME form (the `ip6.arpa` name aliased to the `in-addr.arpa` name of the embedded IPv4
    address), so that the client sees where the answer came from. Returns None for names outside the
    prefix, for names that are not a full 32-nibble address, where the u-octet is not zero, and for
    non-global IPv4 under the Well-Known Prefix (never synthesized, RFC 6052 3.1).
    """
    if not qname.endswith(".ip6.arpa"):
        return None
    labels = qname[: -len(".ip6.arpa")].split(".")
    if len(labels) != 32 or any(len(x) != 1 or x not in "0123456789abcdef" for x in labels):
        return None
    address = ipaddress.IPv6Address(int("".join(reversed(labels)), 16))
    if address not in policy.prefix:
        return None
    if address.packed[8] != 0:
        return None  # RFC 6052 2.2: a set u-octet means this is not an IPv4-embedded address
    ipv4 = extract(policy.prefix, address)
    if ipv4 is None:
        return None
    if not may_synthesize(ipv4, policy):
        # RFC 6052 3.1: this DNS64 never synthesizes such an address under the WKP, so the name is
        # not one of its own; aliasing it would send private reverse lookups (RFC 6303) upstream
        return None
    return ipv4.reverse_pointer


def ipv4only_answer(qname: str, qtype: int, policy: Policy) -> tuple[int, list[bytes]] | None:
    """RFC 8880 section 7.2: local answers for `ipv4only.arpa`, or None when `qname` is elsewhere.

    Returns (rcode, rdatas): A gives the two well-known addresses, AAAA those addresses synthesized
    with the configured prefix (deliberately ignoring the 6052 3.1 rule: they are the addresses clients
    use to discover the prefix, RFC 7050), any other type NODATA, any name below NXDOMAIN.
    """
    if qname == IPV4ONLY_ARPA:
        if qtype == 1:
            return 0, [a.packed for a in IPV4ONLY_ADDRESSES]
        if qtype == 28:
            return 0, [embed(policy.prefix, a).packed for a in IPV4ONLY_ADDRESSES]
        return 0, []
    if qname.endswith("." + IPV4ONLY_ARPA):
        return 3, []
    return None


__all__ = [
    "WELL_KNOWN_PREFIX", "ALWAYS_EXCLUDED", "IPV4ONLY_ARPA", "IPV4ONLY_ADDRESSES", "IPV4ONLY_TTL",
    "NO_SOA_TTL_CAP", "Policy", "embed", "extract", "is_excluded", "may_synthesize", "synthesize",
    "synthesized_ttl", "wants_synthesis", "under", "prefix_reverse_zone", "ptr_target",
    "ipv4only_answer",
]
