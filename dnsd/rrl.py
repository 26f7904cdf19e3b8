"""Response rate limiting (RRL) for authoritative answers over UDP, in the manner of BIND, Knot and NSD.

Why: a UDP query's source address is not verified, so an attacker can send small queries "from" a
victim and have dnsd send the (larger) answers to it. RRL bounds how many *identical* responses one
client network receives per second. Legitimate resolvers cache, so they rarely ask the same
question many times a second; a reflected flood does, and gets throttled.

How it decides, per response:
* the bucket is (client network, response token): the network is the client's /24 (IPv4) or /56
  (IPv6) by default, and the token is the question for positive answers, one shared token for all
  negative answers (NXDOMAIN and NODATA: random names must not escape the limit by being different)
  and one for errors (REFUSED, FORMERR, ...), as BIND's categories do;
* each bucket may send `responses_per_second` responses in each one-second window; beyond that,
  every `slip`-th limited response goes out as an empty truncated answer (TC=1), so that a real
  client behind the spoofed address retries over TCP (which RRL never limits), and the others are
  dropped. slip 0 drops all, slip 1 truncates all;
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
NEGATIVE_TOKEN = b"\x00negative"
ERROR_TOKEN = b"\x00error"

_NXDOMAIN = 3


class RateLimiter:
    """Per (client network, response token) counters over one-second windows."""

    __slots__ = ("_buckets", "_limited", "_networks", "_v4", "_v6", "dropped", "rate", "slip", "slipped")

    def __init__(self, rate: int, slip: int, ipv4_prefix: int = 24, ipv6_prefix: int = 56) -> None:
        self.rate = rate
        self.slip = slip
        self._v4 = ipv4_prefix
        self._v6 = ipv6_prefix
        self._buckets: dict[tuple[bytes, bytes], list[int]] = {}  # -> [window second, count]
        self._networks: dict[str, bytes] = {}
        self._limited = 0
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
            self._buckets[bucket_key] = [now, 1]
            return SEND  # rate is at least 1 whenever a limiter exists
        if bucket[0] != now:
            bucket[0] = now
            bucket[1] = 1
            return SEND
        bucket[1] += 1
        if bucket[1] <= self.rate:
            return SEND
        return self._limit()

    def _limit(self) -> int:
        self._limited += 1
        if self.slip and self._limited % self.slip == 0:
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
    if rcode == _NXDOMAIN or (rcode == 0 and reply[6] == 0 and reply[7] == 0):
        return NEGATIVE_TOKEN
    if rcode:
        return ERROR_TOKEN
    return reply[12:qend].lower()


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
    """The slip answer: the reply's header with TC set and no records, only the question."""
    return b"".join((reply[:2], bytes((reply[2] | 0x02, reply[3])), b"\x00\x01\x00\x00\x00\x00\x00\x00",
                     reply[12:qend]))
