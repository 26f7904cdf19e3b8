"""DNSSEC validation of recursive answers: the chain of trust from the trust anchors down (RFC 4033-4035,
RFC 5155, RFC 6840), with negative trust anchors (RFC 7646) and bounded work (KeyTrap).

The recursor hands every answer it has not judged yet to `Validator.validate`, which returns it with a
security state (secure, insecure or bogus) and, where one applies, the Extended DNS Error (RFC 8914)
to report; the cache keeps both with the data, so each answer is judged once.

How a name's zone keys are found (`_zone_of`): from the deepest trust anchor above the name, every
label below is probed with a DS query (answered by the parent side: the iterator sends DS queries to
the parent's servers). A signed DS RRset makes the label a secure zone, whose DNSKEY RRset must then be
signed by a key matching one of the DS; a signed denial proves that the label is an insecure
delegation (NS without DS, or an NSEC3 opt-out span), no delegation at all (keep walking), or absent
(stop: nothing below exists in this zone). Every step's outcome is cached for the TTL of the records
that proved it, so a warm resolver walks through a few dictionary lookups. For a signed RRset the walk
ends at the RRSIG's signer (the zone apex); only unsigned data is walked down to its owner, to prove
that it lies below an insecure delegation. The walk is top-down and stateless about zone cuts, so it
works the same in iterate and forward mode and makes no address-family assumptions.

Answers: each RRset of the answer section (CNAME/DNAME chain included; a CNAME synthesized from a
DNAME is judged by its DNAME) is verified with the keys of its signer's zone; a wildcard expansion
also needs the proof that the name itself does not exist. Negative answers need their NSEC/NSEC3
proof (nsec, nsec3). The worst state of the parts is the answer's state: bogus beats insecure beats
secure, so a CNAME from a signed zone into an unsigned one is insecure.

Work bounds (CVE-2023-50387 KeyTrap, CVE-2023-50868): at most `MAX_KEYS_PER_TAG` keys tried per
signature, `MAX_SIGS_PER_RRSET` signatures per RRset, `MAX_VERIFICATIONS` signature checks per client
query, `MAX_DNSKEYS` keys per DNSKEY RRset, and `nsec3.MAX_HASHES` NSEC3 hashes per response; past a
bound the answer is bogus.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from dnsd import metrics
from dnsd.dnssec import DNSKEY, DS, NSEC, NSEC3, RRSIG, crypto, nsec, nsec3, records
from dnsd.dnssec.canonical import from_labels, labels, signed_data
from dnsd.dnssec.records import Dnskey, FormatError, Rrsig
from dnsd.recursor.cache import Answer
from dnsd.recursor.chain import ResolveError
from dnsd.recursor.message import CNAME, DNAME, NOERROR, NXDOMAIN, RR, SOA, first_name, key, to_wire

#: Security states kept on `cache.Answer.security`.
UNCHECKED, SECURE, INSECURE, BOGUS = 0, 1, 2, 3
STATE_NAMES = {SECURE: "secure", INSECURE: "insecure", BOGUS: "bogus"}

#: Extended DNS Error codes used here (RFC 8914 section 4, IANA registry).
EDE_UNSUPPORTED_ALGORITHM, EDE_UNSUPPORTED_DIGEST = 1, 2
EDE_BOGUS, EDE_EXPIRED, EDE_NOT_YET_VALID, EDE_DNSKEY_MISSING, EDE_RRSIGS_MISSING = 6, 7, 8, 9, 10
EDE_NO_ZONE_KEY, EDE_NSEC_MISSING, EDE_NO_REACHABLE_AUTHORITY = 11, 12, 22
EDE_NSEC3_ITERATIONS, EDE_SYNTHESIZED = 27, 29

#: KeyTrap bounds (Unbound and PowerDNS use bounds of the same order).
MAX_KEYS_PER_TAG = 4
MAX_SIGS_PER_RRSET = 8
MAX_VERIFICATIONS = 64
#: A DNSKEY RRset larger than this is refused unparsed (real zones hold a handful of keys).
MAX_DNSKEYS = 32
#: DS probes per walk: a name has at most 127 labels, but no legitimate walk needs this many.
MAX_WALK = 32
#: Validated keys and zone-cut facts are trusted for at most this long.
MAX_KEY_TTL = 86400
#: A failed step (bogus keys, unreachable parent) is retried after this long (Unbound's val-bogus-ttl).
BOGUS_TTL = 60
MAX_STEPS = 100_000

Fetch = Callable[[bytes, int], Awaitable[Answer]]
_ANY = 255


class WorkExceeded(Exception):
    """One client query asked for more validation work than the bounds allow."""


@dataclass(slots=True)
class Work:
    """Signature verifications left for one client query."""

    verifications: int = MAX_VERIFICATIONS

    def spend(self) -> None:
        self.verifications -= 1
        if self.verifications < 0:
            raise WorkExceeded("signature verifications")


@dataclass(frozen=True, slots=True)
class ZoneKeys:
    """What the walk knows about one zone: its state and, when secure, its usable keys."""

    zone: bytes
    state: int
    keys: tuple[tuple[int, Dnskey], ...] = ()
    ede: int | None = None
    expires: float = float("inf")


_NOT_A_CUT = "not-a-cut"
_STOP = "stop"
Step = ZoneKeys | str


@dataclass(frozen=True, slots=True)
class Anchor:
    """Trust anchors of one name: DS records and/or DNSKEY rdatas (RFC 4033 2, Unbound's format)."""

    owner: bytes
    ds: tuple[records.Ds, ...] = ()
    keys: tuple[bytes, ...] = ()


class AnchorError(ValueError):
    """A trust anchor file is unreadable or holds no DS or DNSKEY record."""


def parse_anchors(text: str, source: str = "trust anchor") -> list[Anchor]:
    """DS and DNSKEY records in zone-file format (owner [TTL] [IN] TYPE RDATA; parentheses and ';')."""
    import base64
    import binascii

    found: dict[bytes, tuple[list[records.Ds], list[bytes]]] = {}
    logical: list[str] = []
    depth = 0
    for raw in text.splitlines():
        line = raw.split(";", 1)[0]
        depth += line.count("(") - line.count(")")
        logical.append(line.replace("(", " ").replace(")", " "))
        if depth > 0:
            continue
        fields = " ".join(logical).split()
        logical = []
        if not fields or fields[0].startswith("$"):
            continue
        owner, rest = fields[0], fields[1:]
        while rest and (rest[0].isdigit() or rest[0].upper() in ("IN", "CH")):
            rest = rest[1:]
        if len(rest) < 2:
            continue
        rtype, data = rest[0].upper(), rest[1:]
        try:
            wire = to_wire(owner.rstrip(".") or ".") if owner != "." else b"\x00"
            if rtype == "DS" and len(data) >= 4:
                ds = records.Ds(int(data[0]), int(data[1]), int(data[2]), bytes.fromhex("".join(data[3:])))
                found.setdefault(key(wire), ([], []))[0].append(ds)
            elif rtype == "DNSKEY" and len(data) >= 4:
                flags, protocol, algorithm = int(data[0]), int(data[1]), int(data[2])
                rdata = (flags.to_bytes(2, "big") + bytes((protocol, algorithm))
                         + base64.b64decode("".join(data[3:]), validate=True))
                found.setdefault(key(wire), ([], []))[1].append(rdata)
        except (ValueError, binascii.Error, OverflowError) as exc:
            raise AnchorError(f"{source}: cannot parse {' '.join(fields)!r}: {exc}") from None
    if not found:
        raise AnchorError(f"{source}: no DS or DNSKEY record")
    return [Anchor(owner, tuple(ds), tuple(keys)) for owner, (ds, keys) in found.items()]


def load_anchors(paths: Iterable[str]) -> list[Anchor]:
    """The anchors of `paths`, or the bundled root anchors when there are none (RFC 9718)."""
    anchors: list[Anchor] = []
    given = list(paths)
    for path in given:
        try:
            anchors += parse_anchors(Path(path).read_text(encoding="utf-8"), path)
        except OSError as exc:
            raise AnchorError(f"{path}: {exc.strerror}") from None
    if not given:
        text = resources.files("dnsd.recursor").joinpath("root.ds").read_text(encoding="utf-8")
        anchors = parse_anchors(text, "bundled root.ds")
    return anchors


def _in_window(sig: Rrsig, now: int) -> int | None:
    """None when `now` lies in the RRSIG's validity period (RFC 4034 3.1.5, serial arithmetic), else
    the EDE code saying which side it missed."""
    if (now - sig.inception) % 2**32 >= 2**31:
        return EDE_NOT_YET_VALID
    if (sig.expiration - now) % 2**32 >= 2**31:
        return EDE_EXPIRED
    return None


def _subdomain(name: bytes, zone: bytes) -> bool:
    return nsec.is_subdomain(name, zone)


class Validator:
    """Judges answers; one per Recursor. `fetch` resolves (name, type) without validation."""

    def __init__(self, anchors: list[Anchor], negative: Iterable[bytes], fetch: Fetch,
                 clock: Callable[[], float] = time.time) -> None:
        self.anchors = {key(a.owner): a for a in anchors}
        self.negative = tuple(key(n) for n in negative)
        self.fetch = fetch
        self.clock = clock
        self._steps: OrderedDict[bytes, tuple[Step, float]] = OrderedDict()
        self._anchor_keys: dict[bytes, ZoneKeys] = {}

    # ---- answers -----------------------------------------------------------------------------

    async def validate(self, qname: bytes, qtype: int, answer: Answer) -> Answer:
        """`answer` with its security state and EDE set; counted in dnsd_dnssec_validations_total."""
        caps: dict[tuple[bytes, int], int] = {}
        try:
            state, ede = await self._answer(qname, qtype, answer, Work(), caps)
        except (WorkExceeded, nsec3.HashBudgetExceeded):
            state, ede = BOGUS, EDE_BOGUS
        metrics.DNSSEC_VALIDATIONS.labels(result=STATE_NAMES[state]).inc()
        if caps and state == SECURE:
            # RFC 4035 5.3.3: a validated RRset lives no longer than its RRSIG's original TTL and
            # validity period; its signatures go with it
            def capped(rr: RR) -> RR:
                covered = int.from_bytes(rr.rdata[:2], "big") if rr.rtype == RRSIG else rr.rtype
                cap = caps.get((key(rr.owner), covered))
                return rr if cap is None or rr.ttl <= cap else rr._replace(ttl=cap)
            answer = replace(answer, answer=tuple(capped(rr) for rr in answer.answer))
        return replace(answer, security=state, ede=ede)

    def _covered(self, name: bytes) -> bool:
        k = key(name)
        return any(_subdomain(k, n) for n in self.negative)

    def covered(self, name: bytes) -> bool:
        """Whether a negative trust anchor switches validation off for `name` (RFC 7646)."""
        return self._covered(name)

    async def _answer(self, qname: bytes, qtype: int, answer: Answer, work: Work,
                      caps: dict[tuple[bytes, int], int]) -> tuple[int, int | None]:
        sigs: dict[tuple[bytes, int], list[Rrsig]] = {}
        rrsets: dict[tuple[bytes, int], list[RR]] = {}
        for rr in answer.answer:
            if rr.rtype == RRSIG and qtype != RRSIG:
                try:
                    sig = records.rrsig(rr.rdata)
                except FormatError:
                    continue
                sigs.setdefault((key(rr.owner), sig.type_covered), []).append(sig)
            else:
                rrsets.setdefault((key(rr.owner), rr.rtype), []).append(rr)
        if qtype == RRSIG or (qtype == _ANY and not rrsets and answer.rcode == NOERROR):
            # signatures asked for as data are not themselves signed (RFC 4035 2.2), and the iterator
            # keeps nothing of an ANY answer (RFC 8482): nothing to judge, nothing to claim
            return INSECURE, None
        parts: list[tuple[int, int | None]] = []
        dname: RR | None = None
        end = key(qname)
        for (owner, rtype), rrs in rrsets.items():
            if rtype == DNAME:
                dname = rrs[0]
            elif rtype == CNAME and dname is not None and _subdomain(owner, dname.owner) \
                    and not sigs.get((owner, CNAME)):
                dname = None  # synthesized from the DNAME (chain.follow checked it): judged with it
                end = key(first_name(rrs[0].rdata))
                continue
            if rtype == CNAME and owner == end and qtype != CNAME:
                end = key(first_name(rrs[0].rdata))
            parts.append(await self._rrset(owner, rtype, rrs, sigs.get((owner, rtype), []), answer, work, caps))
        has_data = (end, qtype) in rrsets or (qtype == CNAME and (key(qname), CNAME) in rrsets) or (
            qtype == _ANY and any(owner == end for owner, _ in rrsets))
        if answer.rcode == NXDOMAIN or (answer.rcode == NOERROR and not has_data):
            parts.append(await self._negative(end, qtype, answer, work))
        if not parts:
            return BOGUS, EDE_BOGUS
        worst = max(parts, key=lambda p: p[0])
        if worst[0] == SECURE:
            return SECURE, None
        # an insecure answer reports why (EDE 1, 2, 27), if any part said
        ede = worst[1] if worst[0] == BOGUS else next((p[1] for p in parts if p[1] is not None), None)
        return worst[0], ede

    async def _rrset(self, owner: bytes, rtype: int, rrs: list[RR], sigs: list[Rrsig], answer: Answer,
                     work: Work, caps: dict[tuple[bytes, int], int]) -> tuple[int, int | None]:
        if self._covered(owner):
            return INSECURE, None
        signer = next((s.signer for s in sigs if _subdomain(owner, s.signer)), None)
        if signer is None:
            zone = await self._zone_of(owner, work)
            if zone.state == INSECURE:
                return INSECURE, zone.ede
            return BOGUS, zone.ede if zone.state == BOGUS else EDE_RRSIGS_MISSING
        zone = await self._zone_of(signer, work)
        if zone.state != SECURE:
            return zone.state, zone.ede
        if zone.zone != key(signer):
            return BOGUS, EDE_BOGUS  # signed by a name that the chain of trust does not know as a zone
        verified, ede, sig = self._verify(owner, rtype, [rr.rdata for rr in rrs], sigs, zone, work)
        if not verified or sig is None:
            return BOGUS, ede
        caps[(owner, rtype)] = max(1, min(sig.original_ttl, (sig.expiration - int(self.clock())) % 2**32))
        if sig.labels < records.label_count(owner):
            # a wildcard expansion: the name itself must be proven absent (RFC 4035 5.3.4)
            proof = await self._proof(answer.authority, zone, work)
            if isinstance(proof, int):
                return BOGUS, proof
            nsecs, chain = proof
            if nsecs:
                if not nsec.wildcard_answer(nsecs, owner):
                    return BOGUS, EDE_NSEC_MISSING
            elif chain is not None:
                outcome = nsec3.wildcard_answer(chain, owner, sig.labels)
                if outcome == nsec3.FAILED:
                    return (INSECURE, EDE_NSEC3_ITERATIONS) if chain.too_many_iterations else (
                        BOGUS, EDE_NSEC_MISSING)
                if outcome == nsec3.OPT_OUT:
                    return INSECURE, None
        return SECURE, None

    async def _negative(self, name: bytes, qtype: int, answer: Answer, work: Work) -> tuple[int, int | None]:
        """NXDOMAIN or NODATA for (name, qtype): verify the authority section's proof."""
        if self._covered(name):
            return INSECURE, None
        signer = None
        for rr in answer.authority:
            if rr.rtype == RRSIG:
                try:
                    sig = records.rrsig(rr.rdata)
                except FormatError:
                    continue
                if sig.type_covered in (SOA, NSEC, NSEC3) and _subdomain(name, sig.signer):
                    signer = sig.signer
                    break
        if signer is None:
            soa = next((rr.owner for rr in answer.authority if rr.rtype == SOA), name)
            zone = await self._zone_of(soa if _subdomain(name, soa) else name, work)
            if zone.state == INSECURE:
                return INSECURE, zone.ede
            return BOGUS, zone.ede if zone.state == BOGUS else EDE_RRSIGS_MISSING
        zone = await self._zone_of(signer, work)
        if zone.state != SECURE:
            return zone.state, zone.ede
        if zone.zone != key(signer):
            return BOGUS, EDE_BOGUS
        soa_rrs = [rr for rr in answer.authority if rr.rtype == SOA]
        if soa_rrs:
            ok, ede, _ = self._verify(soa_rrs[0].owner, SOA, [rr.rdata for rr in soa_rrs],
                                      _sigs_for(answer.authority, soa_rrs[0].owner, SOA), zone, work)
            if not ok:
                return BOGUS, ede
        proof = await self._proof(answer.authority, zone, work)
        if isinstance(proof, int):
            return BOGUS, proof
        nsecs, chain = proof
        if nsecs:
            proven = (nsec.nxdomain(nsecs, name, zone.zone) and not nsec_shows_existence(nsecs, name)
                      if answer.rcode == NXDOMAIN else nsec.nodata(nsecs, name, qtype, zone.zone))
            return (SECURE, None) if proven else (BOGUS, EDE_NSEC_MISSING)
        if chain is None:
            return BOGUS, EDE_NSEC_MISSING
        outcome = nsec3.nxdomain(chain, name) if answer.rcode == NXDOMAIN else nsec3.nodata(chain, name, qtype)
        if outcome == nsec3.PROVEN:
            return SECURE, None
        if outcome == nsec3.OPT_OUT:
            return INSECURE, None
        if chain.too_many_iterations:
            return INSECURE, EDE_NSEC3_ITERATIONS
        return BOGUS, EDE_NSEC_MISSING

    async def _proof(self, authority: Iterable[RR], zone: ZoneKeys,
                     work: Work) -> tuple[list[tuple[bytes, records.Nsec]], nsec3.Chain | None] | int:
        """The verified NSEC records, or NSEC3 chain, of `zone` in `authority`; else the EDE code of
        what is wrong (12: nothing to prove with; a signature's own code when one fails)."""
        authority = list(authority)
        groups: dict[tuple[bytes, int], list[RR]] = {}
        for rr in authority:
            if rr.rtype in (NSEC, NSEC3) and _subdomain(rr.owner, zone.zone):
                groups.setdefault((key(rr.owner), rr.rtype), []).append(rr)
        if not groups or len(groups) > 2 * MAX_SIGS_PER_RRSET:
            return EDE_NSEC_MISSING
        nsecs: list[tuple[bytes, records.Nsec]] = []
        nsec3s: list[tuple[bytes, bytes]] = []
        for (owner, rtype), rrs in groups.items():
            ok, ede, _ = self._verify(owner, rtype, [rr.rdata for rr in rrs], _sigs_for(authority, owner, rtype),
                                      zone, work)
            if not ok:
                return ede if ede is not None else EDE_BOGUS
            for rr in rrs:
                if rtype == NSEC:
                    try:
                        nsecs.append((owner, records.nsec(rr.rdata)))
                    except FormatError:
                        return EDE_BOGUS
                else:
                    nsec3s.append((owner, rr.rdata))
        if nsecs:
            return nsecs, None
        chain = nsec3.Chain(zone.zone, nsec3s)
        return [], chain

    def _verify(self, owner: bytes, rtype: int, rdatas: list[bytes], sigs: list[Rrsig], zone: ZoneKeys,
                work: Work) -> tuple[bool, int | None, Rrsig | None]:
        """Whether one of `sigs` by `zone` verifies the RRset; else the most telling EDE code."""
        candidates = [s for s in sigs if key(s.signer) == zone.zone and s.type_covered == rtype]
        if not candidates:
            return False, EDE_RRSIGS_MISSING, None
        now = int(self.clock())
        ede = EDE_BOGUS
        rclass = 1
        owner_labels = records.label_count(owner)
        for sig in candidates[:MAX_SIGS_PER_RRSET]:
            if sig.labels > owner_labels:
                continue
            outside = _in_window(sig, now)
            if outside is not None:
                ede = outside
                continue
            keys = [k for tag, k in zone.keys if tag == sig.key_tag and k.algorithm == sig.algorithm]
            if not keys:
                ede = EDE_DNSKEY_MISSING if ede == EDE_BOGUS else ede
                continue
            data = signed_data(sig, owner, rtype, rclass, rdatas)
            for k in keys[:MAX_KEYS_PER_TAG]:
                work.spend()
                if crypto.verify(k, sig.signature, data):
                    return True, None, sig
            ede = EDE_BOGUS
        return False, ede, None

    # ---- the chain of trust ------------------------------------------------------------------

    async def _zone_of(self, name: bytes, work: Work) -> ZoneKeys:
        """The zone holding `name` as far as the chain of trust can tell, with its keys (see above)."""
        name = key(name)
        if self._covered(name):
            return ZoneKeys(name, INSECURE)
        parts = labels(name)
        anchor = None
        for i in range(len(parts) + 1):
            candidate = from_labels(parts[i:])
            if candidate in self.anchors:
                anchor = self.anchors[candidate]
                break
        if anchor is None:
            return ZoneKeys(name, INSECURE)  # outside every island of trust (RFC 4033 5)
        zone = await self._anchored(anchor, work)
        if zone.state != SECURE:
            return zone
        below = len(parts) - len(labels(anchor.owner))
        if below > MAX_WALK:
            raise WorkExceeded("walk")
        for i in range(below - 1, -1, -1):
            cut = from_labels(parts[i:])
            if self._covered(cut):
                return ZoneKeys(cut, INSECURE)
            step = await self._step(zone, cut, work)
            if step == _STOP:
                return zone
            if isinstance(step, ZoneKeys):
                zone = step
                if zone.state != SECURE:
                    return zone
        return zone

    def _remember(self, cut: bytes, step: Step, ttl: float) -> Step:
        self._steps[cut] = (step, time.monotonic() + max(1.0, min(ttl, MAX_KEY_TTL)))
        self._steps.move_to_end(cut)
        while len(self._steps) > MAX_STEPS:
            self._steps.popitem(last=False)
        return step

    async def _anchored(self, anchor: Anchor, work: Work) -> ZoneKeys:
        owner = key(anchor.owner)
        known = self._anchor_keys.get(owner)
        if known is not None and known.expires > time.monotonic():
            return known
        zone = await self._keys(owner, list(anchor.ds), set(anchor.keys), work, MAX_KEY_TTL)
        zone = replace(zone, expires=time.monotonic() + (
            BOGUS_TTL if zone.state == BOGUS else min(MAX_KEY_TTL, zone.expires)))
        self._anchor_keys[owner] = zone
        return zone

    async def _step(self, parent: ZoneKeys, cut: bytes, work: Work) -> Step:
        """What the parent zone says about `cut`: a (secure, insecure or bogus) zone, not a cut, or stop."""
        known = self._steps.get(cut)
        if known is not None and known[1] > time.monotonic():
            return known[0]
        try:
            answer = await self.fetch(cut, DS)
        except (ResolveError, TimeoutError):
            return self._remember(cut, ZoneKeys(cut, BOGUS, ede=EDE_NO_REACHABLE_AUTHORITY), BOGUS_TTL)
        ds_rrs = [rr for rr in answer.answer if rr.rtype == DS and key(rr.owner) == cut]
        if ds_rrs:
            ok, ede, _ = self._verify(cut, DS, [rr.rdata for rr in ds_rrs], _sigs_for(answer.answer, cut, DS),
                                      parent, work)
            if not ok:
                return self._remember(cut, ZoneKeys(cut, BOGUS, ede=ede), BOGUS_TTL)
            dss = []
            for rr in ds_rrs:
                try:
                    dss.append(records.ds(rr.rdata))
                except FormatError:
                    continue
            ttl = min(rr.ttl for rr in ds_rrs)
            zone = await self._keys(cut, dss, set(), work, ttl)
            return self._remember(cut, zone, BOGUS_TTL if zone.state == BOGUS else min(ttl, zone.expires))
        if any(rr.rtype == CNAME and key(rr.owner) == cut for rr in answer.answer):
            return self._remember(cut, _NOT_A_CUT, BOGUS_TTL)  # an alias is never a zone cut
        ttl = min([MAX_KEY_TTL, *(rr.ttl for rr in answer.authority)])
        proof = await self._proof(answer.authority, parent, work)
        status = None
        too_many = False
        failure = EDE_NSEC_MISSING
        if isinstance(proof, int):
            failure = proof
        else:
            nsecs, chain = proof
            if nsecs:
                status = nsec.ds_status(nsecs, cut)
            elif chain is not None:
                status = nsec3.ds_status(chain, cut)
                too_many = chain.too_many_iterations and status is None
        if too_many:
            return self._remember(cut, ZoneKeys(cut, INSECURE, ede=EDE_NSEC3_ITERATIONS), ttl)
        if status in (nsec.INSECURE_CUT, nsec3.INSECURE_CUT):
            return self._remember(cut, ZoneKeys(cut, INSECURE), ttl)
        if status in (nsec.NOT_A_CUT, nsec3.NOT_A_CUT):
            return self._remember(cut, _NOT_A_CUT, ttl)
        if status in (nsec.NONEXISTENT, nsec3.NONEXISTENT) or (status is None and answer.rcode == NXDOMAIN):
            # nothing at or below `cut` exists in the parent zone: data there can only be bogus
            # (or, for an NXDOMAIN, is judged by its own proof), so the walk ends at the parent
            return self._remember(cut, _STOP, ttl)
        if status == nsec.HAS_DS:
            return self._remember(cut, ZoneKeys(cut, BOGUS, ede=EDE_BOGUS), BOGUS_TTL)
        # unproven: the parent is signed but offers no valid denial of the DS
        has_sigs = any(rr.rtype == RRSIG for rr in answer.authority)
        return self._remember(cut, ZoneKeys(cut, BOGUS, ede=failure if has_sigs else EDE_RRSIGS_MISSING), BOGUS_TTL)

    async def _keys(self, zone: bytes, dss: list[records.Ds], trusted: set[bytes], work: Work,
                    ttl: float) -> ZoneKeys:
        """The zone's DNSKEY RRset, accepted when a key matching a DS (or a trusted key) signs it."""
        supported = [d for d in dss if d.algorithm in crypto.SUPPORTED_ALGORITHMS
                     and d.digest_type in crypto.SUPPORTED_DIGESTS]
        if any(d.digest_type != crypto.SHA1 for d in supported):
            supported = [d for d in supported if d.digest_type != crypto.SHA1]  # RFC 4509 3
        if not supported and not trusted:
            if dss and all(d.algorithm in crypto.SUPPORTED_ALGORITHMS for d in dss):
                return ZoneKeys(zone, INSECURE, ede=EDE_UNSUPPORTED_DIGEST)
            return ZoneKeys(zone, INSECURE, ede=EDE_UNSUPPORTED_ALGORITHM)  # RFC 4035 5.2
        try:
            answer = await self.fetch(zone, DNSKEY)
        except (ResolveError, TimeoutError):
            return ZoneKeys(zone, BOGUS, ede=EDE_NO_REACHABLE_AUTHORITY)
        key_rrs = [rr for rr in answer.answer if rr.rtype == DNSKEY and key(rr.owner) == zone]
        if len(key_rrs) > MAX_DNSKEYS:
            return ZoneKeys(zone, BOGUS, ede=EDE_BOGUS)
        keys: list[tuple[int, Dnskey]] = []
        for rr in key_rrs:
            try:
                parsed = records.dnskey(rr.rdata)
            except FormatError:
                continue
            keys.append((crypto.key_tag(rr.rdata), parsed))
        if not keys:
            return ZoneKeys(zone, BOGUS, ede=EDE_DNSKEY_MISSING)
        entry_points: list[tuple[int, Dnskey]] = []
        per_tag: dict[int, int] = {}
        for tag, k in keys:
            if per_tag.get(tag, 0) >= MAX_KEYS_PER_TAG:
                continue
            if k.rdata in trusted or any(
                    d.key_tag == tag and d.algorithm == k.algorithm
                    and crypto.ds_digest(zone, k.rdata, d.digest_type) == d.digest for d in supported):
                per_tag[tag] = per_tag.get(tag, 0) + 1
                entry_points.append((tag, k))
        if not entry_points:
            return ZoneKeys(zone, BOGUS, ede=EDE_DNSKEY_MISSING)  # no key matches the DS (or anchor)
        if not any(k.zone_key for _, k in entry_points):
            return ZoneKeys(zone, BOGUS, ede=EDE_NO_ZONE_KEY)
        if not any(crypto.usable(k) for _, k in entry_points):
            return ZoneKeys(zone, INSECURE, ede=EDE_UNSUPPORTED_ALGORITHM)
        signing = ZoneKeys(zone, SECURE, tuple((t, k) for t, k in entry_points if k.zone_key and not k.revoked))
        ok, ede, sig = self._verify(zone, DNSKEY, [rr.rdata for rr in key_rrs],
                                    _sigs_for(answer.answer, zone, DNSKEY), signing, work)
        if not ok or sig is None:
            return ZoneKeys(zone, BOGUS, ede=ede)
        usable = tuple((t, k) for t, k in keys if k.zone_key and not k.revoked and k.protocol == 3)
        lifetime = min(ttl, *(rr.ttl for rr in key_rrs), max(0, sig.expiration - int(self.clock())) or 1)
        return ZoneKeys(zone, SECURE, usable, None, lifetime)


def nsec_shows_existence(proof: Iterable[tuple[bytes, records.Nsec]], name: bytes) -> bool:
    """Whether an NSEC of the proof says that `name` exists: its own NSEC, or a covering one whose next
    name lies below it (an empty non-terminal, RFC 4035 3.1.3.2); such a "proof" of NXDOMAIN
    contradicts itself (the nsec module's check alone would accept the ENT case, the wildcard at the
    name itself being covered)."""
    k = key(name)
    for owner, record in proof:
        if key(owner) == k:
            return True
        if nsec.covers(owner, record.next_name, name) and _subdomain(record.next_name, name) \
                and key(record.next_name) != k:
            return True
    return False


def _sigs_for(rrs: Iterable[RR], owner: bytes, rtype: int) -> list[Rrsig]:
    out = []
    k = key(owner)
    for rr in rrs:
        if rr.rtype == RRSIG and key(rr.owner) == k:
            try:
                sig = records.rrsig(rr.rdata)
            except FormatError:
                continue
            if sig.type_covered == rtype:
                out.append(sig)
    return out


# ---- what the iterator and forwarder keep of a response for the validator -----------------------

def with_signatures(chain: list[RR], records: Iterable[RR]) -> list[RR]:
    """`chain` with each RRset followed by the RRSIGs over it found in `records` (same owner, covered
    type); a CNAME synthesized from a DNAME has none and gets none."""
    sigs: dict[tuple[bytes, int], list[RR]] = {}
    for rr in records:
        if rr.rtype == RRSIG and len(rr.rdata) >= 2:
            sigs.setdefault((key(rr.owner), int.from_bytes(rr.rdata[:2], "big")), []).append(rr)
    if not sigs:
        return chain
    out: list[RR] = []
    for i, rr in enumerate(chain):
        out.append(rr)
        k = (key(rr.owner), rr.rtype)
        following = chain[i + 1] if i + 1 < len(chain) else None
        if following is None or (key(following.owner), following.rtype) != k:
            out.extend(sigs.pop(k, ()))
    return out


def proofs(records: Iterable[RR], inside: Callable[[RR], bool]) -> tuple[RR, ...]:
    """The NSEC and NSEC3 records of an authority section and the RRSIGs over them and over its SOA."""
    out = []
    for rr in records:
        if not inside(rr):
            continue
        covered = int.from_bytes(rr.rdata[:2], "big") if rr.rtype == RRSIG else 0
        if rr.rtype in (NSEC, NSEC3) or covered in (SOA, NSEC, NSEC3):
            out.append(rr)
    return tuple(out)
