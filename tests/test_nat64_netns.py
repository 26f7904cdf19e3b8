"""NAT64 end to end (issue 16): dnsd on an IPv6-only network reaches an IPv4-only name server through
tayga translating 64:ff9b::/96.

The test builds three network namespaces of its own (names unique to this run):

    dnsd ns (IPv6 only)          router ns                     v4 ns (IPv4 only)
    dnsd, root Knot  -- veth --  tayga (nat64 tun),  -- veth --  Knot for v4only.
    fd00:16b:d::1, ::53          IPv6 and IPv4 forwarding       44.16.0.53

dnsd's root hints name a root server with an IPv6 address only (the root Knot, in dnsd's own
namespace); the root delegates `v4only.` to a server with only an IPv4 glue address. dnsd's
namespace has no IPv4 route but loopback's, so the iterator sends to 64:ff9b::44.16.0.53, which is
routed to the router namespace, where tayga translates it to IPv4 from its dynamic pool
192.168.255.0/24. The v4-only Knot answers only queries from that pool (mod-queryacl; others get
NOTAUTH), so an answer proves the query came through tayga; a query from inside its own namespace
is refused (the control).
The v4 address is a global one (the Well-Known Prefix may not embed private addresses, RFC 6052 3.1,
and tayga enforces that too); nothing leaves the namespaces, which have no route out.

Skips with the reason when not root, when `ip netns add` fails, or when tayga, knotd or /dev/net/tun
is missing. Namespaces and processes are removed in a finalizer, also on failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from tests.dnsd_process import EXAMPLE_MANIFESTS, REPO, DnsdProcess, rdata_texts

PREFIX = "64:ff9b::/96"
V4_SERVER = "44.16.0.53"       # global (RFC 6052 3.1), never routed outside the namespaces
POOL = "192.168.255.0/24"      # tayga's dynamic pool: the IPv4 sources of translated queries
TAYGA_V4 = "192.168.255.1"
ROUTER_V4 = "44.16.0.1"        # the router's side of the IPv4 link
DNSD_V6, ROUTER_V6, ROOT_V6 = "fd00:16b:d::1", "fd00:16b:d::2", "fd00:16b:d::53"
TAYGA_V6 = "fd00:16b:ff::1"

ROOT_ZONE = f"""$ORIGIN .
$TTL 3600
. SOA a.root.v6. hostmaster.root.v6. 1 1800 900 604800 60
. NS a.root.v6.
a.root.v6. AAAA {ROOT_V6}
v4only. NS ns.v4only.
ns.v4only. A {V4_SERVER}
"""

LEAF_ZONE = f"""$ORIGIN v4only.
$TTL 300
@ SOA ns hostmaster 1 1800 900 604800 60
@ NS ns
ns A {V4_SERVER}
www A 44.16.0.80
www TXT "reached through NAT64"
"""


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=30)


def knot_conf(workdir: Path, listen: str, zone: str, acl: str | None) -> str:
    module = f"mod-queryacl:\n  - id: pool\n    address: {acl}\n" if acl else ""
    use = "    module: mod-queryacl/pool\n" if acl else ""
    return f"""server:
    rundir: "{workdir}"
    listen: {listen}@53
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
log:
  - target: stderr
    any: warning
database:
    storage: "{workdir}"
{module}template:
  - id: default
    storage: "{workdir}"
    journal-content: none
    zonefile-sync: -1
    semantic-checks: off
zone:
  - domain: "{zone}"
    file: "{workdir}/zone"
{use}"""


class Lab:
    """The three namespaces, their links and their processes; `close` undoes everything."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.dnsd_ns, self.router_ns, self.v4_ns = f"n64d{tag}", f"n64r{tag}", f"n64v{tag}"
        self.workdir = Path(tempfile.mkdtemp(prefix="dnsd-nat64-"))
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen[bytes]] = []

    def ns(self, name: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", name, *argv, check=check)

    def start(self) -> Lab:
        for name in (self.dnsd_ns, self.router_ns, self.v4_ns):
            run("ip", "netns", "add", name)
            self.namespaces.append(name)
            self.ns(name, "ip", "link", "set", "lo", "up")
        d, r, v = self.dnsd_ns, self.router_ns, self.v4_ns
        # dnsd <-> router: IPv6 only
        run("ip", "link", "add", "v6d", "netns", d, "type", "veth", "peer", "name", "v6r", "netns", r)
        self.ns(d, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=0")
        self.ns(d, "ip", "addr", "add", f"{DNSD_V6}/64", "dev", "v6d", "nodad")
        self.ns(d, "ip", "addr", "add", f"{ROOT_V6}/64", "dev", "v6d", "nodad")
        self.ns(d, "ip", "link", "set", "v6d", "up")
        self.ns(d, "ip", "-6", "route", "add", PREFIX, "via", ROUTER_V6)
        self.ns(r, "ip", "addr", "add", f"{ROUTER_V6}/64", "dev", "v6r", "nodad")
        self.ns(r, "ip", "link", "set", "v6r", "up")
        # router <-> v4 server: IPv4 only
        run("ip", "link", "add", "v4r", "netns", r, "type", "veth", "peer", "name", "v4v", "netns", v)
        self.ns(r, "ip", "addr", "add", f"{ROUTER_V4}/24", "dev", "v4r")
        self.ns(r, "ip", "link", "set", "v4r", "up")
        self.ns(v, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        self.ns(v, "ip", "addr", "add", f"{V4_SERVER}/24", "dev", "v4v")
        self.ns(v, "ip", "link", "set", "v4v", "up")
        self.ns(v, "ip", "route", "add", POOL, "via", ROUTER_V4)
        # tayga in the router namespace
        self.ns(r, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.ns(r, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        tayga_dir = self.workdir / "tayga"
        tayga_dir.mkdir()
        conf = tayga_dir / "tayga.conf"
        conf.write_text(f"tun-device nat64\nipv4-addr {TAYGA_V4}\nipv6-addr {TAYGA_V6}\nprefix {PREFIX}\n"
                        f"dynamic-pool {POOL}\ndata-dir {tayga_dir}\n")
        tayga = shutil.which("tayga") or "/usr/sbin/tayga"
        self.ns(r, tayga, "-c", str(conf), "--mktun")
        self.ns(r, "ip", "link", "set", "nat64", "up")
        self.ns(r, "ip", "route", "add", POOL, "dev", "nat64")
        self.ns(r, "ip", "-6", "route", "add", PREFIX, "dev", "nat64")
        self.spawn(r, [tayga, "-c", str(conf), "--nodetach"], "tayga.log")
        # the name servers
        self.knot(d, ROOT_V6, ".", ROOT_ZONE, None)
        self.knot(v, V4_SERVER, "v4only.", LEAF_ZONE, POOL)
        self.wait_for(d, ROOT_V6, ".", dns.rcode.NOERROR)
        self.wait_for(v, V4_SERVER, "v4only.", dns.rcode.NOTAUTH)  # up, and refusing non-pool sources
        hints = self.workdir / "root.hints"
        hints.write_text(f". 3600000 NS a.root.v6.\na.root.v6. 3600000 AAAA {ROOT_V6}\n")
        self.hints = str(hints)
        return self

    def spawn(self, name: str, argv: list[str], log: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(["ip", "netns", "exec", name, *argv], stdout=subprocess.DEVNULL,
                                   stderr=open(self.workdir / log, "wb"))  # noqa: SIM115
        self.processes.append(process)
        return process

    def knot(self, name: str, address: str, zone: str, body: str, acl: str | None) -> None:
        directory = self.workdir / f"knot-{zone.strip('.') or 'root'}"
        directory.mkdir()
        (directory / "zone").write_text(body)
        conf = directory / "knot.conf"
        conf.write_text(knot_conf(directory, address, zone, acl))
        self.spawn(name, [shutil.which("knotd") or "/usr/sbin/knotd", "-c", str(conf)], f"{directory.name}.log")

    def query(self, name: str, server: str, port: int, qname: str, qtype: str = "A",
              rd: bool = False) -> dns.message.Message:
        """Ask from inside namespace `name` (dnspython in a child process there); the reply parsed here."""
        script = ("import sys, dns.message, dns.query, dns.flags\n"
                  f"q = dns.message.make_query({qname!r}, {qtype!r}, use_edns=0)\n"
                  f"q.flags = q.flags | dns.flags.RD if {rd} else q.flags & ~dns.flags.RD\n"
                  f"r = dns.query.udp(q, {server!r}, port={port}, timeout=8)\n"
                  "sys.stdout.write(r.to_wire().hex())\n")
        done = self.ns(name, sys.executable, "-c", script, check=False)
        if done.returncode != 0:
            raise OSError(done.stderr.strip().splitlines()[-1] if done.stderr else "query failed")
        return dns.message.from_wire(bytes.fromhex(done.stdout))

    def wait_for(self, name: str, server: str, zone: str, rcode: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.query(name, server, 53, zone, "SOA").rcode() == rcode:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                logs = "\n".join(f"{p.name}: {p.read_text()}" for p in self.workdir.glob("*.log"))
                raise RuntimeError(f"{zone} on {server} did not come up:\n{logs}")
            time.sleep(0.2)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in self.workdir.glob("*.log"))

    def close(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for name in self.namespaces:
            run("ip", "netns", "del", name, check=False)  # removes the veths and the tun with it
        shutil.rmtree(self.workdir, ignore_errors=True)


class NetnsDnsd(DnsdProcess):
    """The real dnsd process, started inside a network namespace."""

    def __init__(self, namespace: str, *args: str, listen: tuple[str, ...]) -> None:
        super().__init__(*args, listen=listen)
        self.namespace = namespace

    def start(self, timeout: float = 20.0) -> NetnsDnsd:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.namespace, sys.executable, "-m", "dnsd", *self.args], cwd=REPO,
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not self._listening.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"dnsd did not start listening:\n{self.output()}")
        return self


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    for tool in ("ip", "tayga", "knotd"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} is not installed (Debian packages iproute2, tayga, knot)"
    if not Path("/dev/net/tun").exists():
        return "/dev/net/tun is missing: tayga needs a tun device"
    probe = f"n64probe{os.getpid() % 100000}"
    done = run("ip", "netns", "add", probe, check=False)
    if done.returncode != 0:
        return f"`ip netns add` failed: {done.stderr.strip()}"
    run("ip", "netns", "del", probe, check=False)
    return None


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    reason = _skip_reason()
    if reason is not None:
        pytest.skip(reason)
    lab = Lab()
    try:
        yield lab.start()
    finally:
        lab.close()


def test_ipv6_only_dnsd_reaches_ipv4_only_server_through_nat64(lab: Lab) -> None:
    # the control: the v4-only server refuses queries that do not come from tayga's pool
    direct = lab.query(lab.v4_ns, V4_SERVER, 53, "www.v4only.")
    assert direct.rcode() == dns.rcode.NOTAUTH  # mod-queryacl refuses with NOTAUTH
    # dnsd's namespace really has no IPv4 route to the server
    route = lab.ns(lab.dnsd_ns, "ip", "route", "get", V4_SERVER, check=False)
    assert route.returncode != 0, route.stdout
    with NetnsDnsd(lab.dnsd_ns, "--zone", "c2.k8s.ooo", "--source", f"file:{EXAMPLE_MANIFESTS}",
                   "--recursion", "iterate", "--root-hints", lab.hints, "--allow-recursion", "::/0",
                   "--dns64-prefix", PREFIX,
                   listen=("[::1]:0",)) as proc:
        reply = lab.query(lab.dnsd_ns, "::1", proc.port, "www.v4only.", "A", rd=True)
        assert reply.rcode() == dns.rcode.NOERROR, f"{reply}\n{proc.output()}\n{lab.logs()}"
        assert rdata_texts(reply, "A") == ["44.16.0.80"]
        reply = lab.query(lab.dnsd_ns, "::1", proc.port, "www.v4only.", "TXT", rd=True)
        assert rdata_texts(reply, "TXT") == ['"reached through NAT64"']
        # an IPv4-only service name gets a synthesized AAAA (DNS64) on the same path
        reply = lab.query(lab.dnsd_ns, "::1", proc.port, "www.v4only.", "AAAA", rd=True)
        assert rdata_texts(reply, "AAAA") == ["64:ff9b::2c10:50"]
        assert "Traceback" not in proc.output()
