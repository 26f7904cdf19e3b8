"""Response rate limiting (RRL) for authoritative answers over UDP, in the manner of BIND, Knot and NSD.

Why: a UDP query's source address is not verified, so an attacker can send small queries "from" a
victim and have dnsd send the (larger) answers to it. RRL bounds how many *identical* responses one
client network receives per second. Legitimate resolvers cache, so they rarely ask the same
question many times a second; a reflected flood does, and gets throttled.

How it decides, per response:
* the bucket is (client network, response token): the network is the client's /24 (IPv4) or /56
  (IPv6) by default, and the token is the response's class and its key, as BIND's and Knot's RRL
  key them:
  - positive answers: the question (name, type, class);
  - NODATA (NOERROR without answers, referrals included): the name alone, so a browser's HTTPS
    queries (NODATA for nearly every name) get one bucket per name, not one for all of them;
  - NXDOMAIN: the zone (the owner of the SOA in the authority section), so random names, which
    cannot escape the limit by being different, still share one bucket per zone;
  - answers truncated for size (TC, no answers): a class of their own, per name, so that a few
    large answers cannot use up the negative buckets;
  - errors (REFUSED, FORMERR, BADVERS, ...): one bucket per network;
* each bucket may send `responses_per_second` responses in each one-second window; beyond that,
  every `slip`-th limited response *of that bucket* goes out as an empty truncated answer (TC=1),
  so that a real client behind the spoofed address retries over TCP (which RRL never limits), and
  the others are dropped. slip 0 drops all, slip 1 truncates all. The count is per bucket (as
  BIND's): with one shared count, two limited networks taking turns would see one of them get
  every TC and the other none, never able to fall back to TCP. A slip answer keeps the OPT record
  of the answer it replaces (RFC 6891 7: a truncated response to an EDNS query carries OPT);
* clients in `--allow-recursion` are exempt (the cluster's own pods must never be throttled), and so
  is TCP, whose source addresses are verified by the handshake.

The table is bounded (`MAX_BUCKETS`): when full, buckets from past windows are swept, and if it is
still full the table starts afresh, so a flood from many networks costs bounded memory; the worst
case is a second of unlimited answers, never unbounded growth.
"""

from __future__ import annotations

import ipaddress
import time

#: Buckets kept at most (one per client network and response token seen in the current second).
MAX_BUCKETS = 200_000
#: Remembered client address -> network key decisions.
MAX_NETWORKS = 65_536

SEND, DROP, SLIP = 0, 1, 2
# Class prefixes of the other tokens: they start with a zero octet and are longer than five octets, so
# no token built on them equals a positive one (a question, which starts with a zero octet only for the
# root, and is then five octets long).
NODATA_CLASS = b"\x00nodata"
NXDOMAIN_CLASS = b"\x00nxdomain"
TRUNCATED_CLASS = b"\x00truncated"
ERROR_TOKEN = b"\x00error"

_NXDOMAIN = 3
_TC = 0x02
_SOA = 6


class RateLimiter:
    """Per (client network, response token) counters over one-second windows."""

    __slots__ = ("_buckets", "_networks", "_v4", "_v6", "dropped", "rate", "slip", "slipped")

    def __init__(self, rate: int, slip: int, ipv4_prefix: int = 24, ipv6_prefix: int = 56) -> None:
        self.rate = rate
        self.slip = slip
        self._v4 = ipv4_prefix
        self._v6 = ipv6_prefix
        self._buckets: dict[tuple[bytes, bytes], list[int]] = {}  # -> [window second, count, limited]
        self._networks: dict[str, bytes] = {}
        self.dropped = 0
        self.slipped = 0

    def network(self, host: str) -> bytes:
        """The client's network as bytes (address masked to the configured prefix), cached per address."""
        key = self._networks.get(host)
        if key is None:
            try:
                address = ipaddress.ip_address(host.split("%", 1)[0])
            except ValueError:
                address = ipaddress.IPv6Address(0)
            if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            prefix = self._v4 if address.version == 4 else self._v6
            key = ipaddress.ip_network(f"{address}/{prefix}", strict=False).network_address.packed
            if len(self._networks) >= MAX_NETWORKS:
                self._networks.clear()
            self._networks[host] = key
        return key

    def decide(self, host: str, token: bytes) -> int:
        """SEND, DROP or SLIP for one more response to `host` in the bucket `token`."""
        now = int(time.monotonic())
        bucket_key = (self.network(host), token)
        bucket = self._buckets.get(bucket_key)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._sweep(now)
            self._buckets[bucket_key] = [now, 1, 0]
            return SEND  # rate is at least 1 whenever a limiter exists
        if bucket[0] != now:
            bucket[0] = now
            bucket[1] = 1
            return SEND
        bucket[1] += 1
        if bucket[1] <= self.rate:
            return SEND
        bucket[2] += 1  # kept across windows: the slip rhythm of a long flood stays even
        if self.slip and bucket[2] % self.slip == 0:
            self.slipped += 1
            return SLIP
        self.dropped += 1
        return DROP

    def _sweep(self, now: int) -> None:
        buckets = self._buckets
        for key in [key for key, bucket in buckets.items() if bucket[0] != now]:
            del buckets[key]
        if len(buckets) >= MAX_BUCKETS:
            buckets.clear()

    @property
    def buckets(self) -> int:
        """Buckets held (for metrics and tests)."""
        return len(self._buckets)


def token(reply: bytes, qend: int) -> bytes:
    """The response token of an encoded reply whose question ends at `qend` (see the module docstring)."""
    rcode = reply[3] & 0xF
    if rcode == 0 and reply[6] == 0 and reply[7] == 0:  # no answers
        if _bare_badvers(reply, qend):  # an extended rcode in the OPT: an error, not NODATA
            return ERROR_TOKEN
        name = reply[12 : qend - 4].lower()
        return (TRUNCATED_CLASS if reply[2] & _TC else NODATA_CLASS) + name
    if rcode == _NXDOMAIN:
        return NXDOMAIN_CLASS + _zone_of_negative(reply, qend)
    if rcode:
        return ERROR_TOKEN
    return reply[12:qend].lower()


def _bare_badvers(reply: bytes, qend: int) -> bool:
    """Whether the reply is the question plus an OPT with an extended rcode (BADVERS), and nothing else."""
    return (len(reply) == qend + 11 and reply[8] == reply[9] == reply[10] == reply[qend] == 0 and reply[11] == 1
            and reply[qend + 2] == 41 and reply[qend + 1] == 0 and reply[qend + 5] != 0)


def _opt_record(reply: bytes, qend: int) -> bytes:
    """The reply's OPT record as bytes (b"" when it has none): the records are walked, not guessed."""
    count = sum(((reply[i] << 8) | reply[i + 1]) for i in (6, 8, 10))
    offset = qend
    length = len(reply)
    try:
        for _ in range(count):
            start = offset
            while True:  # the owner: labels, then a zero or a pointer
                label = reply[offset]
                if label & 0xC0 == 0xC0:
                    offset += 2
                    break
                offset += 1 + label
                if label == 0:
                    break
            end = offset + 10 + ((reply[offset + 8] << 8) | reply[offset + 9])
            if end > length:
                return b""
            if reply[offset] == 0 and reply[offset + 1] == 41:
                return reply[start:end]
            offset = end
    except IndexError:
        return b""
    return b""


def _zone_of_negative(reply: bytes, qend: int) -> bytes:
    """The owner of the SOA in a negative reply's authority section (lower-case wire), or b"" if none.

    The answer section (a CNAME chain that ends in NXDOMAIN) is skipped; names are read with
    compression, bounded by the message. Malformed replies (never produced by our encoder) give b"".
    """
    count = ((reply[6] << 8) | reply[7]) + ((reply[8] << 8) | reply[9])
    offset = qend
    length = len(reply)
    try:
        for _ in range(count):
            owner, after = _read_name(reply, offset)
            if after + 10 > length:
                return b""
            rtype = (reply[after] << 8) | reply[after + 1]
            if rtype == _SOA:
                return owner.lower()
            offset = after + 10 + ((reply[after + 8] << 8) | reply[after + 9])
    except IndexError:
        return b""
    return b""


def _read_name(message: bytes, offset: int) -> tuple[bytes, int]:
    """(uncompressed wire name, offset after it); pointers only go backwards, so this ends."""
    out = bytearray()
    end = -1
    while True:
        label = message[offset]
        if label & 0xC0 == 0xC0:
            target = ((label & 0x3F) << 8) | message[offset + 1]
            if end < 0:
                end = offset + 2
            if target >= offset:
                raise IndexError("forward pointer")
            offset = target
            continue
        out += message[offset : offset + 1 + label]
        offset += 1 + label
        if label == 0:
            return bytes(out), (end if end >= 0 else offset)


def question_end(message: bytes) -> int:
    """Offset just past the first question (its name is never compressed), or 0 when there is none."""
    if len(message) < 12 or not (message[4] or message[5]):
        return 0
    offset = 12
    length = len(message)
    while offset < length:
        label = message[offset]
        if label == 0:
            end = offset + 5
            return end if end <= length else 0
        if label & 0xC0:
            return 0
        offset += 1 + label
    return 0


def truncated(reply: bytes, qend: int) -> bytes:
    """The slip answer: the reply's header with TC set, only the question, and the reply's OPT if any.

    RFC 6891 7: a truncated response to a query with OPT must carry OPT too, or the client may
    conclude that the server has no EDNS (during an attack, of all times).
    """
    opt = _opt_record(reply, qend) if reply[10] or reply[11] else b""
    return b"".join((reply[:2], bytes((reply[2] | _TC, reply[3])), b"\x00\x01\x00\x00\x00\x00\x00",
                     b"\x01" if opt else b"\x00", reply[12:qend], opt))
