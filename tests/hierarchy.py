"""A small DNS hierarchy on loopback for recursion tests: Knot for the zones, Unbound as a reference.

Every server listens on port 53 of its own address in 127.53.0.0/16 (the range reserved for these
tests), so the hierarchy is a real one: the root refers to the TLDs, the TLDs to the leaf zones,
and nothing outside 127.53.0.0/16 is ever named. Each zone holds the DNS64 edge cases the tests
need (see ZONES). `Hierarchy.start()` writes the zone files and configurations into a temporary
directory and starts one `knotd` per server (one knotd per address, because a single knotd would
answer every zone on every address and there would be no referrals to follow) plus two Unbounds:
one with `module-config: "dns64 iterator"` for comparisons, one plain iterator used as the upstream
of forward-mode tests. Requires root (port 53) and the Debian packages knot and unbound.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype

ROOT = "127.53.0.1"
TLD_TEST = "127.53.0.2"
TLD_ALT = "127.53.0.3"
ARPA = "127.53.0.4"
DNS64_TEST = "127.53.0.10"
SOA60_TEST = "127.53.0.11"
GLUELESS_TEST = "127.53.0.12"
UNBOUND_DNS64 = "127.53.0.53"
UNBOUND_PLAIN = "127.53.0.54"

ROOT_HINTS = f""". 3600000 NS a.root-servers.test.
a.root-servers.test. 3600000 A {ROOT}
"""

_BIG = "\n".join(f"big 300 A 1.2.4.{i}" for i in range(1, 101))

#: server address -> {zone: zone file body}
ZONES: dict[str, dict[str, str]] = {
    ROOT: {".": f"""
$TTL 86400
. SOA a.root-servers.test. hostmaster.test. 1 1800 900 604800 86400
. NS a.root-servers.test.
test. NS ns1.nic.test.
ns1.nic.test. A {TLD_TEST}
a.root-servers.test. A {ROOT}
alt. NS ns1.nic.alt.
ns1.nic.alt. A {TLD_ALT}
arpa. NS ns1.arpa.
ns1.arpa. A {ARPA}
"""},
    TLD_TEST: {"test.": f"""
$TTL 3600
@ SOA ns1.nic.test. hostmaster.test. 1 1800 900 604800 3600
@ NS ns1.nic.test.
ns1.nic @ A {TLD_TEST}
a.root-servers A {ROOT}
dns64 NS ns1.dns64.test.
ns1.dns64 A {DNS64_TEST}
soa60 NS ns1.soa60.test.
ns1.soa60 A {SOA60_TEST}
glueless NS ns.glueless.alt.
""".replace("ns1.nic @ A", "ns1.nic A")},
    TLD_ALT: {"alt.": f"""
$TTL 3600
@ SOA ns1.nic.alt. hostmaster.alt. 1 1800 900 604800 3600
@ NS ns1.nic.alt.
ns1.nic A {TLD_ALT}
ns.glueless A {GLUELESS_TEST}
c2 CNAME c3.dns64.test.
a-only 600 A 1.2.3.20
dn DNAME dns64.test.
"""},
    ARPA: {"arpa.": f"""
$TTL 3600
@ SOA ns1.arpa. hostmaster.arpa. 1 1800 900 604800 3600
@ NS ns1.arpa.
ns1 A {ARPA}
; a DNS64 must answer ipv4only.arpa itself (RFC 8880): these records must never be seen
ipv4only A 6.6.6.6
ipv4only AAAA 2001:db8:666::6
""", "in-addr.arpa.": """
$TTL 3600
@ SOA ns1.arpa. hostmaster.arpa. 1 1800 900 604800 3600
@ NS ns1.arpa.
4.3.2.1 PTR a-only.dns64.test.
"""},
    DNS64_TEST: {"dns64.test.": f"""
$TTL 3600
@ 3600 SOA ns1.dns64.test. hostmaster.dns64.test. 1 1800 900 604800 300
@ NS ns1.dns64.test.
ns1 A {DNS64_TEST}
a-only 900 A 1.2.3.4
both A 1.2.3.5
both AAAA 2001:db8::5
mapped A 1.2.3.6
mapped AAAA ::ffff:1.2.3.6
excluded A 1.2.3.7
excluded AAAA 2001:db8:bad::7
private A 10.1.2.3
mixed A 10.1.2.4
mixed A 1.2.3.8
shortttl 30 A 1.2.3.9
nodata TXT "no addresses here"
c1 CNAME c2.alt.
c3 CNAME a-only
cname-nx CNAME nothere.alt.
{_BIG}
"""},
    SOA60_TEST: {"soa60.test.": f"""
$TTL 3600
@ 3600 SOA ns1.soa60.test. hostmaster.soa60.test. 1 1800 900 604800 60
@ NS ns1.soa60.test.
ns1 A {SOA60_TEST}
longttl 3600 A 1.2.3.10
"""},
    GLUELESS_TEST: {"glueless.test.": """
$TTL 3600
@ SOA ns.glueless.alt. hostmaster.glueless.test. 1 1800 900 604800 300
@ NS ns.glueless.alt.
www A 1.2.3.11
"""},
}


class MissingTool(RuntimeError):
    pass


#: Debian packages of the tools whose names differ from their package's.
PACKAGES = {"knotd": "knot", "taskset": "util-linux", "named": "bind9", "tsig-keygen": "bind9"}


def require(tool: str) -> str:
    """The path of a Debian tool (sbin first: root's PATH is not always everyone's), or a clear error."""
    for directory in ("/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        path = Path(directory) / tool
        if path.exists():
            return str(path)
    found = shutil.which(tool)
    if not found:
        raise MissingTool(f"{tool} not found: install the Debian package {PACKAGES.get(tool, tool)} "
                          "(scripts/test installs it)")
    return found


def _knot_conf(workdir: Path, address: str, zones: dict[str, str]) -> str:
    zone_lines = []
    for name in zones:
        file_name = "root.zone" if name == "." else f"{name.rstrip('.')}.zone"
        zone_lines.append(f"  - domain: \"{name}\"\n    file: \"{workdir / file_name}\"")
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
template:
  - id: default
    storage: "{workdir}"
    journal-content: none
    zonefile-sync: -1
    semantic-checks: off
zone:
""" + "\n".join(zone_lines) + "\n"


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
remote-control:
    control-enable: no
"""


def _wait_udp(address: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    query = dns.message.make_query(".", dns.rdatatype.SOA)
    while True:
        try:
            dns.query.udp(query, address, timeout=0.3)
            return
        except (OSError, dns.exception.Timeout):
            if time.monotonic() > deadline:
                raise RuntimeError(f"DNS server on {address} did not start") from None
            time.sleep(0.05)


@dataclass
class Hierarchy:
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="dnsd-hier-")))
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def root_hints(self) -> str:
        return str(self.workdir / "root.hints")

    def start(self, unbound: bool = True) -> Hierarchy:
        if os.geteuid() != 0:
            raise MissingTool("the loopback hierarchy binds port 53: run the tests as root")
        knotd = require("knotd")
        (self.workdir / "root.hints").write_text(ROOT_HINTS)
        try:
            for address, zones in ZONES.items():
                directory = self.workdir / address
                directory.mkdir()
                for name, body in zones.items():
                    file_name = "root.zone" if name == "." else f"{name.rstrip('.')}.zone"
                    (directory / file_name).write_text(f"$ORIGIN {name}\n{body}")
                conf = directory / "knot.conf"
                conf.write_text(_knot_conf(directory, address, zones))
                self.processes.append(subprocess.Popen(
                    [knotd, "-c", str(conf)], stdout=subprocess.DEVNULL,
                    stderr=open(directory / "knot.log", "wb")))  # noqa: SIM115
            if unbound:
                binary = require("unbound")
                for address, modules in ((UNBOUND_DNS64, "dns64 iterator"),
                                         (UNBOUND_PLAIN, "iterator")):
                    directory = self.workdir / address
                    directory.mkdir()
                    (directory / "root.hints").write_text(ROOT_HINTS)
                    conf = directory / "unbound.conf"
                    conf.write_text(_unbound_conf(directory, address, modules))
                    self.processes.append(subprocess.Popen(
                        [binary, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                        stderr=open(directory / "stderr.log", "wb")))  # noqa: SIM115
            for address in ZONES:
                _wait_udp(address)
            if unbound:
                _wait_udp(UNBOUND_DNS64)
                _wait_udp(UNBOUND_PLAIN)
        except BaseException:
            self.stop()
            raise
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


def free_loopback(address: str) -> bool:
    """Whether port 53 on `address` is free (a previous run left nothing behind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((address, 53))
            return True
        except OSError:
            return False
