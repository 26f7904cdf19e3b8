"""Shared helpers for the benchmarks: test data, reference servers, dnsd, pinning, dnsperf.

The benchmarks compare dnsd with the servers operators already trust, on the same data and the same
loopback addresses, so that a figure means something only next to its reference:

- `Cluster` generates N ClusterIP services (IPv6 AAAA, one named port, spread over namespaces) plus a
  few headless services with two named endpoints each, three ways: as a manifests file for dnsd
  (`kind: List`, as `kubectl get ns,svc,endpointslices -A -o yaml` prints it), as the equivalent zone
  file for Knot and NSD (the same owner names, records, TTLs, SOA and NS), and as dnsperf query files.
- `Upstream` is the "Internet" of the recursion benchmarks: a zone of A-only names (long TTLs, so
  that a warmed cache keeps them for the whole run) served by a local Knot, which dnsd (forward mode)
  and Unbound (forward-zone) both ask.
- `Knot`, `Nsd`, `Unbound` and `Dnsd` start one server each with a generated configuration in a
  temporary directory, unprivileged, on 127.0.0.1 and a free port, and stop it again. Each server is
  given one core (`SERVER_CPUS`, core 0) and one worker (Knot `udp-workers: 1`, NSD `server-count: 1`,
  Unbound `num-threads: 1`, dnsd `--workers 1` unless asked otherwise): every thread is pinned with
  `taskset -a -p` after start-up, because Knot sets its own thread affinities.
- `dnsperf` runs the load generator pinned to the other core (`LOAD_CPUS`, core 1) and parses its
  statistics; with `verbose=True` it also reads the latency of every answered query from dnsperf's
  `-v` lines (`> NOERROR name TYPE 0.000123`), which is how the benchmarks get percentiles.

Everything listens on 127.0.0.1 only; load is bounded by each caller's count and duration.
Run `python bench/lab.py` for a smoke test: it starts every server on a tiny cluster and asks each once.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.hierarchy import require  # noqa: E402  # the tests' tool lookup, with its package hints

PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable
RESULTS = REPO / "bench" / "results"

ZONE = "c2.k8s.ooo"
UPSTREAM_ZONE = "ext.bench"
NS_NAME = f"ns1.{ZONE}"
NS_ADDRESS = "127.0.0.1"
HOST = "127.0.0.1"
DNS64_PREFIX = "64:ff9b::/96"

#: The server under test runs here, alone; the load generator runs on LOAD_CPUS.
SERVER_CPUS = "0"
LOAD_CPUS = "1"

MB = 1024 * 1024


# ---- small utilities ----------------------------------------------------------------------------


def free_port(host: str = HOST) -> int:
    """A port free for both UDP and TCP on `host` (DNS servers bind both)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port on loopback")


def children(pid: int) -> list[int]:
    """Every descendant process of `pid` (NSD forks its server and xfrd processes)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                kids = (task / "children").read_text().split()
            except OSError:
                continue
            for kid in map(int, kids):
                if kid not in found:
                    found.append(kid)
                    todo.append(kid)
    return found


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def rss_bytes(pid: int) -> int:
    """VmRSS of one process."""
    return _status_kb(pid, "VmRSS")


def tree_rss_bytes(pid: int) -> int:
    """VmRSS summed over a process and its descendants (pages shared after fork count once per process)."""
    return sum(rss_bytes(p) for p in (pid, *children(pid)))


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process and its descendants, all threads included."""
    total = 0
    for process in (pid, *children(pid)):
        try:
            fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def pin(pid: int, cpus: str) -> None:
    """Pin every thread of `pid` and of its descendants to `cpus` (a taskset list such as "0")."""
    taskset = require("taskset")
    for process in (pid, *children(pid)):
        subprocess.run([taskset, "-a", "-p", "-c", cpus, str(process)], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)


def affinities(pid: int) -> set[str]:
    """The distinct Cpus_allowed_list values of every thread of `pid` and its descendants."""
    seen: set[str] = set()
    for process in (pid, *children(pid)):
        for task in Path(f"/proc/{process}/task").glob("*"):
            try:
                for line in (task / "status").read_text().splitlines():
                    if line.startswith("Cpus_allowed_list:"):
                        seen.add(line.split()[1])
            except OSError:
                pass
    return seen


def machine() -> str:
    """CPU model and core count, for the header of every report."""
    model = "unknown CPU"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores (nproc), Linux {os.uname().release}"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (nearest rank) of values; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def median(values: Iterable[float]) -> float:
    data = [v for v in values if v == v]  # drop NaN
    return statistics.median(data) if data else float("nan")


def tool_versions() -> str:
    """One line naming the versions of the reference servers and dnsperf."""
    parts = []
    for label, argv in (("knot", ["knotd", "-V"]), ("nsd", ["nsd", "-v"]), ("unbound", ["unbound", "-V"]),
                        ("dnsperf", ["dnsperf", "-h"])):
        try:
            done = subprocess.run([require(argv[0]), *argv[1:]], capture_output=True, text=True, check=False)
        except RuntimeError:
            parts.append(f"{label} missing")
            continue
        match = re.search(r"[Vv]ersion:? (\d+\.\d+\.\d+)", done.stdout + done.stderr)
        parts.append(f"{label} {match.group(1) if match else '?'}")
    return ", ".join(parts)


# ---- test data ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cluster:
    """N ClusterIP services (AAAA, port `http`) in `namespaces` namespaces, plus `headless` headless ones.

    Service i is `svc<i>.ns<i % namespaces>.svc.<zone>` with the address fd00:10:96:<g>::<i> for
    generation g (churn bumps a service's generation). Headless service j is
    `hl<j>.ns<j % namespaces>.svc.<zone>` with endpoints `pod-0` and `pod-1` (port `http` 8080).
    """

    services: int
    namespaces: int = 50
    headless: int = -1  # -1: max(3, services // 1000)
    ttl: int = 30
    zone: str = ZONE

    @property
    def headless_count(self) -> int:
        return self.headless if self.headless >= 0 else max(3, self.services // 1000)

    def service_name(self, i: int) -> str:
        return f"svc{i}.ns{i % self.namespaces}.svc.{self.zone}"

    def headless_name(self, j: int) -> str:
        return f"hl{j}.ns{j % self.namespaces}.svc.{self.zone}"

    @staticmethod
    def cluster_ip(i: int, generation: int = 0) -> str:
        return str(ipaddress.IPv6Address(f"fd00:10:96:{generation:x}::{i >> 16:x}:{i & 0xFFFF:x}"))

    @staticmethod
    def endpoint_ip(j: int, k: int) -> str:
        return str(ipaddress.IPv6Address(f"fd00:10:244:{j >> 16:x}:{j & 0xFFFF:x}::{k + 1:x}"))

    @property
    def last_name(self) -> str:
        """The name dnsd serves last from the file (used to tell that loading finished)."""
        return self.service_name(self.services - 1)

    def manifests(self, generations: Mapping[int, int] | None = None) -> str:
        """The manifests file: Namespaces, Services, EndpointSlices, as one `kind: List` in kubectl's YAML."""
        generations = generations or {}
        out = ["apiVersion: v1", "kind: List", "metadata:", '  resourceVersion: ""', "items:"]
        for n in range(self.namespaces):
            out += ["- apiVersion: v1", "  kind: Namespace", "  metadata:", f"    name: ns{n}"]
        for i in range(self.services):
            address = self.cluster_ip(i, generations.get(i, 0))
            out += [
                "- apiVersion: v1",
                "  kind: Service",
                "  metadata:",
                f"    name: svc{i}",
                f"    namespace: ns{i % self.namespaces}",
                "  spec:",
                "    type: ClusterIP",
                "    ipFamilies: [IPv6]",
                "    ipFamilyPolicy: SingleStack",
                f'    clusterIP: "{address}"',
                f'    clusterIPs: ["{address}"]',
                "    ports:",
                "    - name: http",
                "      port: 80",
                "      protocol: TCP",
                "      targetPort: 8080",
            ]
        for j in range(self.headless_count):
            ns = f"ns{j % self.namespaces}"
            out += [
                "- apiVersion: v1",
                "  kind: Service",
                "  metadata:",
                f"    name: hl{j}",
                f"    namespace: {ns}",
                "  spec:",
                "    clusterIP: None",
                "    clusterIPs: [None]",
                "    ipFamilies: [IPv6]",
                "    ports:",
                "    - name: http",
                "      port: 8080",
                "      protocol: TCP",
                "- apiVersion: discovery.k8s.io/v1",
                "  kind: EndpointSlice",
                "  metadata:",
                f"    name: hl{j}-abcde",
                f"    namespace: {ns}",
                "    labels:",
                f"      kubernetes.io/service-name: hl{j}",
                "  addressType: IPv6",
                "  endpoints:",
            ]
            for k in range(2):
                out += [
                    f'  - addresses: ["{self.endpoint_ip(j, k)}"]',
                    f"    hostname: pod-{k}",
                    "    conditions: {ready: true}",
                ]
            out += ["  ports:", "  - name: http", "    port: 8080", "    protocol: TCP"]
        return "\n".join(out) + "\n"

    def zone_file(self, serial: int = 1, negative_ttl: int = 5) -> str:
        """The same names and records as a master file for Knot and NSD."""
        z = self.zone + "."
        out = [
            f"$ORIGIN {z}",
            f"$TTL {self.ttl}",
            f"@ {self.ttl} IN SOA {NS_NAME}. hostmaster.{z} {serial} 3600 600 86400 {negative_ttl}",
            f"@ {self.ttl} IN NS {NS_NAME}.",
            f"{NS_NAME}. {self.ttl} IN A {NS_ADDRESS}",
            f'dns-version.{z} {self.ttl} IN TXT "1.1.0"',
        ]
        for i in range(self.services):
            name = self.service_name(i) + "."
            out.append(f"{name} AAAA {self.cluster_ip(i)}")
            out.append(f"_http._tcp.{name} SRV 0 100 80 {name}")
        for j in range(self.headless_count):
            name = self.headless_name(j) + "."
            for k in range(2):
                out.append(f"{name} AAAA {self.endpoint_ip(j, k)}")
                out.append(f"pod-{k}.{name} AAAA {self.endpoint_ip(j, k)}")
                out.append(f"_http._tcp.{name} SRV 0 100 8080 pod-{k}.{name}")
        return "\n".join(out) + "\n"

    def zone_queries(self, count: int | None = None, seed: int = 1) -> list[str]:
        """dnsperf lines ("name TYPE") mixing what a zone sees, shuffled.

        80 % AAAA of ClusterIP services, 5 % A of them (NODATA: the services are IPv6-only), 5 % SRV,
        5 % AAAA of headless services and their endpoint hostnames, 5 % names that do not exist (NXDOMAIN).
        """
        rng = random.Random(seed)
        total = count or max(1000, self.services)
        lines = []
        for k in range(total):
            roll = k % 20
            i = rng.randrange(self.services)
            if roll < 16:
                lines.append(f"{self.service_name(i)} AAAA")
            elif roll == 16:
                lines.append(f"{self.service_name(i)} A")
            elif roll == 17:
                lines.append(f"_http._tcp.{self.service_name(i)} SRV")
            elif roll == 18:
                j = rng.randrange(self.headless_count)
                lines.append(f"{'pod-0.' if k % 40 < 20 else ''}{self.headless_name(j)} AAAA")
            else:
                lines.append(f"nosuch{i}.ns{i % self.namespaces}.svc.{self.zone} AAAA")
        rng.shuffle(lines)
        return lines

    def flood_queries(self, random_names: int = 300_000, seed: int = 3) -> list[str]:
        """A random-subdomain flood: every other line a name never seen, the others `zone_queries`.

        The unseen names are `r<hex>.ns<k>.svc.<zone> AAAA` under existing namespaces, `random_names`
        of them (each once per pass over the file: more than any answer store could keep), so that
        every one is NXDOMAIN and none is asked twice before dnsperf wraps around the file.
        """
        rng = random.Random(seed)
        known = self.zone_queries(random_names, seed=seed + 1)
        lines = []
        for k in range(random_names):
            lines.append(f"r{rng.getrandbits(48):012x}.ns{rng.randrange(self.namespaces)}.svc.{self.zone} AAAA")
            lines.append(known[k])
        return lines


@dataclass(frozen=True)
class Upstream:
    """The zone behind the recursion benchmarks: `names` A-only hosts with a long TTL.

    Host i is `h<i>.ext.bench` with the global address 1.<i>.<i>.<i> (bytes of i): the well-known
    DNS64 prefix may be used for it (RFC 6052 3.1). The SOA minimum equals the TTL, so that the negative
    AAAA answer behind a synthesized AAAA, and NXDOMAIN answers, are cached as long as the A records.
    """

    names: int
    ttl: int = 3600
    zone: str = UPSTREAM_ZONE

    def host(self, i: int) -> str:
        return f"h{i}.{self.zone}"

    def missing(self, i: int) -> str:
        return f"nx{i}.{self.zone}"

    @staticmethod
    def address(i: int) -> str:
        return f"1.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"

    def zone_file(self) -> str:
        z = self.zone + "."
        out = [
            f"$ORIGIN {z}",
            f"$TTL {self.ttl}",
            f"@ IN SOA ns1.{z} hostmaster.{z} 1 3600 600 86400 {self.ttl}",
            f"@ IN NS ns1.{z}",
            f"ns1 IN A {NS_ADDRESS}",
        ]
        out += [f"h{i} A {self.address(i)}" for i in range(self.names)]
        return "\n".join(out) + "\n"

    def queries(self, qtype: str, seed: int = 2) -> list[str]:
        lines = [f"{self.host(i)} {qtype}" for i in range(self.names)]
        random.Random(seed).shuffle(lines)
        return lines


def write_lines(path: Path, lines: Iterable[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def write_atomically(path: Path, text: str) -> None:
    """Replace a file in one step (a new inode), as a ConfigMap volume's symlink swap does."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---- asking servers ------------------------------------------------------------------------------------


def ask(port: int, qname: str, qtype: str = "AAAA", *, rd: bool = False, timeout: float = 1.0,
        tcp: bool = False) -> dns.message.Message:
    query = dns.message.make_query(qname, qtype)
    if not rd:
        query.flags &= ~dns.flags.RD
    if tcp:
        return dns.query.tcp(query, HOST, port=port, timeout=timeout)
    return dns.query.udp(query, HOST, port=port, timeout=timeout)


def wait_answer(port: int, qname: str, qtype: str = "AAAA", *, rd: bool = False, timeout: float = 30.0,
                alive: Server | None = None) -> float:
    """Poll until `qname` answers NOERROR; returns the seconds waited. Raises on timeout or a dead server."""
    started = time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline:
        if alive is not None and alive.proc is not None and alive.proc.poll() is not None:
            raise RuntimeError(f"{alive.label} exited with {alive.proc.returncode}:\n{alive.log_tail()}")
        try:
            if ask(port, qname, qtype, rd=rd, timeout=0.5).rcode() == dns.rcode.NOERROR:
                return time.monotonic() - started
        except (dns.exception.DNSException, OSError):
            pass
        time.sleep(0.05)
    tail = alive.log_tail() if alive is not None else ""
    raise RuntimeError(f"no NOERROR answer for {qname} {qtype} on port {port} within {timeout:g} s\n{tail}")


def answer_texts(message: dns.message.Message) -> tuple[str, list[str]]:
    """(rcode, sorted "name type rdata" of the answer section), TTLs left out, for comparing servers."""
    rows = sorted(f"{rrset.name} {dns.rdatatype.to_text(rrset.rdtype)} {rd.to_text()}"
                  for rrset in message.answer for rd in rrset)
    return dns.rcode.to_text(message.rcode()), rows


def compare_answers(ports: Mapping[str, int], lines: Sequence[str], *, rd: bool = False) -> list[str]:
    """Ask every server every "name TYPE" line; a description of each disagreement with the first server."""
    problems: list[str] = []
    reference, *others = ports.items()
    for line in lines:
        qname, qtype = line.split()
        want = answer_texts(ask(reference[1], qname, qtype, rd=rd, timeout=2.0))
        for label, port in others:
            try:
                got = answer_texts(ask(port, qname, qtype, rd=rd, timeout=2.0))
            except dns.exception.DNSException as exc:
                problems.append(f"{line}: {label} {type(exc).__name__}")
                continue
            if got != want:
                problems.append(f"{line}: {reference[0]} {want} but {label} {got}")
    return problems


# ---- servers ------------------------------------------------------------------------------------------


@dataclass
class Server:
    """One server process on HOST:port with its own temporary directory."""

    label: str
    port: int = field(default_factory=free_port)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="dnsd-bench-")))
    proc: subprocess.Popen[bytes] | None = None
    cpus: str = SERVER_CPUS

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError(f"{self.label} is not running")
        return self.proc.pid

    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Write configuration and data files into workdir."""

    def ready_probe(self) -> tuple[str, str, bool]:
        """(qname, qtype, rd) that answers NOERROR once the server is serving its data."""
        return f"{ZONE}.", "SOA", False

    def cwd(self) -> Path:
        return self.workdir

    def start(self, timeout: float = 60.0) -> Self:
        """Start pinned to `cpus`, wait until the ready probe answers NOERROR, then pin every thread again."""
        self.prepare()
        taskset = require("taskset")
        log = (self.workdir / "stderr.log").open("wb")
        self.proc = subprocess.Popen([taskset, "-c", self.cpus, *self.command()], cwd=self.cwd(),
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        try:
            qname, qtype, rd = self.ready_probe()
            wait_answer(self.port, qname, qtype, rd=rd, timeout=timeout, alive=self)
        except BaseException:
            self.stop()
            raise
        self.pin()
        return self

    def pin(self) -> None:
        pin(self.pid, self.cpus)

    def rss(self) -> int:
        return tree_rss_bytes(self.pid)

    def processes(self) -> int:
        return 1 + len(children(self.pid))

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = (self.workdir / "stderr.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, keep: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if not keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Knot(Server):
    """knotd with one UDP and one TCP worker, serving `zones` (origin -> master file text)."""

    zones: dict[str, str] = field(default_factory=dict)

    def prepare(self) -> None:
        entries = []
        for origin, text in self.zones.items():
            path = self.workdir / f"{origin}.zone"
            path.write_text(text)
            entries.append(f'  - domain: "{origin}."\n    file: "{path}"')
        (self.workdir / "knot.conf").write_text(f"""server:
    rundir: "{self.workdir}"
    listen: {HOST}@{self.port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
log:
  - target: stderr
    any: warning
database:
    storage: "{self.workdir}"
template:
  - id: default
    storage: "{self.workdir}"
    journal-content: none
    zonefile-sync: -1
    semantic-checks: off
zone:
""" + "\n".join(entries) + "\n")

    def command(self) -> list[str]:
        return [require("knotd"), "-c", str(self.workdir / "knot.conf")]

    def ready_probe(self) -> tuple[str, str, bool]:
        return f"{next(iter(self.zones))}.", "SOA", False


@dataclass
class Nsd(Server):
    """NSD in the foreground (`-d`) with one server process, unprivileged, serving one zone."""

    origin: str = ZONE
    zone_text: str = ""

    def prepare(self) -> None:
        (self.workdir / "zone").write_text(self.zone_text)
        w = self.workdir
        (w / "nsd.conf").write_text(f"""server:
    ip-address: {HOST}@{self.port}
    port: {self.port}
    do-ip6: no
    server-count: 1
    username: ""
    chroot: ""
    zonesdir: "{w}"
    database: ""
    pidfile: "{w}/nsd.pid"
    xfrdfile: "{w}/xfrd.state"
    xfrdir: "{w}"
    zonelistfile: "{w}/zone.list"
    logfile: "{w}/nsd.log"
    verbosity: 0
    tcp-count: 256
    tcp-query-count: 0
    refuse-any: yes
    hide-version: yes
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
remote-control:
    control-enable: no
zone:
    name: "{self.origin}"
    zonefile: "{w}/zone"
""")

    def command(self) -> list[str]:
        return [require("nsd"), "-d", "-c", str(self.workdir / "nsd.conf")]

    def log_tail(self, lines: int = 20) -> str:
        tail = super().log_tail(lines)
        with contextlib.suppress(OSError):
            tail += "\n" + "\n".join((self.workdir / "nsd.log").read_text(errors="replace").splitlines()[-lines:])
        return tail


@dataclass
class Unbound(Server):
    """Unbound with one thread, forwarding everything to `forward` (a local Knot); dns64 optional."""

    forward: int = 0
    dns64: bool = False
    probe: str = ""

    def prepare(self) -> None:
        w = self.workdir
        modules = "dns64 iterator" if self.dns64 else "iterator"
        (w / "unbound.conf").write_text(f"""server:
    interface: {HOST}@{self.port}
    port: {self.port}
    do-ip6: no
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "{w}"
    pidfile: "{w}/unbound.pid"
    use-syslog: no
    logfile: ""
    verbosity: 0
    num-threads: 1
    so-reuseport: no
    access-control: 127.0.0.0/8 allow
    module-config: "{modules}"
    dns64-prefix: {DNS64_PREFIX}
    do-not-query-localhost: no
    msg-cache-size: 128m
    rrset-cache-size: 256m
    num-queries-per-thread: 4096
    outgoing-range: 8192
    prefetch: no
    qname-minimisation: no
    minimal-responses: yes
    edns-buffer-size: 1232
    cache-max-ttl: 86400
    so-rcvbuf: 8m
    so-sndbuf: 8m
forward-zone:
    name: "."
    forward-addr: {HOST}@{self.forward}
remote-control:
    control-enable: no
""")

    def command(self) -> list[str]:
        return [require("unbound"), "-d", "-c", str(self.workdir / "unbound.conf")]

    def ready_probe(self) -> tuple[str, str, bool]:
        return self.probe, "A", True


@dataclass
class Dnsd(Server):
    """`python -m dnsd` (uvloop, as it runs by default) on a manifests file."""

    manifests: Path | None = None
    recursion: str = "off"
    forwarder: int = 0
    workers: int = 1
    probe: str = ""
    http_port: int = field(default_factory=free_port)
    extra: tuple[str, ...] = ()

    def command(self) -> list[str]:
        if self.manifests is None:
            raise RuntimeError("Dnsd needs a manifests file")
        argv = [
            PYTHON, "-m", "dnsd",
            "--zone", ZONE,
            "--source", f"file:{self.manifests}",
            "--listen", f"{HOST}:{self.port}",
            "--http", f"{HOST}:{self.http_port}",
            "--nameserver", f"{NS_NAME}={NS_ADDRESS}",
            "--recursion", self.recursion,
            "--allow-recursion", "127.0.0.0/8",
            "--log-level", "warning",
            "--lame-duck", "0",
        ]
        if self.recursion == "forward":
            argv += ["--forwarder", f"{HOST}:{self.forwarder}"]
        if "--dnssec-validation" not in self.extra:
            argv += ["--dnssec-validation", "off"]  # the lab's upstream data is unsigned
        if self.workers != 1:
            argv += ["--workers", str(self.workers)]
        return [*argv, *self.extra]

    def cwd(self) -> Path:
        return REPO  # `python -m dnsd` imports the working tree's dnsd

    def ready_probe(self) -> tuple[str, str, bool]:
        return (self.probe, "AAAA", False) if self.probe else (f"{ZONE}.", "SOA", False)

    def start(self, timeout: float = 900.0) -> Self:
        """As Server.start, with a long default: loading 100,000 services from YAML takes minutes."""
        return super().start(timeout)

    def metrics(self) -> str:
        """The Prometheus text of /metrics ("" when it cannot be read)."""
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.http_port}/metrics", timeout=5) as reply:
                return str(reply.read().decode())
        except OSError:
            return ""

    def metric(self, name: str) -> float:
        """The sum over all label sets of one metric in /metrics (NaN when unreadable)."""
        text = self.metrics()
        if not text:
            return float("nan")
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and line[len(name):len(name) + 1] in ("{", " "):
                total += float(line.rsplit(" ", 1)[1])
        return total


# ---- dnsperf ------------------------------------------------------------------------------------------


@dataclass
class Dnsperf:
    """dnsperf's statistics for one run, and per-query latencies (seconds) when run verbose."""

    sent: int = 0
    completed: int = 0
    lost: int = 0
    qps: float = 0.0
    avg_latency: float = float("nan")
    rcodes: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    load_cpu: float = 0.0  # CPU seconds dnsperf itself used
    elapsed: float = 0.0  # wall seconds dnsperf ran (its run time plus the wait for the last answers)
    socket_drops: int = 0  # UDP datagrams the kernel dropped on full receive buffers meanwhile (any socket)
    output: str = ""

    @property
    def p50(self) -> float:
        return percentile(self.latencies, 50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 99)


def udp_receive_errors() -> int:
    """The kernel's count of UDP datagrams dropped because a socket's receive buffer was full (all sockets)."""
    header: list[str] = []
    for line in Path("/proc/net/snmp").read_text().splitlines():
        if line.startswith("Udp:"):
            if not header:
                header = line.split()
            else:
                return int(dict(zip(header, line.split(), strict=False)).get("RcvbufErrors", 0))
    return 0


def dnsperf(port: int, queries: Path, seconds: float, *, tcp: bool = False, rate: float | None = None,
            clients: int = 8, outstanding: int = 200, threads: int = 1, timeout: float = 2.0,
            verbose: bool = False, once: bool = False, cpus: str | None = None, buffer_kb: int = 4096,
            skip_seconds: float = 0.0, dnssec: bool = False) -> Dnsperf:
    """Run dnsperf pinned to `cpus` (default LOAD_CPUS) against HOST:port and parse what it prints.

    `buffer_kb` sizes dnsperf's socket buffers (-b), so that a burst of answers is not dropped on the
    load generator's side; with `rate` and `verbose`, the latencies of the first `skip_seconds` of
    answers are left out (dnsperf's -Q sends a burst while it ramps up, which measures dnsperf).
    """
    argv = [require("taskset"), "-c", cpus or LOAD_CPUS, require("dnsperf"), "-s", HOST, "-p", str(port),
            "-d", str(queries), "-c", str(clients), "-T", str(threads), "-q", str(outstanding), "-t", f"{timeout:g}",
            *(["-b", str(buffer_kb)] if buffer_kb else [])]
    argv += ["-n", "1"] if once else ["-l", f"{seconds:g}"]
    if tcp:
        argv += ["-m", "tcp"]
    if rate:
        argv += ["-Q", str(int(rate))]
    if verbose:
        argv += ["-v"]
    if dnssec:
        argv += ["-D"]  # DO=1 on every query (validated answers carry AD and their RRSIGs)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    drops = udp_receive_errors()
    began = time.monotonic()
    with tempfile.TemporaryFile() as out:
        subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False,
                       timeout=(seconds if not once else 600) + timeout + 60)
        out.seek(0)
        text = out.read().decode(errors="replace")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = Dnsperf()
    result.elapsed = time.monotonic() - began
    result.load_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    result.socket_drops = udp_receive_errors() - drops
    latencies: list[float] = []
    stats: list[str] = []
    for line in text.splitlines():
        if line.startswith("> "):
            with contextlib.suppress(ValueError, IndexError):
                latencies.append(float(line.rsplit(" ", 1)[1]))
        elif not line.startswith("[Timeout]"):
            stats.append(line)
    summary = "\n".join(stats)
    result.output = summary

    def number(pattern: str) -> float:
        match = re.search(pattern, summary)
        return float(match.group(1)) if match else float("nan")

    result.sent = int(number(r"Queries sent:\s+(\d+)") if "Queries sent" in summary else 0)
    result.completed = int(number(r"Queries completed:\s+(\d+)") if "Queries completed" in summary else 0)
    result.lost = int(number(r"Queries lost:\s+(\d+)") if "Queries lost" in summary else 0)
    result.qps = number(r"Queries per second:\s+([\d.]+)")
    result.avg_latency = number(r"Average Latency \(s\):\s+([\d.]+)")
    match = re.search(r"Response codes:\s+(.*)", summary)
    if match:
        for name, count in re.findall(r"(\w+) (\d+) \(", match.group(1)):
            result.rcodes[name] = int(count)
    if rate and skip_seconds:
        latencies = latencies[int(rate * skip_seconds):]
    result.latencies = latencies
    if "Queries sent" not in summary:
        raise RuntimeError(f"dnsperf failed:\n{summary[-2000:]}")
    return result


# ---- smoke test ---------------------------------------------------------------------------------------


def _smoke() -> int:
    cluster = Cluster(services=200)
    upstream = Upstream(names=50)
    tmp = Path(tempfile.mkdtemp(prefix="dnsd-bench-smoke-"))
    manifests = tmp / "cluster.yaml"
    manifests.write_text(cluster.manifests())
    servers: list[Server] = []
    try:
        knot = Knot("knot", zones={ZONE: cluster.zone_file(), UPSTREAM_ZONE: upstream.zone_file()})
        servers.append(knot.start())
        servers.append(Nsd("nsd", zone_text=cluster.zone_file()).start())
        servers.append(Unbound("unbound-dns64", forward=knot.port, dns64=True, probe=upstream.host(0)).start())
        servers.append(Dnsd("dnsd", manifests=manifests, recursion="forward", forwarder=knot.port,
                            probe=cluster.last_name).start())
        for server in servers:
            print(f"{server.label:14} port {server.port:5} pid {server.pid:7} rss {server.rss() / MB:6.1f} MB "
                  f"cpus {sorted(affinities(server.pid))}")
        lines = cluster.zone_queries(200)
        ports = {s.label: s.port for s in servers if s.label in ("knot", "nsd", "dnsd")}
        problems = compare_answers({"knot": ports["knot"], "nsd": ports["nsd"], "dnsd": ports["dnsd"]}, lines)
        print(f"zone answers compared on {len(lines)} queries: {len(problems)} differences")
        for problem in problems[:10]:
            print("  ", problem)
        rec = {"unbound-dns64": servers[2].port, "dnsd": servers[3].port}
        problems = compare_answers(rec, [f"{upstream.host(i)} AAAA" for i in range(20)], rd=True)
        print(f"DNS64 answers compared on 20 queries: {len(problems)} differences")
        for problem in problems[:10]:
            print("  ", problem)
        queries = write_lines(tmp / "q.txt", lines)
        result = dnsperf(servers[3].port, queries, 1.0, rate=500, verbose=True)
        print(f"dnsperf 1 s at 500/s on dnsd: {result.completed} answered, {result.lost} lost, "
              f"p50 {result.p50 * 1e3:.3f} ms, p99 {result.p99 * 1e3:.3f} ms, rcodes {result.rcodes}")
    finally:
        for server in reversed(servers):
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(_smoke())
