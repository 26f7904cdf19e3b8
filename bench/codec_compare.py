"""Why dnsd's wire codec is its own: dnsd.wire next to dnslib (and dnspython) on the work of a zone query.

Run: `.venv/bin/python bench/codec_compare.py [--iterations 20000]` (needs `pip install dnslib`, which
dnsd no longer depends on). Not a test: it prints microseconds per call, on this machine, for
- parsing a query (`wire.parse_query` / `dnslib.DNSRecord.parse` / `dns.message.from_wire`);
- encoding the answer to it (two AAAA records, EDNS; `wire.encode` / `DNSRecord.pack` / `Message.to_wire`);
- and checks first that the three produce answers that dnspython reads as the same records.
The slow path does both once per query it cannot answer from the store; the fast path does neither.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import dns.flags
import dns.message
import dns.rrset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dnsd import wire  # noqa: E402
from dnsd.zone import AAAA  # noqa: E402

NAME = "sample-service.default.svc.c2.k8s.ooo"
ADDRESSES = ("2001:db8:42::10", "2001:db8:42::11")


def per_call(fn: Callable[[], object], iterations: int) -> float:
    started = time.perf_counter()
    for _ in range(iterations):
        fn()
    return (time.perf_counter() - started) / iterations * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20_000)
    n = parser.parse_args().iterations
    try:
        import dnslib
    except ImportError:
        raise SystemExit("dnslib is not installed: pip install dnslib") from None
    import ipaddress

    message = dns.message.make_query(NAME, "AAAA", use_edns=0, payload=1232)
    message.flags &= ~dns.flags.RD
    data = message.to_wire()

    query = wire.parse_query(data)
    response = wire.Response(aa=True, answer=[(NAME, AAAA, 30, ipaddress.ip_address(a).packed) for a in ADDRESSES])

    def dnsd_encode() -> bytes:
        return wire.encode(query, response, False, 1232, 1232)

    def dnslib_encode() -> bytes:
        record = dnslib.DNSRecord.parse(data)
        reply = record.reply(aa=1, ra=0)
        for address in ADDRESSES:
            reply.add_answer(dnslib.RR(NAME, dnslib.QTYPE.AAAA, ttl=30, rdata=dnslib.AAAA(address)))
        return bytes(reply.pack())

    def dnspython_encode() -> bytes:
        parsed = dns.message.from_wire(data)
        reply = dns.message.make_response(parsed)
        reply.flags |= dns.flags.AA
        reply.answer.append(dns.rrset.from_text(NAME + ".", 30, "IN", "AAAA", *ADDRESSES))
        return reply.to_wire()

    for encode in (dnsd_encode, dnslib_encode, dnspython_encode):  # same records, whoever encodes them
        answer = dns.message.from_wire(encode())
        if sorted(rd.to_text() for rd in answer.answer[0]) != sorted(ADDRESSES):
            raise SystemExit(f"{encode.__name__} gave other records: {answer}")

    rows = [
        ("parse a query: dnsd.wire.parse_query", per_call(lambda: wire.parse_query(data), n)),
        ("parse a query: dnslib.DNSRecord.parse", per_call(lambda: dnslib.DNSRecord.parse(data), n)),
        ("parse a query: dns.message.from_wire", per_call(lambda: dns.message.from_wire(data), n)),
        ("parse + encode the answer: dnsd.wire", per_call(lambda: (wire.parse_query(data), dnsd_encode()), n)),
        ("parse + encode the answer: dnslib", per_call(dnslib_encode, n)),
        ("parse + encode the answer: dnspython", per_call(dnspython_encode, n)),
    ]
    print(f"# wire codecs: {n:,} iterations, Python {sys.version.split()[0]}, dnslib {dnslib.version}")
    print("| step | µs per call |")
    print("|---|---:|")
    for label, value in rows:
        print(f"| {label} | {value:.1f} |")


if __name__ == "__main__":
    main()
