"""A DNSSEC-signed DNS hierarchy on loopback (127.54.0.0/16, port 53) for the validator's tests.

Knot signs the zones (`dnssec-signing: on`, one key per zone, the algorithm and NSEC/NSEC3 flavour
each case needs); the zones that must be broken on purpose (a corrupted signature, signatures that
expired in 2020) are signed with BIND's `dnssec-signzone` and served by a Knot that does not sign.
DS records chain each zone to its parent up to a local root whose key is the trust anchor
(`Signed.anchor_file`), so the hierarchy is validated end to end exactly like the real one.

Because a parent's DS needs the child's key, zones start bottom-up: the leaves, then `test.`, then
the root, each parent's zone file written once its children's DNSKEYs can be read back. Every zone
has its own address, so that DS queries are answered by the parent's server as on the Internet.
A validating Unbound (`UNBOUND`) on the same hierarchy is the reference. Requires root (port 53) and
the Debian packages knot, bind9-utils (dnssec-keygen, dnssec-signzone) and unbound.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import dns.dnssec
import dns.message
import dns.name
import dns.query
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone

from tests.hierarchy import MissingTool, require

NET = "127.54.0."
ROOT = NET + "1"
TLD = NET + "2"
UNBOUND = NET + "53"
UNBOUND_DNS64 = NET + "54"

#: zone -> (address, Knot policy id or "presigned:<how>" or "unsigned", zone body without SOA/NS)
ZONES: dict[str, tuple[str, str, str]] = {
    "nsec.test.": (NET + "10", "ecdsa-nsec", """
www A 192.0.2.10
a-only A 1.2.3.11
mapped-only AAAA ::ffff:1.2.3.8
txt TXT "only text"
*.wild A 192.0.2.12
cname CNAME www.insecure.test.
unsigned NS ns.unsigned
ns.unsigned A 127.54.0.17
"""),
    "nsec3.test.": (NET + "11", "ecdsa-nsec3", """
www A 192.0.2.20
*.wild A 192.0.2.21
"""),
    "optout.test.": (NET + "12", "ecdsa-optout", """
www A 192.0.2.30
unsigned NS ns.unsigned
ns.unsigned A 127.54.0.21
"""),
    "rsa.test.": (NET + "13", "rsa", "www A 192.0.2.40\n"),
    "ed.test.": (NET + "14", "ed25519", "www A 192.0.2.50\n"),
    "iter.test.": (NET + "15", "ecdsa-iter", "www A 192.0.2.60\n"),
    "insecure.test.": (NET + "16", "unsigned", "www A 1.2.3.70\n"),
    "unsigned.nsec.test.": (NET + "17", "unsigned", "www A 192.0.2.80\n"),
    "bogus.test.": (NET + "18", "presigned:corrupt",
                    "www A 192.0.2.90\na-only A 192.0.2.91\nb-only A 1.2.3.92\n"),
    "expired.test.": (NET + "19", "presigned:expired", "www A 192.0.2.100\n"),
    "nokey.test.": (NET + "20", "ecdsa-nsec", "www A 192.0.2.110\n"),
    "unsigned.optout.test.": (NET + "21", "unsigned", "www A 192.0.2.120\n"),
}

#: zones whose DS in `test.` deliberately matches no key
WRONG_DS = {"nokey.test."}

POLICIES = """policy:
  - id: ecdsa-nsec
    algorithm: ecdsap256sha256
    single-type-signing: on
  - id: ecdsa-nsec3
    algorithm: ecdsap256sha256
    single-type-signing: on
    nsec3: on
    nsec3-iterations: 0
    nsec3-salt-length: 0
  - id: ecdsa-optout
    algorithm: ecdsap256sha256
    single-type-signing: on
    nsec3: on
    nsec3-iterations: 0
    nsec3-salt-length: 0
    nsec3-opt-out: on
  - id: ecdsa-iter
    algorithm: ecdsap256sha256
    single-type-signing: on
    nsec3: on
    nsec3-iterations: 200
    nsec3-salt-length: 8
  - id: rsa
    algorithm: rsasha256
    single-type-signing: on
    ksk-size: 2048
  - id: ed25519
    algorithm: ed25519
    single-type-signing: on
"""


def _soa(zone: str, address: str) -> str:
    return f"""$ORIGIN {zone}
$TTL 3600
@ SOA ns.{zone} hostmaster.{zone} 1 1800 900 604800 300
@ NS ns.{zone}
ns.{zone} A {address}
"""


def _knot_conf(workdir: Path, address: str, zone: str, policy: str | None) -> str:
    signing = f"    dnssec-signing: on\n    dnssec-policy: {policy}\n" if policy else ""
    return f"""server:
    rundir: "{workdir}"
    listen: {address}@53
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
log:
  - target: stderr
    any: warning
database:
    storage: "{workdir}"
    kasp-db: "{workdir}/keys"
{POLICIES}template:
  - id: default
    storage: "{workdir}"
    journal-content: none
    zonefile-sync: -1
    semantic-checks: off
zone:
  - domain: "{zone}"
    file: "{workdir}/zone"
{signing}"""


def _unbound_conf(workdir: Path, address: str, modules: str) -> str:
    return f"""server:
    interface: {address}
    port: 53
    do-ip6: no
    do-daemonize: no
    chroot: ""
    username: ""
    directory: "{workdir}"
    pidfile: "{workdir}/unbound.pid"
    use-syslog: no
    logfile: "{workdir}/unbound.log"
    verbosity: 1
    root-hints: "{workdir}/root.hints"
    trust-anchor-file: "{workdir}/anchor"
    do-not-query-localhost: no
    access-control: 127.0.0.0/8 allow
    module-config: "{modules}"
    dns64-prefix: 64:ff9b::/96
    qname-minimisation: no
    num-threads: 1
    so-reuseport: no
    prefetch: no
    target-fetch-policy: "0 0 0 0 0"
    edns-buffer-size: 1232
    minimal-responses: yes
    local-zone: "test." nodefault
    outgoing-range: 64
    outgoing-port-permit: 32768-60999
    val-log-level: 2
remote-control:
    control-enable: no
"""


def _dnskeys(address: str, zone: str, timeout: float = 20.0) -> dns.rrset.RRset:
    """The zone's DNSKEY RRset once its server serves it (Knot signs in the background at load)."""
    deadline = time.monotonic() + timeout
    query = dns.message.make_query(zone, dns.rdatatype.DNSKEY, want_dnssec=True)
    while True:
        try:
            reply = dns.query.tcp(query, address, timeout=1)
            for rrset in reply.answer:
                if rrset.rdtype == dns.rdatatype.DNSKEY:
                    return rrset
        except (OSError, dns.exception.DNSException):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{zone} on {address} never served its DNSKEY")
        time.sleep(0.1)


def _wait_soa(address: str, zone: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    query = dns.message.make_query(zone, dns.rdatatype.SOA)
    while True:
        try:
            reply = dns.query.udp(query, address, timeout=0.5)
            if reply.answer:
                return
        except (OSError, dns.exception.DNSException):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{zone} on {address} did not start")
        time.sleep(0.05)


def _ds_lines(zone: str, keys: dns.rrset.RRset, wrong: bool = False) -> str:
    out = []
    for key in keys:
        if key.flags & 0x0001:  # SEP: the KSK/CSK
            ds = dns.dnssec.make_ds(zone, key, "SHA256")
            digest = ds.digest.hex()
            if wrong:
                digest = ("00" * len(ds.digest))[:-2] + "01"
            out.append(f"{zone} DS {ds.key_tag} {ds.algorithm} {ds.digest_type} {digest}")
    return "\n".join(out) + "\n"


#: Victim zones for the aggressive NSEC tests and benchmark (`Signed(extra=VICTIMS, backends=...)`):
#: the delegation points at the first address, where the test runs a query-counting proxy
#: (tests/counting_proxy.py) in front of the Knot at the backend address.
VICTIMS: dict[str, tuple[str, str, str]] = {
    "victim-nsec.test.": (NET + "30", "ecdsa-nsec", "www A 192.0.2.130\n"),
    "victim-nsec3.test.": (NET + "31", "ecdsa-nsec3", "www A 192.0.2.131\n"),
}
VICTIM_BACKENDS = {"victim-nsec.test.": NET + "130", "victim-nsec3.test.": NET + "131"}


@dataclass
class Signed:
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="dnsd-signed-")))
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    #: zones served besides ZONES (same shape), and zone -> address where its Knot listens when that
    #: is not the delegated address (something else, e.g. a counting proxy, serves that one)
    extra: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    backends: dict[str, str] = field(default_factory=dict)

    @property
    def root_hints(self) -> str:
        return str(self.workdir / "root.hints")

    @property
    def anchor_file(self) -> str:
        return str(self.workdir / "anchor")

    def _knot(self, address: str, zone: str, body: str, policy: str | None) -> None:
        directory = self.workdir / address
        directory.mkdir(exist_ok=True)
        (directory / "zone").write_text(body)
        conf = directory / "knot.conf"
        conf.write_text(_knot_conf(directory, address, zone, policy))
        self.processes.append(subprocess.Popen(
            [require("knotd"), "-c", str(conf)], stdout=subprocess.DEVNULL,
            stderr=open(directory / "knot.log", "wb")))  # noqa: SIM115

    def _presign(self, zone: str, address: str, body: str, how: str) -> str:
        """Sign with dnssec-signzone, then break it as `how` says; returns the signed zone text."""
        directory = self.workdir / f"{address}-sign"
        directory.mkdir()
        unsigned = directory / "zone"
        unsigned.write_text(body)
        subprocess.run([require("dnssec-keygen"), "-q", "-K", str(directory), "-a", "ECDSAP256SHA256",
                        "-f", "KSK", "-n", "ZONE", zone], check=True, capture_output=True)
        times = ["-s", "20200101000000", "-e", "20200201000000"] if how == "expired" else []
        subprocess.run([require("dnssec-signzone"), "-q", "-P", "-S", "-z", "-K", str(directory), "-o", zone,
                        "-f", str(directory / "signed"), *times, str(unsigned)],
                       check=True, capture_output=True, cwd=directory)
        signed = dns.zone.from_file(str(directory / "signed"), origin=zone, relativize=False)
        if how == "corrupt":
            # www and a-only: a broken signature over the A RRset; b-only: over its NSEC (so that
            # its A is fine but any denial at it is bogus)
            for owner, covered in (("www", dns.rdatatype.A), ("a-only", dns.rdatatype.A),
                                   ("b-only", dns.rdatatype.NSEC)):
                node = signed.get_node(dns.name.from_text(owner, dns.name.from_text(zone)))
                assert node is not None
                rrsigs = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.RRSIG, covered)
                assert rrsigs is not None
                broken = [r.replace(signature=bytes([r.signature[0] ^ 0xFF]) + r.signature[1:]) for r in rrsigs]
                rrsigs.clear()
                for r in broken:
                    rrsigs.add(r)
        return signed.to_text(relativize=False)

    def start(self) -> Signed:
        if os.geteuid() != 0:
            raise MissingTool("the signed hierarchy binds port 53: run the tests as root")
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> Signed:
        # leaves first: the zones directly under test. and those one level further down
        zones = {**ZONES, **self.extra}
        order = sorted(zones, key=lambda z: -z.count("."))
        ds: dict[str, str] = {}
        for zone in order:
            public, policy, records = zones[zone]
            body = _soa(zone, public) + records
            address = self.backends.get(zone, public)
            # the DS of delegated children (only nsec.test. and optout.test. have unsigned ones)
            body += "".join(ds.get(child, "") for child in zones if child.endswith("." + zone))
            if policy == "unsigned":
                self._knot(address, zone, body, None)
                _wait_soa(address, zone)
            elif policy.startswith("presigned:"):
                signed = self._presign(zone, address, body, policy.split(":", 1)[1])
                self._knot(address, zone, signed, None)
                ds[zone] = _ds_lines(zone, _dnskeys(address, zone))
            else:
                self._knot(address, zone, body, policy)
                ds[zone] = _ds_lines(zone, _dnskeys(address, zone), wrong=zone in WRONG_DS)
        tld = _soa("test.", TLD) + "".join(f"{z.split('.')[0]}.test. NS ns.{z}\nns.{z} A {zones[z][0]}\n"
                                           for z in zones if z.count(".") == 2)
        tld += "".join(ds[z] for z in zones if z.count(".") == 2 and z in ds)
        self._knot(TLD, "test.", tld, "ecdsa-nsec3")
        tld_keys = _dnskeys(TLD, "test.")
        root = f"""$ORIGIN .
$TTL 86400
. SOA a.root-servers.test. hostmaster.test. 1 1800 900 604800 86400
. NS a.root-servers.test.
a.root-servers.test. A {ROOT}
test. NS ns.test.
ns.test. A {TLD}
""" + _ds_lines("test.", tld_keys)
        self._knot(ROOT, ".", root, "ecdsa-nsec")
        root_keys = _dnskeys(ROOT, ".")
        anchor = "".join(f". 3600 IN DNSKEY {k.to_text()}\n" for k in root_keys if k.flags & 0x0001)
        (self.workdir / "anchor").write_text(anchor)
        hints = f". 3600000 NS a.root-servers.test.\na.root-servers.test. 3600000 A {ROOT}\n"
        (self.workdir / "root.hints").write_text(hints)
        binary = require("unbound")
        for address, modules in ((UNBOUND, "validator iterator"), (UNBOUND_DNS64, "dns64 validator iterator")):
            directory = self.workdir / address
            directory.mkdir()
            (directory / "root.hints").write_text(hints)
            (directory / "anchor").write_text(anchor)
            conf = directory / "unbound.conf"
            conf.write_text(_unbound_conf(directory, address, modules))
            self.processes.append(subprocess.Popen(
                [binary, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                stderr=open(directory / "stderr.log", "wb")))  # noqa: SIM115
            _wait_soa(address, "test.")
        return self

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)


if __name__ == "__main__":  # start it by hand for experiments: python -m tests.signed_hierarchy
    import signal
    import sys

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so that `kill` stops the servers too
    h = Signed().start()
    print("root hints", h.root_hints, "anchor", h.anchor_file, "workdir", h.workdir)
    try:
        while True:
            time.sleep(3600)
    finally:
        h.stop()
