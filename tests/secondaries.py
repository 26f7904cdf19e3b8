"""Real secondaries from Debian (Knot, NSD, BIND) on loopback, taking a zone from dnsd by AXFR/IXFR.

Each runs in its own temporary directory on a free port, configured with its own TSIG key (so that
dnsd's transfer log tells which secondary asked, `key=<name>`), dnsd as its primary, NOTIFY accepted
from 127.0.0.1 with that key, and nothing else: the refresh timer is the zone's SOA refresh (two
hours), so whatever reaches a secondary during a test came by NOTIFY. Start dnsd first with
`--notify 127.0.0.1:<port>=<key>` for each (`Secondary.port` is chosen up front), then the
secondaries. Every wait is bounded.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from tests.hierarchy import require
from tests.started_dnsd import free_port


def key_file(directory: Path, name: str, algorithm: str = "hmac-sha256") -> tuple[Path, str]:
    """A key file as `tsig-keygen` writes it (made by tsig-keygen itself); (path, base64 secret)."""
    text = subprocess.run([require("tsig-keygen"), "-a", algorithm, name], check=True,
                          capture_output=True, text=True).stdout
    path = directory / f"{name}.key"
    path.write_text(text)
    secret = text.split('secret "', 1)[1].split('"', 1)[0]
    base64.b64decode(secret, validate=True)
    return path, secret


@dataclass
class Secondary:
    """One secondary server process of the given kind ('knot', 'nsd' or 'bind')."""

    kind: str
    workdir: Path
    zone: str
    primary_port: int
    key_name: str
    secret: str
    port: int = field(default_factory=free_port)
    algorithm: str = "hmac-sha256"
    process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.kind}.log"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def start(self) -> Secondary:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / f"{self.kind}.conf"
        if self.kind == "knot":
            conf.write_text(self._knot())
            argv = [require("knotd"), "-c", str(conf)]
        elif self.kind == "nsd":
            conf.write_text(self._nsd())
            argv = [require("nsd"), "-d", "-c", str(conf)]
        else:
            conf.write_text(self._bind())
            argv = [require("named"), "-g", "-n", "1", "-c", str(conf)]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                            start_new_session=True)
        return self

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)

    def query(self, qname: str, rdtype: str = "AAAA") -> dns.message.Message:
        return dns.query.udp(dns.message.make_query(qname, rdtype), "127.0.0.1", port=self.port, timeout=1)

    def serial(self) -> int | None:
        """The SOA serial the secondary serves, None while it has no zone."""
        try:
            reply = self.query(self.zone, "SOA")
        except (dns.exception.Timeout, OSError):
            return None
        for rrset in reply.answer:
            if rrset.rdtype == dns.rdatatype.SOA:
                return int(rrset[0].serial)
        return None

    def addresses(self, qname: str) -> set[str]:
        try:
            reply = self.query(qname)
        except (dns.exception.Timeout, OSError):
            return set()
        if reply.rcode() != dns.rcode.NOERROR:
            return set()
        return {rd.to_text() for rrset in reply.answer if rrset.rdtype == dns.rdatatype.AAAA for rd in rrset}

    def wait_serial(self, serial: int, timeout: float = 30.0) -> float:
        """Seconds until the secondary serves `serial` (fails with the secondary's log otherwise)."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"{self.kind} exited with {self.process.returncode}:\n{self.log_text()}")
            if self.serial() == serial:
                return time.monotonic() - started
            time.sleep(0.02)
        raise AssertionError(f"{self.kind} did not reach serial {serial} in {timeout} s "
                             f"(has {self.serial()}):\n{self.log_text()[-4000:]}")

    # ---- configurations ------------------------------------------------------------------------

    def _knot(self) -> str:
        d = self.workdir
        return f"""server:
    rundir: "{d}"
    listen: 127.0.0.1@{self.port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
log:
  - target: stdout
    any: info
database:
    storage: "{d}"
key:
  - id: {self.key_name}
    algorithm: {self.algorithm}
    secret: {self.secret}
remote:
  - id: primary
    address: 127.0.0.1@{self.primary_port}
    key: {self.key_name}
acl:
  - id: notify_from_primary
    address: 127.0.0.1
    key: {self.key_name}
    action: notify
template:
  - id: default
    storage: "{d}"
    zonefile-sync: -1
    journal-content: changes
zone:
  - domain: {self.zone}
    master: primary
    acl: notify_from_primary
"""

    def _nsd(self) -> str:
        d = self.workdir
        return f"""server:
    ip-address: 127.0.0.1@{self.port}
    port: {self.port}
    do-ip6: no
    server-count: 1
    username: ""
    chroot: ""
    zonesdir: "{d}"
    database: ""
    pidfile: "{d}/nsd.pid"
    xfrdfile: "{d}/xfrd.state"
    xfrdir: "{d}"
    zonelistfile: "{d}/zone.list"
    verbosity: 2
    logfile: "{d}/nsd.log"
    hide-version: yes
remote-control:
    control-enable: no
key:
    name: "{self.key_name}"
    algorithm: {self.algorithm}
    secret: "{self.secret}"
zone:
    name: "{self.zone}"
    zonefile: "{d}/{self.zone}.zone"
    request-xfr: 127.0.0.1@{self.primary_port} {self.key_name}
    allow-notify: 127.0.0.1 {self.key_name}
"""

    def _bind(self) -> str:
        d = self.workdir
        return f"""options {{
    directory "{d}";
    listen-on port {self.port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    recursion no;
    notify no;
    dnssec-validation no;
}};
controls {{ }};
key "{self.key_name}" {{ algorithm {self.algorithm}; secret "{self.secret}"; }};
zone "{self.zone}" {{
    type secondary;
    primaries port {self.primary_port} {{ 127.0.0.1 key {self.key_name}; }};
    file "{d}/{self.zone}.db";
    allow-notify {{ 127.0.0.1; }};
}};
"""


def manifests(services: dict[str, str]) -> str:
    """A manifests file with one ClusterIP Service per (name, IPv6 address)."""
    items = []
    for name, address in services.items():
        items.append(f"""- apiVersion: v1
  kind: Service
  metadata:
    name: {name}
    namespace: default
  spec:
    type: ClusterIP
    clusterIP: "{address}"
    clusterIPs: ["{address}"]
    ports:
    - name: http
      port: 80
      protocol: TCP
""")
    return "apiVersion: v1\nkind: List\nitems:\n" + "".join(items)


def write_manifests(path: Path, services: dict[str, str]) -> None:
    """Replace the file atomically and move its mtime on by at least a second (a new file version)."""
    previous = path.stat().st_mtime if path.exists() else 0.0
    tmp = path.with_suffix(".tmp")
    tmp.write_text(manifests(services))
    stamp = max(time.time(), previous + 1.0)
    os.utime(tmp, (stamp, stamp))
    os.replace(tmp, path)
