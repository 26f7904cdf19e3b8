"""`dnsd check`, the delegation doctor: does the parent zone delegate each zone the way dnsd serves it?

A zone works on the Internet only when its parent holds the right NS records, glue for the name
servers inside the zone, and (when signed) a DS matching the key that signs the DNSKEY RRset; a
stale DS makes the zone bogus for every validating resolver, which is the most common way to lose a
signed zone. This module finds the delegation the way a resolver does: from the root hints
(`--root-hints`, the bundled IANA file by default), following referrals down to the servers of the
parent zone, then asks every one of those servers for the zone's NS (the referral: authority
section, glue in the additional section) and its DS, and compares with dnsd's own apex as the
configuration defines it: NS names from `--nameserver`, glue as the Internet receives it (the
publication policy filters private addresses), and the DS (digest type 2) of the keys in
`--dnssec-keys` that the parent should hold now, the same rule the signer's CDS follows: published,
active KSK/CSK.

It does not query dnsd's own listeners (the contract compares the parent with the configuration),
follows no CNAMEs, and never changes anything. Upstream answers are untrusted: they go through the
recursor's strict parser (`recursor.message`) and transport (`recursor.upstream`: random ID and port,
TCP on TC), and addresses learned from referrals obey the recursor's `AddressPolicy` (loopback only
when the root hints are loopback). Anything unusable becomes a finding or an UNREACHABLE line, never
a traceback.

Called by `cli` for `dnsd check` (exit 0 when all agree, 1 when not or when a parent cannot be
reached) and by `app` as the periodic check behind the `dnsd_delegation_ok{zone}` gauge, which is
never a readiness condition.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import struct
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dnsd import metrics
from dnsd.config import Config
from dnsd.recursor import hints as hints_module
from dnsd.recursor import message
from dnsd.recursor.message import AAAA, NS, NXDOMAIN, SOA, A, Message, is_subdomain, key, to_wire
from dnsd.recursor.upstream import AddressPolicy, Infra, Nat64, UpstreamError
from dnsd.recursor.upstream import query as upstream_query

if TYPE_CHECKING:
    from dnsd.dnssec.keys import Key

logger = logging.getLogger(__name__)

DS = 43
NOERROR = 0
SHA256 = 2
#: Seconds to wait for one answer, and tries per server address: generous, the check is not hurried.
WAIT = 2.0
TRIES = 2
#: Referral depth and queries per zone: a loop or a hostile hierarchy cannot keep the check going.
MAX_DEPTH = 16
MAX_QUERIES = 200
#: Seconds from start to the server's first periodic check (see `run_periodically`).
FIRST_DELAY = 300.0


class CheckError(Exception):
    """The check could not be done for a zone: the parent could not be found or reached."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One comparison: `status` is OK, MISMATCH or MISSING; both sides as text for the line."""

    status: str
    what: str
    parent: str
    dnsd: str

    def line(self, zone: str) -> str:
        return f"{self.status} {zone}. {self.what}: parent has {self.parent}; dnsd has {self.dnsd}"


@dataclass(frozen=True, slots=True)
class Expected:
    """What the parent should hold for one zone, from dnsd's configuration and keys."""

    zone: str  # lower case, no trailing dot
    ns: tuple[str, ...]  # NS target names, lower case, no trailing dot
    glue: dict[str, tuple[str, ...]]  # in-zone NS name -> addresses the Internet receives
    unpublished: dict[str, tuple[str, ...]]  # in-zone NS name -> configured addresses withheld
    signed: bool
    ds: tuple[tuple[int, int, bytes, str], ...]  # (key tag, algorithm, DNSKEY rdata, DS text)


@dataclass(slots=True)
class ParentView:
    """What one parent server holds for the zone (empty `ns`: no delegation)."""

    ns: tuple[str, ...] = ()
    glue: dict[str, tuple[str, ...]] = field(default_factory=dict)
    ds: tuple[bytes, ...] = ()


@dataclass(slots=True)
class ZoneReport:
    """The result for one zone: findings per group of parent servers that agree, or an error."""

    zone: str
    parent_zone: str = ""
    servers: list[str] = field(default_factory=list)  # "name (address)" of every parent server asked
    groups: list[tuple[list[str], list[Finding]]] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)  # "name (address): reason"
    no_route: list[str] = field(default_factory=list)  # "name (address)" this host has no route to
    error: str | None = None
    fix: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.groups) and all(
            f.status == "OK" for _, findings in self.groups for f in findings)

    def lines(self) -> list[str]:
        """The report as printed: one line per finding, then the records to paste when any disagree."""
        out: list[str] = []
        if self.error is not None:
            out.append(f"UNREACHABLE {self.zone}.: {self.error}")
            return out
        out.append(f"; {self.zone}.: parent zone {_dotted(self.parent_zone)}, servers {', '.join(self.servers)}")
        for servers, findings in self.groups:
            if len(self.groups) > 1:
                out.append(f"; parent servers {', '.join(servers)}:")
            out.extend(f.line(self.zone) for f in findings)
        out.extend(f"UNREACHABLE {self.zone}. parent server {u}" for u in self.unreachable)
        if self.no_route:
            out.append(f"; not asked (no route from here): {', '.join(self.no_route)}")
        if not self.ok and self.fix:
            out.append(f"; records for the parent zone {_dotted(self.parent_zone)} to hold for {self.zone}.:")
            out.extend(self.fix)
        return out


def _dotted(name: str) -> str:
    """A zone name as the output writes it: with its trailing dot ("." for the root)."""
    name = name.rstrip(".")
    return f"{name}." if name else "."


# ---- what dnsd serves ---------------------------------------------------------------------------------


def parent_keys(keys: Iterable[Key], zone: str, now: float) -> list[Key]:
    """The keys whose DS the parent should hold: as the signer's CDS, the published, active KSKs/CSKs."""
    return [k for k in keys if k.zone == zone and k.sep and k.published(now) and k.active(now)]


def expected(config: Config, keys: list[Key] | None, now: float | None = None) -> list[Expected]:
    """Every zone dnsd serves (forward, then the reverse zones of published networks) with what its
    parent should hold.

    `keys` is the content of `--dnssec-keys` (None when the zones are not signed); a zone without a key
    there is not signed (the signer signs only zones it has keys for), so its parent must have no DS.
    """
    from dnsd.views import Publication
    from dnsd.zone import reverse_apex

    now = time.time() if now is None else now
    allows = Publication(config.publish_networks).allows
    # A reverse zone of a network the Internet never receives (10.96.0.0/16 and other private ones by
    # default) has no delegation on the Internet to check.
    zones = list(config.all_zones) + [reverse_apex(net) for net in config.reverse_zone
                                      if allows(str(net.network_address))]
    names = tuple(dict.fromkeys(ns.name for ns in config.nameserver))
    out = []
    for zone in zones:
        glue: dict[str, tuple[str, ...]] = {}
        unpublished: dict[str, tuple[str, ...]] = {}
        for ns in config.nameserver:
            if ns.name == zone or ns.name.endswith("." + zone):
                addresses = [str(a) for a in ns.addresses]
                glue[ns.name] = tuple(sorted({*glue.get(ns.name, ()), *(a for a in addresses if allows(a))}))
                unpublished[ns.name] = tuple(sorted({*unpublished.get(ns.name, ()),
                                                     *(a for a in addresses if not allows(a))}))
        zone_keys = [k for k in keys or () if k.zone == zone]
        ds = tuple((k.tag, k.algorithm, k.dnskey_rdata, k.ds_text()) for k in parent_keys(zone_keys, zone, now))
        out.append(Expected(zone, names, glue, unpublished, bool(zone_keys), ds))
    return out


def load_keys(config: Config) -> list[Key] | None:
    """The keys of `--dnssec-keys` (None without it); raises ValueError/OSError like the server would."""
    if not config.dnssec_keys:
        return None
    from dnsd.dnssec import keys as dnssec_keys

    found = dnssec_keys.load_dir(config.dnssec_keys)
    if not found:
        raise ValueError(f"no K*.private files in {config.dnssec_keys}")
    return found


# ---- reading the parent's answers (pure, fuzzed) --------------------------------------------------------


def ds_text(zone: str, rdata: bytes) -> str:
    """A DS record as zone-file text (as `dnsd keygen` prints it), or a note for a malformed one."""
    if len(rdata) < 5:
        return f"{zone}. IN DS <malformed, {len(rdata)} octets>"
    tag, algorithm, digest_type = struct.unpack_from("!HBB", rdata)
    return f"{zone}. IN DS {tag} {algorithm} {digest_type} {rdata[4:].hex().upper()}"


def _address_text(rr: message.RR) -> str | None:
    if rr.rtype == A and len(rr.rdata) == 4:
        return str(ipaddress.IPv4Address(rr.rdata))
    if rr.rtype == AAAA and len(rr.rdata) == 16:
        return str(ipaddress.IPv6Address(rr.rdata))
    return None


def read_referral(msg: Message, zone: str) -> ParentView:
    """The parent's NS and glue for `zone` from its answer to `zone NS` (rd=0).

    A referral (NS for the zone in the authority section, not authoritative) gives the delegation;
    an authoritative NXDOMAIN or NODATA means the parent has none. Anything else raises CheckError
    with what the server said instead.
    """
    zone_wire = key(to_wire(zone))
    ns = sorted({message.text(message.first_name(rr.rdata)) for rr in msg.authority
                 if rr.rtype == NS and key(rr.owner) == zone_wire})
    if msg.rcode == NOERROR and ns and not msg.answer:
        glue: dict[str, set[str]] = {}
        for rr in msg.additional:
            name = message.text(rr.owner)
            address = _address_text(rr)
            if address is not None and name in ns and (name == zone or name.endswith("." + zone)):
                glue.setdefault(name, set()).add(address)
        return ParentView(tuple(ns), {name: tuple(sorted(a)) for name, a in glue.items()})
    if msg.rcode == NXDOMAIN or (msg.rcode == NOERROR and msg.aa and not msg.answer):
        return ParentView()
    if msg.rcode == NOERROR and msg.aa and any(rr.rtype == NS for rr in msg.answer):
        raise CheckError("answers for the zone itself (it serves the zone, so it shows no delegation)")
    raise CheckError(f"gave no referral for {zone}. (rcode {msg.rcode}, "
                     f"{'authoritative' if msg.aa else 'not authoritative'}, {len(msg.answer)} answers)")


def read_ds(msg: Message, zone: str) -> tuple[bytes, ...]:
    """The DS RRset from the parent's authoritative answer to `zone DS` (empty when it has none)."""
    zone_wire = key(to_wire(zone))
    if msg.rcode == NXDOMAIN or (msg.rcode == NOERROR and not msg.answer):
        return ()
    if msg.rcode == NOERROR:
        found = tuple(sorted({rr.rdata for rr in msg.answer if rr.rtype == DS and key(rr.owner) == zone_wire}))
        if found or not msg.aa:
            return found
    raise CheckError(f"gave no DS answer for {zone}. (rcode {msg.rcode})")


def compare(want: Expected, have: ParentView) -> list[Finding]:
    """The findings of one parent server's view against what dnsd serves."""
    findings: list[Finding] = []
    dnsd_ns = ", ".join(f"{n}." for n in sorted(want.ns))
    if not have.ns:
        findings.append(Finding("MISSING", "NS", "no delegation", dnsd_ns))
    elif set(have.ns) == set(want.ns):
        findings.append(Finding("OK", "NS", dnsd_ns, dnsd_ns))
    else:
        findings.append(Finding("MISMATCH", "NS", ", ".join(f"{n}." for n in have.ns), dnsd_ns))
    for name in sorted(want.glue):
        ours = want.glue[name]
        theirs = have.glue.get(name, ())
        withheld = want.unpublished.get(name, ())
        ours_text = ", ".join(ours) or "no address" + (
            f" the Internet may receive ({', '.join(withheld)} withheld by --publish-networks)" if withheld else "")
        theirs_text = ", ".join(theirs) or "none"
        if not ours:
            findings.append(Finding("MISSING", f"glue {name}.", theirs_text, ours_text))
        elif set(theirs) == set(ours):
            findings.append(Finding("OK", f"glue {name}.", theirs_text, ours_text))
        elif not theirs:
            findings.append(Finding("MISSING", f"glue {name}.", theirs_text, ours_text))
        else:
            findings.append(Finding("MISMATCH", f"glue {name}.", theirs_text, ours_text))
    findings.append(_compare_ds(want, have.ds))
    return findings


def _ds_matches(rdata: bytes, zone: str, dnskey_rdata: bytes) -> bool:
    """Whether a DS (any digest type dnsd can compute) points at this DNSKEY."""
    from dnsd.dnssec.crypto import ds_digest, key_tag

    if len(rdata) < 5:
        return False
    tag, algorithm, digest_type = struct.unpack_from("!HBB", rdata)
    if tag != key_tag(dnskey_rdata) or algorithm != dnskey_rdata[3]:
        return False
    return ds_digest(to_wire(zone), dnskey_rdata, digest_type) == rdata[4:]


def _compare_ds(want: Expected, theirs: tuple[bytes, ...]) -> Finding:
    zone = want.zone
    theirs_text = ", ".join(ds_text(zone, r).split(" IN DS ", 1)[1] for r in theirs) or "none"
    if not want.signed:
        if theirs:  # a DS for an unsigned zone: every validating resolver would find the zone bogus
            return Finding("MISMATCH", "DS", theirs_text, "no DNSSEC key (the zone is not signed: remove the DS)")
        return Finding("OK", "DS", "none", "none (the zone is not signed)")
    ours_text = ", ".join(text.split(" IN DS ", 1)[1] for *_, text in want.ds) or "no key the parent should hold"
    matched = [any(_ds_matches(r, zone, dnskey) for r in theirs) for _, _, dnskey, _ in want.ds]
    stray = [r for r in theirs if not any(_ds_matches(r, zone, dnskey) for _, _, dnskey, _ in want.ds)]
    if all(matched) and not stray:
        return Finding("OK", "DS", theirs_text, ours_text)
    if not theirs:
        return Finding("MISSING", "DS", "none", ours_text)
    return Finding("MISMATCH", "DS", theirs_text, ours_text)


def fix_records(want: Expected, findings: Iterable[Finding]) -> list[str]:
    """Zone-file lines for the parent, for the kinds of record that disagree (NS and glue, DS)."""
    bad = {f.what.split()[0] for f in findings if f.status != "OK"}
    out: list[str] = []
    if bad & {"NS", "glue"}:
        out += [f"{want.zone}. IN NS {name}." for name in sorted(want.ns)]
        for name in sorted(want.glue):
            for address in want.glue[name]:
                out.append(f"{name}. IN {'AAAA' if ':' in address else 'A'} {address}")
    if "DS" in bad:
        if want.ds:
            out += [text for *_, text in want.ds]
        else:
            out.append(f"; (no DS record: delete the parent's DS records of {want.zone}.)")
    return out


# ---- finding and asking the parent ---------------------------------------------------------------------


@dataclass(slots=True)
class _Server:
    name: str  # lower-case text, no trailing dot
    addresses: list[str]


class Checker:
    """Finds each zone's parent from the root hints and compares its delegation (see the module docstring)."""

    def __init__(self, config: Config, *, wait: float = WAIT, tries: int = TRIES) -> None:
        self.config = config
        self.wait = wait
        self.tries = tries
        hints = hints_module.load(config.root_hints)  # HintsError (a ValueError) for a bad file
        self.roots = [_Server(message.text(name), list(addresses)) for name, addresses in hints.items()]
        configured = [a for s in self.roots for a in s.addresses]
        self.policy = AddressPolicy(configured, [(e.host, e.port) for e in config.listen], 53)
        self.nat64 = Nat64(None if config.no_dns64 else config.dns64_prefix)
        self.infra = Infra()
        self._queries = 0

    async def check_all(self, keys: list[Key] | None, now: float | None = None) -> list[ZoneReport]:
        """One report per zone dnsd serves, in configuration order."""
        return [await self.check_zone(want) for want in expected(self.config, keys, now)]

    async def check_zone(self, want: Expected) -> ZoneReport:
        report = ZoneReport(want.zone)
        self._queries = 0
        try:
            parent_zone, servers = await self._find_parent(want.zone)
        except CheckError as exc:
            report.error = f"cannot check the delegation: {exc}"
            return report
        report.parent_zone = parent_zone
        views: dict[str, list[str]] = {}  # findings as text -> servers
        by_text: dict[str, list[Finding]] = {}
        asked: list[tuple[str, str]] = []
        for server in servers:
            for address in server.addresses:
                label = f"{server.name}. ({address})"
                if self._routable(address):
                    asked.append((label, address))
                else:  # an IPv6 address from an IPv4-only pod, say: not the parent's fault
                    report.no_route.append(label)
        report.servers = [label for label, _ in asked]
        # every parent server at once: a TLD has a dozen addresses, and some may time out
        results = await asyncio.gather(*(self._parent_view(address, want.zone) for _, address in asked),
                                       return_exceptions=True)
        for (label, _), result in zip(asked, results, strict=True):
            if isinstance(result, CheckError):
                report.unreachable.append(f"{label}: {result}")
                continue
            if isinstance(result, BaseException):
                raise result
            findings = compare(want, result)
            text = "\n".join(f.line(want.zone) for f in findings)
            views.setdefault(text, []).append(label)
            by_text[text] = findings
        if not views:
            report.error = (f"no server of the parent zone {_dotted(parent_zone)} answered: "
                            + "; ".join([*report.unreachable, *(f"{n}: no route" for n in report.no_route)]))
            return report
        report.groups = [(labels, by_text[text]) for text, labels in views.items()]
        first = next(address for (label, address) in asked if any(label in ls for ls in views.values()))
        report.parent_zone = await self._parent_name(first, want.zone, parent_zone)
        report.fix = fix_records(want, (f for _, findings in report.groups for f in findings))
        return report

    def _routable(self, address: str) -> bool:
        """Whether this host can send to `address` at all (directly or, for IPv4, through NAT64)."""
        if ":" in address:
            return self.nat64.has_route(address)
        return self.nat64.map(address) is not None

    async def _ask(self, address: str, qname: str, qtype: int) -> Message:
        """One question to one server address, retried; CheckError with the reason when it fails."""
        target = self.nat64.map(address)
        if target is None:
            raise CheckError("no route to this IPv4 address and no NAT64 prefix")
        reason = "no answer"
        for _ in range(self.tries):
            self._queries += 1
            if self._queries > MAX_QUERIES:
                raise CheckError(f"gave up after {MAX_QUERIES} queries")
            try:
                return await upstream_query(target, 53, to_wire(qname), qtype, rd=False, infra=self.infra,
                                            mode="check", wait=self.wait)
            except UpstreamError as exc:
                reason = exc.reason
                if reason not in ("timeout",):
                    break
        raise CheckError(f"{qname}. {'DS' if qtype == DS else 'NS' if qtype == NS else qtype} query failed "
                         f"({reason})")

    async def _parent_name(self, address: str, zone: str, cut: str) -> str:
        """The parent zone's name as its server states it: the owner of the SOA it gives for the name one
        label above `zone`. The referral alone does not tell when the servers of `cut` also serve a zone
        between `cut` and `zone` (then the delegation lives there); `cut` when the answer says nothing."""
        above = zone.split(".", 1)[1] if "." in zone else ""
        try:
            msg = await self._ask(address, above or ".", SOA)
        except CheckError:
            return cut
        for rr in (*msg.answer, *msg.authority):
            owner = message.text(rr.owner)
            if rr.rtype == SOA and msg.aa and (not owner or zone.endswith("." + owner)) and (
                    not cut or owner == cut or owner.endswith("." + cut)):
                return owner
        return cut

    async def _parent_view(self, address: str, zone: str) -> ParentView:
        view = read_referral(await self._ask(address, zone, NS), zone)
        view.ds = read_ds(await self._ask(address, zone, DS), zone)
        return view

    async def _find_parent(self, zone: str) -> tuple[str, list[_Server]]:
        """(parent zone, its servers): iterate from the root until a server refers to `zone` itself."""
        servers = self.roots
        cut = ""
        zone_wire = to_wire(zone)
        for _depth in range(MAX_DEPTH):
            msg, reasons = await self._ask_any(servers, zone, NS)
            if msg is None:
                raise CheckError(f"no server of {_dotted(cut)} answered ({'; '.join(reasons)})")
            referral = [rr for rr in msg.authority if rr.rtype == NS]
            owners = {key(rr.owner) for rr in referral}
            if msg.rcode == NOERROR and not msg.answer and len(owners) == 1 and not msg.aa:
                owner = next(iter(owners))
                owner_text = message.text(owner)
                if key(zone_wire) == owner:
                    return cut, servers
                if is_subdomain(zone_wire, owner) and owner_text != cut and (
                        not cut or owner_text.endswith("." + cut)):
                    servers = await self._next_servers(msg, referral, owner_text)
                    cut = owner_text
                    continue
                raise CheckError(f"the servers of {_dotted(cut)} gave a referral to {owner_text}., which "
                                 f"is not on the way to {zone}.")
            if msg.rcode in (NOERROR, NXDOMAIN) and msg.aa and not msg.answer:
                # The zone does not exist in the parent: no delegation. The SOA owner names the parent.
                soa = [rr for rr in msg.authority if rr.rtype == SOA]
                return (message.text(soa[0].owner) if soa else cut), servers
            if msg.rcode == NOERROR and msg.aa and msg.answer:
                raise CheckError(f"the servers of {_dotted(cut)} answer for {zone}. themselves (the zone and "
                                 "its parent are on the same servers), so the delegation cannot be seen")
            raise CheckError(f"unexpected answer from the servers of {_dotted(cut)} (rcode {msg.rcode})")
        raise CheckError(f"more than {MAX_DEPTH} referrals")

    async def _ask_any(self, servers: list[_Server], qname: str, qtype: int) -> tuple[Message | None, list[str]]:
        """The first usable answer from any address of `servers`, with the reasons of those that failed."""
        reasons: list[str] = []
        for server in servers:
            for address in server.addresses:
                try:
                    msg = await self._ask(address, qname, qtype)
                except CheckError as exc:
                    reasons.append(f"{server.name}. ({address}): {exc}")
                    if str(exc).startswith("gave up"):
                        return None, reasons
                    continue
                if msg.rcode in (NOERROR, NXDOMAIN):
                    return msg, reasons
                reasons.append(f"{server.name}. ({address}): rcode {msg.rcode}")
        if not any(s.addresses for s in servers):
            reasons.append("no server address known")
        return None, reasons

    async def _next_servers(self, msg: Message, referral: list[message.RR], cut: str) -> list[_Server]:
        """The servers of a referral: glue from the additional section, else the names looked up."""
        names = list(dict.fromkeys(message.text(message.first_name(rr.rdata)) for rr in referral))
        glue: dict[str, list[str]] = {}
        for rr in msg.additional:
            address = _address_text(rr)
            name = message.text(rr.owner)
            if address is not None and name in names and self.policy.allowed(address):
                glue.setdefault(name, []).append(address)
        servers = [_Server(name, glue.get(name, [])) for name in names]
        if not any(s.addresses for s in servers):
            for server in servers:  # glueless: look the names up from the root (bounded by MAX_QUERIES)
                server.addresses = await self._lookup(server.name)
                if server.addresses:
                    break
        return servers

    async def _lookup(self, name: str) -> list[str]:
        """A and AAAA of a name server, iterating from the root (no CNAMEs); empty when not found."""
        found: list[str] = []
        for qtype in (A, AAAA):
            servers = self.roots
            for _depth in range(MAX_DEPTH):
                msg, _ = await self._ask_any(servers, name, qtype)
                if msg is None:
                    break
                if msg.aa or msg.answer:
                    found += [a for rr in msg.answer if key(rr.owner) == key(to_wire(name))
                              and (a := _address_text(rr)) is not None and self.policy.allowed(a)]
                    break
                referral = [rr for rr in msg.authority if rr.rtype == NS]
                if not referral:
                    break
                names = list(dict.fromkeys(message.text(message.first_name(rr.rdata)) for rr in referral))
                glue = [_Server(n, [a for rr in msg.additional if message.text(rr.owner) == n
                                    and (a := _address_text(rr)) is not None and self.policy.allowed(a)])
                        for n in names]
                if not any(s.addresses for s in glue):
                    break  # a second level of glueless lookups is not worth following for a check
                servers = glue
        return found


# ---- the command and the periodic check -----------------------------------------------------------------


async def run_once(config: Config) -> list[ZoneReport]:
    """Check every zone now (raises ValueError/OSError for a bad root hints file or key directory)."""
    keys = load_keys(config)
    return await Checker(config).check_all(keys)


def print_reports(reports: list[ZoneReport]) -> int:
    """Print every report; the exit status (0 when every zone's delegation agrees, else 1)."""
    for report in reports:
        for line in report.lines():
            print(line)
    return 0 if all(r.ok for r in reports) else 1


async def run_periodically(config: Config, interval: float) -> None:
    """Check every `interval` seconds, the first time `FIRST_DELAY` (or `interval`, when shorter) after
    start; log when a zone's result changes, set the gauge.

    The delay keeps start-up (and every short-lived test server that iterates from loopback hints, whose
    upstreams count their queries) free of these queries. Never raises (a failure is logged and counts as
    "not OK"), so that it cannot stop the server, and never touches readiness: a parent that is wrong or
    unreachable is the operator's to fix.
    """
    last: dict[str, bool] = {}
    await asyncio.sleep(min(interval, FIRST_DELAY))
    while True:
        try:
            reports = await run_once(config)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bad key file or hints file mid-run; the next run may succeed
            reports = [ZoneReport(z.zone, error=f"cannot check: {exc}") for z in expected(config, None)]
        for report in reports:
            metrics.DELEGATION_OK.labels(zone=report.zone).set(1 if report.ok else 0)
            if last.get(report.zone) is report.ok:
                continue
            last[report.zone] = report.ok
            if report.ok:
                logger.info("delegation of %s. agrees with the parent zone %s", report.zone,
                            _dotted(report.parent_zone))
            else:
                bad = [line for line in report.lines() if not line.startswith(("OK ", "; "))]
                logger.warning("delegation of %s. disagrees with its parent: %s%s", report.zone,
                               " | ".join(bad), "; fix: " + " | ".join(report.fix) if report.fix else "")
        await asyncio.sleep(interval)


def main(argv: list[str]) -> int:
    """`dnsd check [same options as the server]`: 0 all agree, 1 not (or unreachable), 2 configuration."""
    from dnsd import config as config_module
    from dnsd.errors import ConfigError

    try:
        config = config_module.load(argv)
    except ConfigError as exc:
        print(f"dnsd check: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        keys = load_keys(config)
        checker = Checker(config)
    except (OSError, ValueError) as exc:
        print(f"dnsd check: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.ERROR)
    reports = asyncio.run(checker.check_all(keys))
    return print_reports(reports)
