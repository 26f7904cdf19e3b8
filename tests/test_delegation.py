"""A real resolver follows a real delegation to dnsd.

Knot (Debian) serves a root zone and the parent zone `k8s.ooo` on 127.54.0.1:53; the parent delegates
`c2.k8s.ooo` to `ns1.c2.k8s.ooo` with AAAA glue `::1`, where dnsd listens on port 53. Unbound, with root hints
pointing at the local root, resolves service names through that chain: root -> k8s.ooo -> dnsd over IPv6.
Everything listens on loopback; nothing leaves the machine. Needs root (port 53) and the knot and unbound
packages, which scripts/test installs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from tests.dnsd_process import EXAMPLE_MANIFESTS, DnsdProcess, rdata_texts

PARENT = "127.54.0.1"
RESOLVER = "127.54.0.9"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="binds port 53 on loopback addresses")

ROOT_ZONE = f"""$TTL 3600
.                  IN SOA a.root-servers.net. hostmaster.root. 1 7200 1800 1209600 300
.                  IN NS  a.root-servers.net.
a.root-servers.net. IN A  {PARENT}
k8s.ooo.           IN NS  ns.k8s.ooo.
ns.k8s.ooo.        IN A   {PARENT}
"""

PARENT_ZONE = f"""$TTL 3600
@        IN SOA ns.k8s.ooo. hostmaster.k8s.ooo. 1 7200 1800 1209600 300
@        IN NS  ns.k8s.ooo.
ns       IN A   {PARENT}
c2       IN NS  ns1.c2.k8s.ooo.
ns1.c2   IN AAAA ::1
"""


def _ask(server: str, name: str, qtype: str, rd: bool = True) -> dns.message.Message:
    query = dns.message.make_query(name, qtype)
    if not rd:
        query.flags &= ~dns.flags.RD
    return dns.query.udp(query, server, port=53, timeout=5)


def _wait_for_server(server: str, name: str, limit: float = 10) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            _ask(server, name, "SOA", rd=False)
            return
        except (OSError, dns.exception.Timeout):
            time.sleep(0.1)
    raise RuntimeError(f"{server} did not answer within {limit}s")


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsdProcess]:
    for tool in ("knotd", "unbound"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            pytest.fail(f"{tool} is not installed (scripts/test installs knot and unbound)")
    work = tmp_path_factory.mktemp("delegation")
    (work / "root.zone").write_text(ROOT_ZONE)
    (work / "k8s.ooo.zone").write_text(PARENT_ZONE)
    (work / "knot.conf").write_text(f"""server:
    rundir: "{work}"
    listen: {PARENT}@53
control:
    listen: "{work}/knot.sock"
database:
    storage: "{work}/db"
template:
  - id: default
    storage: "{work}"
    file: "%s.zone"
zone:
  - domain: .
    file: root.zone
  - domain: k8s.ooo
""")
    (work / "root.hints").write_text(
        f".\t3600000\tNS\ta.root-servers.net.\na.root-servers.net.\t3600000\tA\t{PARENT}\n"
    )
    (work / "unbound.conf").write_text(f"""server:
    interface: {RESOLVER}
    port: 53
    do-ip4: yes
    do-ip6: yes
    do-not-query-localhost: no
    root-hints: "{work}/root.hints"
    username: ""
    chroot: ""
    directory: "{work}"
    pidfile: "{work}/unbound.pid"
    use-syslog: no
    verbosity: 1
    module-config: "iterator"
    access-control: 127.0.0.0/8 allow
    so-reuseport: no
remote-control:
    control-enable: no
""")
    knot = subprocess.Popen([shutil.which("knotd") or "/usr/sbin/knotd", "-c", str(work / "knot.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    unbound = subprocess.Popen([shutil.which("unbound") or "/usr/sbin/unbound", "-d", "-c",
                                str(work / "unbound.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dnsd = DnsdProcess("--zone", "c2.k8s.ooo", "--nameserver", "ns1.c2.k8s.ooo=::1",
                       "--source", f"file:{EXAMPLE_MANIFESTS}", "--recursion", "off", listen=("[::1]:53",))
    try:
        _wait_for_server(PARENT, "k8s.ooo")
        dnsd.start()
        _wait_for_server(RESOLVER, ".")
        yield dnsd
    finally:
        dnsd.stop()
        for proc in (unbound, knot):
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()


def test_parent_refers_to_dnsd_with_aaaa_glue(chain: DnsdProcess) -> None:
    referral = _ask(PARENT, "sample-service.default.svc.c2.k8s.ooo", "AAAA", rd=False)
    assert not referral.flags & dns.flags.AA
    assert [rr.to_text() for rrset in referral.authority for rr in rrset] == ["ns1.c2.k8s.ooo."]
    assert [rr.to_text() for rrset in referral.additional for rr in rrset] == ["::1"]


def test_unbound_resolves_a_service_through_the_delegation(chain: DnsdProcess) -> None:
    reply = _ask(RESOLVER, "sample-service.default.svc.c2.k8s.ooo", "AAAA")
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.RA
    assert rdata_texts(reply, "AAAA") == ["2001:db8:42::10"]
    # The same data as dnsd itself gives, authoritatively.
    direct = chain.query("sample-service.default.svc.c2.k8s.ooo", "AAAA")
    assert direct.flags & dns.flags.AA
    assert rdata_texts(direct, "AAAA") == rdata_texts(reply, "AAAA")


def test_unbound_follows_srv_headless_and_negative_answers(chain: DnsdProcess) -> None:
    srv = _ask(RESOLVER, "_postgres._tcp.db.shop.svc.c2.k8s.ooo", "SRV")
    assert rdata_texts(srv, "SRV") == ["0 100 5432 db-0.db.shop.svc.c2.k8s.ooo.",
                                       "0 100 5432 db-1.db.shop.svc.c2.k8s.ooo."]
    host = _ask(RESOLVER, "db-1.db.shop.svc.c2.k8s.ooo", "AAAA")
    assert rdata_texts(host, "AAAA") == ["2001:db8:43::101"]
    missing = _ask(RESOLVER, "nosuch.default.svc.c2.k8s.ooo", "AAAA")
    assert missing.rcode() == dns.rcode.NXDOMAIN
    assert missing.authority[0].name.to_text() == "c2.k8s.ooo."  # dnsd's SOA, passed on by Unbound
    ent = _ask(RESOLVER, "shop.svc.c2.k8s.ooo", "AAAA")
    assert ent.rcode() == dns.rcode.NOERROR and ent.answer == []
