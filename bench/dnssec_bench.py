"""Benchmark: cached validated answers and cold validated resolutions, dnsd next to a validating Unbound.

Both resolve the signed loopback hierarchy of tests/signed_hierarchy.py (Knot-signed zones under a local
root whose key is the trust anchor; requires root for port 53 on 127.54.0.0/16). Three measurements:

- cached validated answers, UDP, DO=1 (so every answer is AD with its RRSIGs): 205 names (200 wildcard
  expansions under an NSEC zone, and the ECDSA, NSEC3, RSA and Ed25519 zones' names); each server is
  asked every name once first (and the answers' rcode and AD are checked equal), then dnsperf measures
  (`-c 8 -q 200`, closed loop, `--seconds` per run, median of `--runs`), the server pinned to core 0 and
  dnsperf to core 1. dnsd is measured twice: validating, and with `--dnssec-validation off` (DO=1 all the
  same), which is what its cached answers cost before validation existed. Target: >= 0.6x Unbound.
- a cold validated resolution: a fresh process asked `. NS` (which primes the root and its DNSKEY, as
  Unbound does by itself), then `www.rsa.test A` with DO=1, whose chain of trust below the root is
  fetched and checked (test. DS and DNSKEY, rsa.test. DS and DNSKEY, the answer): wall time of that
  query, median of `--cold` fresh starts; and, with the keys cached, the median time of 10 never-asked
  wildcard names per start (one upstream query and one NSEC proof each).
- a hostile RRset (KeyTrap, CVE-2023-50387): 50 keys sharing one key tag and 50 signatures, none valid,
  through the validator in-process: the time until it gives up.

Run: `sudo .venv/bin/python bench/dnssec_bench.py [--seconds 10] [--runs 3] [--cold 5]`.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.flags
import dns.message
import dns.query

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lab
from lab import HOST, REPO, Dnsd, dnsperf, free_port, pin, require, write_lines

from tests.signed_hierarchy import Signed, _unbound_conf

NAMES = [f"h{i}.wild.nsec.test" for i in range(200)] + [
    "www.nsec.test", "www.nsec3.test", "www.rsa.test", "www.ed.test", "x.wild.nsec3.test"]


def check(condition: bool, message: str) -> None:
    if not condition:
        raise RuntimeError(message)


def ask(port: int, name: str, host: str = HOST, qtype: str = "A") -> tuple[int, bool, float]:
    query = dns.message.make_query(name, qtype, want_dnssec=True, use_edns=0)
    started = time.perf_counter()
    reply = dns.query.udp(query, host, port=port, timeout=10)
    return reply.rcode(), bool(reply.flags & dns.flags.AD), time.perf_counter() - started


class Unbound:
    """A validating Unbound on HOST:port with the hierarchy's root hints and trust anchor."""

    def __init__(self, signed: Signed) -> None:
        self.port = free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="dnsd-bench-unbound-"))
        (self.workdir / "root.hints").write_text(Path(signed.root_hints).read_text())
        (self.workdir / "anchor").write_text(Path(signed.anchor_file).read_text())
        conf = _unbound_conf(self.workdir, HOST, "validator iterator").replace("port: 53", f"port: {self.port}")
        conf = conf.replace("val-log-level: 2", "val-log-level: 0").replace("verbosity: 1", "verbosity: 0")
        (self.workdir / "unbound.conf").write_text(conf)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Unbound:
        self.proc = subprocess.Popen([require("taskset"), "-c", lab.SERVER_CPUS, require("unbound"), "-d", "-c",
                                      str(self.workdir / "unbound.conf")], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                dns.query.udp(dns.message.make_query(".", "NS"), HOST, port=self.port, timeout=0.5)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
        pin(self.proc.pid, lab.SERVER_CPUS)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


def dnsd(signed: Signed, validation: str) -> Dnsd:
    return Dnsd(f"dnsd-{validation}", manifests=REPO / "examples" / "cluster.yaml", recursion="iterate",
                extra=("--root-hints", signed.root_hints, "--trust-anchor", signed.anchor_file,
                       "--dnssec-validation", validation))


def cached(args: argparse.Namespace, signed: Signed, queries: Path) -> dict[str, float]:
    results: dict[str, float] = {}
    reference: dict[str, tuple[int, bool]] = {}
    servers: list[tuple[str, object]] = [("unbound", Unbound(signed)), ("dnsd", dnsd(signed, "on")),
                                         ("dnsd-unvalidated", dnsd(signed, "off"))]
    for label, server in servers:
        server.start()  # type: ignore[attr-defined]
        try:
            port = server.port  # type: ignore[attr-defined]
            verdicts = {name: ask(port, name)[:2] for name in NAMES}
            if label == "unbound":
                reference = verdicts
                check(all(v == (0, True) for v in verdicts.values()), f"Unbound: {verdicts}")
            elif label == "dnsd":
                check(verdicts == reference, "dnsd and Unbound disagree")
            runs = [dnsperf(port, queries, args.seconds, dnssec=True).qps for _ in range(args.runs)]
            results[label] = statistics.median(runs)
            print(f"{label:18} cached DO=1: {results[label]:10,.0f} q/s  (runs {[round(r) for r in runs]})",
                  flush=True)
        finally:
            server.stop()  # type: ignore[attr-defined]
    return results


def cold(args: argparse.Namespace, signed: Signed) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    for label in ("unbound", "dnsd"):
        firsts: list[float] = []
        news: list[float] = []
        for run in range(args.cold):
            server: object = Unbound(signed) if label == "unbound" else dnsd(signed, "on")
            server.start()  # type: ignore[attr-defined]
            try:
                port = server.port  # type: ignore[attr-defined]
                # both start with the root: Unbound primes it (NS and the anchor's DNSKEY) on its own
                rcode, ad, _ = ask(port, ".", qtype="NS")
                check((rcode, ad) == (0, True), f"{label}: . NS {rcode} AD={ad}")
                rcode, ad, seconds = ask(port, "www.rsa.test")
                check((rcode, ad) == (0, True), f"{label}: www.rsa.test {rcode} AD={ad}")
                firsts.append(seconds)
                for i in range(10):
                    rcode, ad, seconds = ask(port, f"cold{run}-{i}.wild.nsec.test")
                    check((rcode, ad) == (0, True), f"{label}: wildcard {rcode} AD={ad}")
                    news.append(seconds)
            finally:
                server.stop()  # type: ignore[attr-defined]
        out[label] = (statistics.median(firsts), statistics.median(news))
        print(f"{label:18} cold chain of trust: {out[label][0] * 1000:7.1f} ms   new name, keys cached: "
              f"{out[label][1] * 1000:6.2f} ms", flush=True)
    return out


def keytrap() -> float:
    import dns.dnssec
    import dns.name
    import dns.rrset
    from cryptography.hazmat.primitives.asymmetric import ec

    from dnsd.dnssec import records
    from dnsd.recursor import validator
    from dnsd.recursor.message import to_wire

    private = ec.generate_private_key(ec.SECP256R1())
    key = dns.dnssec.make_dnskey(private.public_key(), 13, flags=257)
    rrset = dns.rrset.from_text("www.example.", 300, "IN", "A", "192.0.2.1")
    sig = records.rrsig(dns.dnssec.sign(rrset, private, dns.name.from_text("example."), key,
                                        lifetime=3600).to_wire())
    bad = records.rrsig(sig.rdata[: -len(sig.signature)] + bytes(len(sig.signature)))
    zone = validator.ZoneKeys(to_wire("example"), validator.SECURE,
                              tuple((sig.key_tag, records.dnskey(key.to_wire())) for _ in range(50)))
    v = validator.Validator([], [], None)  # type: ignore[arg-type]
    started = time.perf_counter()
    v._verify(to_wire("www.example"), 1, [b"\xc0\x00\x02\x01"], [bad] * 50, zone, validator.Work())
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cold", type=int, default=5)
    args = parser.parse_args()
    signed = Signed().start()
    try:
        queries = write_lines(signed.workdir / "queries.txt", (f"{n} A" for n in NAMES))
        results = cached(args, signed, queries)
        cold(args, signed)
    finally:
        signed.stop()
    seconds = keytrap()
    print(f"KeyTrap RRset (50 keys on one tag x 50 signatures): gave up after {seconds * 1000:.1f} ms")
    ratio = results["dnsd"] / results["unbound"]
    print(f"cached validated answers: dnsd {ratio:.2f}x Unbound (target >= 0.6); without validation "
          f"{results['dnsd-unvalidated'] / results['unbound']:.2f}x")
    return 0 if ratio >= 0.6 else 1


if __name__ == "__main__":
    sys.exit(main())
