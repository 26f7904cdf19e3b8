"""The publication policy: the real dnsd asked from a cluster address and from an Internet address.

dnsd listens on 127.0.0.1 with `--allow-recursion 127.0.0.1/32`: a client bound to 127.0.0.1 is the
cluster, one bound to 127.0.0.2 is the Internet. The cluster below mixes global addresses
(2001:db8::/32 and 203.0.113.0/24 are not private-use, so the default publishes them) with
RFC 1918 and ULA ones, and every rule of ARCHITECTURE.md "Contract: what the Internet sees" is
asked both ways.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.reversename
import dns.zone
import pytest

from tests.dnsd_process import DnsdProcess, rdata_texts

ZONE = "c2.k8s.ooo"
CLUSTER, INTERNET = "127.0.0.1", "127.0.0.2"

MANIFESTS = """\
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: shop}}
- {apiVersion: v1, kind: Namespace, metadata: {name: private}}
- {apiVersion: v1, kind: Namespace, metadata: {name: quiet}}
# dual-stack: a global IPv6 and an RFC 1918 IPv4 address
- apiVersion: v1
  kind: Service
  metadata: {name: web, namespace: shop}
  spec:
    clusterIPs: [2001:db8:42::20, 10.96.0.20]
    ports: [{name: https, port: 443, protocol: TCP}]
# ULA only: the Internet must not know it exists, nor its namespace
- apiVersion: v1
  kind: Service
  metadata: {name: db, namespace: private}
  spec:
    clusterIPs: ["fd00:10:96::5"]
    ports: [{name: pg, port: 5432, protocol: TCP}]
# a LoadBalancer: private cluster IP, public ingress address
- apiVersion: v1
  kind: Service
  metadata: {name: lb, namespace: shop}
  spec:
    type: LoadBalancer
    clusterIPs: [10.96.0.30]
  status:
    loadBalancer:
      ingress: [{ip: 203.0.113.30}, {ip: "fd00:10:96::30"}]
# an ExternalName: unaffected by the policy
- apiVersion: v1
  kind: Service
  metadata: {name: ext, namespace: quiet}
  spec: {type: ExternalName, externalName: www.example.org}
# headless with mixed endpoints
- apiVersion: v1
  kind: Service
  metadata: {name: peers, namespace: shop}
  spec:
    clusterIP: None
    ports: [{name: gossip, port: 7000, protocol: TCP}]
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: peers-1
    namespace: shop
    labels: {kubernetes.io/service-name: peers}
  addressType: IPv6
  ports: [{name: gossip, port: 7000, protocol: TCP}]
  endpoints:
  - {addresses: ["2001:db8:43::1"], hostname: pub, conditions: {ready: true}}
  - {addresses: ["fd00:10:244::2"], hostname: priv, conditions: {ready: true}}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata:
    name: peers-2
    namespace: shop
    labels: {kubernetes.io/service-name: peers}
  addressType: IPv4
  ports: [{name: gossip, port: 7000, protocol: TCP}]
  endpoints:
  - {addresses: [10.244.0.3], conditions: {ready: true}}
"""


def ask(dnsd: DnsdProcess, source: str, qname: str, qtype: str, *, tcp: bool = False) -> dns.message.Message:
    """One authoritative question from `source` (127.0.0.1: the cluster, 127.0.0.2: the Internet)."""
    message = dns.message.make_query(qname, qtype, use_edns=0)
    message.flags &= ~dns.flags.RD
    if tcp:
        return dns.query.tcp(message, dnsd.host, port=dnsd.port, timeout=3, source=source)
    return dns.query.udp(message, dnsd.host, port=dnsd.port, timeout=3, source=source)


def start(tmp_path: Path, *extra: str) -> DnsdProcess:
    path = tmp_path / "cluster.yaml"
    path.write_text(MANIFESTS)
    return DnsdProcess("--zone", ZONE, "--source", f"file:{path}", "--allow-recursion", "127.0.0.1/32",
                       "--recursion", "off", "--reverse-zone", "2001:db8::/32", "--reverse-zone", "fd00::/8",
                       "--reverse-zone", "10.0.0.0/8", "--reverse-zone", "203.0.113.0/24",
                       "--nameserver", f"ns1.{ZONE}=2001:db8::53,192.168.1.53", *extra)


@pytest.fixture(scope="module")
def dnsd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsdProcess]:
    process = start(tmp_path_factory.mktemp("publication")).start()
    try:
        yield process
    finally:
        process.stop()


def both(dnsd: DnsdProcess, qname: str, qtype: str) -> tuple[dns.message.Message, dns.message.Message]:
    return ask(dnsd, CLUSTER, qname, qtype), ask(dnsd, INTERNET, qname, qtype)


def assert_nxdomain_with_soa(response: dns.message.Message) -> None:
    assert response.rcode() == dns.rcode.NXDOMAIN
    assert response.flags & dns.flags.AA
    assert [r.rdtype for r in response.authority] == [dns.rdatatype.SOA]
    assert response.authority[0].name.to_text() == f"{ZONE}."


def test_dual_stack_service_the_internet_gets_only_the_global_address(dnsd: DnsdProcess) -> None:
    name = f"web.shop.svc.{ZONE}"
    cluster, internet = both(dnsd, name, "A")
    assert rdata_texts(cluster, "A") == ["10.96.0.20"]
    # the name exists for the Internet (it has a global AAAA): NODATA, with SOA and AA
    assert internet.rcode() == dns.rcode.NOERROR and not internet.answer
    assert internet.flags & dns.flags.AA and internet.authority[0].rdtype == dns.rdatatype.SOA
    for source in (CLUSTER, INTERNET):
        assert rdata_texts(ask(dnsd, source, name, "AAAA"), "AAAA") == ["2001:db8:42::20"]


def test_ula_only_service_and_its_namespace_do_not_exist_for_the_internet(dnsd: DnsdProcess) -> None:
    name = f"db.private.svc.{ZONE}"
    cluster, internet = both(dnsd, name, "AAAA")
    assert rdata_texts(cluster, "AAAA") == ["fd00:10:96::5"]
    assert_nxdomain_with_soa(internet)
    srv = f"_pg._tcp.{name}"
    assert rdata_texts(ask(dnsd, CLUSTER, srv, "SRV"), "SRV") == [f"0 100 5432 {name}."]
    assert_nxdomain_with_soa(ask(dnsd, INTERNET, srv, "SRV"))
    # empty non-terminals that only the hidden service created vanish too
    assert_nxdomain_with_soa(ask(dnsd, INTERNET, f"_tcp.{name}", "SRV"))
    cluster_ns, internet_ns = both(dnsd, f"private.svc.{ZONE}", "A")
    assert cluster_ns.rcode() == dns.rcode.NOERROR and not cluster_ns.answer
    assert_nxdomain_with_soa(internet_ns)
    # a namespace that exists only as a Namespace object is no name for the Internet either, but an
    # ExternalName in one is published (no address to withhold)
    cname_c, cname_i = both(dnsd, f"ext.quiet.svc.{ZONE}", "A")
    assert rdata_texts(cname_c, "CNAME") == rdata_texts(cname_i, "CNAME") == ["www.example.org."]


def test_a_namespace_with_no_published_object_is_nxdomain_for_the_internet(tmp_path: Path) -> None:
    with start(tmp_path) as dnsd:
        cluster, internet = both(dnsd, f"private.svc.{ZONE}", "SOA")
        assert cluster.rcode() == dns.rcode.NOERROR
        assert_nxdomain_with_soa(internet)
        assert both(dnsd, f"shop.svc.{ZONE}", "A")[1].rcode() == dns.rcode.NOERROR


def test_headless_service_with_mixed_endpoints(dnsd: DnsdProcess) -> None:
    base = f"peers.shop.svc.{ZONE}"
    cluster, internet = both(dnsd, base, "AAAA")
    assert rdata_texts(cluster, "AAAA") == ["2001:db8:43::1", "fd00:10:244::2"]
    assert rdata_texts(internet, "AAAA") == ["2001:db8:43::1"]
    assert rdata_texts(ask(dnsd, CLUSTER, base, "A"), "A") == ["10.244.0.3"]
    internet_a = ask(dnsd, INTERNET, base, "A")
    assert internet_a.rcode() == dns.rcode.NOERROR and not internet_a.answer
    # endpoint hostnames: the published one exists, the others do not
    assert rdata_texts(ask(dnsd, INTERNET, f"pub.{base}", "AAAA"), "AAAA") == ["2001:db8:43::1"]
    assert rdata_texts(ask(dnsd, CLUSTER, f"priv.{base}", "AAAA"), "AAAA") == ["fd00:10:244::2"]
    assert_nxdomain_with_soa(ask(dnsd, INTERNET, f"priv.{base}", "AAAA"))
    assert_nxdomain_with_soa(ask(dnsd, INTERNET, f"10-244-0-3.{base}", "A"))


def test_srv_targets_and_their_additional_records(dnsd: DnsdProcess) -> None:
    base = f"peers.shop.svc.{ZONE}"
    srv = f"_gossip._tcp.{base}"
    cluster, internet = both(dnsd, srv, "SRV")
    assert rdata_texts(cluster, "SRV") == sorted(
        f"0 100 7000 {h}.{base}." for h in ("pub", "priv", "10-244-0-3"))
    assert rdata_texts(internet, "SRV") == [f"0 100 7000 pub.{base}."]
    additional = sorted(rd.to_text() for rrset in internet.additional for rd in rrset
                        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA))
    assert additional == ["2001:db8:43::1"]
    cluster_additional = sorted(rd.to_text() for rrset in cluster.additional for rd in rrset
                                if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA))
    assert "fd00:10:244::2" in cluster_additional and "10.244.0.3" in cluster_additional
    # the dual-stack service's SRV: additional AAAA only for the Internet
    web = f"web.shop.svc.{ZONE}"
    internet_web = ask(dnsd, INTERNET, f"_https._tcp.{web}", "SRV")
    assert rdata_texts(internet_web, "SRV") == [f"0 100 443 {web}."]
    kinds = sorted(dns.rdatatype.to_text(r.rdtype) for r in internet_web.additional if r.rdtype != dns.rdatatype.OPT)
    assert kinds == ["AAAA"]


def test_ptr_only_for_published_addresses(dnsd: DnsdProcess) -> None:
    for address, target in (("2001:db8:42::20", "web.shop"), ("203.0.113.30", "lb.shop")):
        qname = dns.reversename.from_address(address).to_text()
        cluster, internet = both(dnsd, qname, "PTR")
        assert rdata_texts(cluster, "PTR") == rdata_texts(internet, "PTR") == [f"{target}.svc.{ZONE}."]
    for address in ("10.96.0.20", "fd00:10:96::5", "fd00:10:244::2"):
        qname = dns.reversename.from_address(address).to_text()
        cluster, internet = both(dnsd, qname, "PTR")
        assert len(rdata_texts(cluster, "PTR")) == 1
        assert internet.rcode() == dns.rcode.NXDOMAIN and internet.flags & dns.flags.AA
        assert internet.authority[0].rdtype == dns.rdatatype.SOA


def test_load_balancer_ingress_is_what_the_internet_sees(dnsd: DnsdProcess) -> None:
    name = f"lb.shop.svc.{ZONE}"
    cluster, internet = both(dnsd, name, "A")
    assert rdata_texts(cluster, "A") == ["10.96.0.30", "203.0.113.30"]
    assert rdata_texts(internet, "A") == ["203.0.113.30"]
    assert rdata_texts(ask(dnsd, CLUSTER, name, "AAAA"), "AAAA") == ["fd00:10:96::30"]
    internet_aaaa = ask(dnsd, INTERNET, name, "AAAA")
    assert internet_aaaa.rcode() == dns.rcode.NOERROR and not internet_aaaa.answer


def test_apex_glue_is_filtered(dnsd: DnsdProcess) -> None:
    ns = f"ns1.{ZONE}"
    assert rdata_texts(ask(dnsd, CLUSTER, ns, "A"), "A") == ["192.168.1.53"]
    internet = ask(dnsd, INTERNET, ns, "A")
    assert internet.rcode() == dns.rcode.NOERROR and not internet.answer
    assert rdata_texts(ask(dnsd, INTERNET, ns, "AAAA"), "AAAA") == ["2001:db8::53"]
    apex = ask(dnsd, INTERNET, ZONE, "NS")
    glue = sorted(rd.to_text() for rrset in apex.additional for rd in rrset
                  if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA))
    assert glue == ["2001:db8::53"]


def test_answers_stay_per_view_on_the_fast_path(dnsd: DnsdProcess) -> None:
    """Asked many times, alternately: the stored answers of one class never reach the other."""
    name = f"lb.shop.svc.{ZONE}"
    # a NODATA (web has no TXT) makes the negative template of that question shape; db, which the
    # cluster has but the Internet must not, stays NXDOMAIN for the Internet with it
    for _ in range(3):
        nodata = ask(dnsd, INTERNET, f"web.shop.svc.{ZONE}", "TXT")
        assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
        assert_nxdomain_with_soa(ask(dnsd, INTERNET, f"db.private.svc.{ZONE}", "TXT"))
        cluster = ask(dnsd, CLUSTER, f"db.private.svc.{ZONE}", "TXT")
        assert cluster.rcode() == dns.rcode.NOERROR and not cluster.answer
    for _ in range(20):
        assert rdata_texts(ask(dnsd, INTERNET, name, "A"), "A") == ["203.0.113.30"]
        assert rdata_texts(ask(dnsd, CLUSTER, name, "A"), "A") == ["10.96.0.30", "203.0.113.30"]
        assert ask(dnsd, INTERNET, f"db.private.svc.{ZONE}", "AAAA").rcode() == dns.rcode.NXDOMAIN
        assert ask(dnsd, CLUSTER, f"db.private.svc.{ZONE}", "AAAA").rcode() == dns.rcode.NOERROR


def test_publish_networks_override(tmp_path: Path) -> None:
    """With --publish-networks the Internet gets exactly those networks, private ones included."""
    with start(tmp_path, "--publish-networks", "10.96.0.0/16", "--publish-networks", "fd00:10:96::/48") as dnsd:
        web = f"web.shop.svc.{ZONE}"
        assert rdata_texts(ask(dnsd, INTERNET, web, "A"), "A") == ["10.96.0.20"]
        assert not ask(dnsd, INTERNET, web, "AAAA").answer  # 2001:db8:42::20 is not in the list
        assert rdata_texts(ask(dnsd, INTERNET, f"db.private.svc.{ZONE}", "AAAA"), "AAAA") == ["fd00:10:96::5"]
        assert rdata_texts(ask(dnsd, INTERNET, f"lb.shop.svc.{ZONE}", "A"), "A") == ["10.96.0.30"]
        assert_nxdomain_with_soa(ask(dnsd, INTERNET, f"peers.shop.svc.{ZONE}", "AAAA"))
        # the cluster still gets everything
        assert rdata_texts(ask(dnsd, CLUSTER, web, "AAAA"), "AAAA") == ["2001:db8:42::20"]


def test_changes_reach_both_views_per_event(tmp_path: Path) -> None:
    """An edit that gives the hidden service a global address publishes it; removing it hides it again."""
    with start(tmp_path) as dnsd:
        path = tmp_path / "cluster.yaml"
        name = f"db.private.svc.{ZONE}"
        assert ask(dnsd, INTERNET, name, "AAAA").rcode() == dns.rcode.NXDOMAIN
        serial = ask(dnsd, CLUSTER, ZONE, "SOA").answer[0][0].serial
        path.write_text(MANIFESTS.replace('clusterIPs: ["fd00:10:96::5"]',
                                          'clusterIPs: ["fd00:10:96::5", "2001:db8:42::5"]'))
        deadline = time.monotonic() + 20
        while rdata_texts(ask(dnsd, INTERNET, name, "AAAA"), "AAAA") != ["2001:db8:42::5"]:
            assert time.monotonic() < deadline, dnsd.output()
            time.sleep(0.05)
        assert rdata_texts(ask(dnsd, CLUSTER, name, "AAAA"), "AAAA") == ["2001:db8:42::5", "fd00:10:96::5"]
        # one serial for both views
        internet_soa = ask(dnsd, INTERNET, ZONE, "SOA").answer[0][0].serial
        assert internet_soa == ask(dnsd, CLUSTER, ZONE, "SOA").answer[0][0].serial != serial
        path.write_text(MANIFESTS)
        while ask(dnsd, INTERNET, name, "AAAA").rcode() != dns.rcode.NXDOMAIN:
            assert time.monotonic() < deadline, dnsd.output()
            time.sleep(0.05)
        assert rdata_texts(ask(dnsd, CLUSTER, name, "AAAA"), "AAAA") == ["fd00:10:96::5"]


def test_zone_transfer_carries_the_internets_view(tmp_path: Path) -> None:
    with start(tmp_path, "--transfer-allow", "127.0.0.0/8") as dnsd:
        zone = dns.zone.Zone(ZONE)
        dns.query.inbound_xfr(dnsd.host, zone, port=dnsd.port, timeout=10, source=CLUSTER)
        texts = {(n.to_text(), dns.rdatatype.to_text(rds.rdtype), rd.to_text())
                 for n, rds in zone.iterate_rdatasets() for rd in rds}
        assert ("web.shop.svc", "AAAA", "2001:db8:42::20") in texts
        assert ("lb.shop.svc", "A", "203.0.113.30") in texts
        addresses = {t[2] for t in texts if t[1] in ("A", "AAAA")}
        assert addresses == {"2001:db8:42::20", "203.0.113.30", "2001:db8:43::1", "2001:db8::53"}
        assert not any(t[0].startswith(("db.private", "private.svc", "priv.peers")) for t in texts)


def test_every_worker_answers_the_internet_from_its_view(tmp_path: Path) -> None:
    """With --workers 2 the follower builds the Internet's view from the batches it follows."""
    path = tmp_path / "cluster.yaml"
    path.write_text(MANIFESTS)
    with DnsdProcess("--zone", ZONE, "--source", f"file:{path}", "--allow-recursion", "127.0.0.1/32",
                     "--recursion", "off", "--workers", "2", http="127.0.0.1:0") as dnsd:
        deadline = time.monotonic() + 30
        name, hidden = f"lb.shop.svc.{ZONE}", f"db.private.svc.{ZONE}"
        per_worker: dict[str, float] = {}
        # SO_REUSEPORT spreads clients by source port: fresh sockets reach both processes
        while len(per_worker) < 2 or not all(v > 0 for v in per_worker.values()):
            assert time.monotonic() < deadline, (per_worker, dnsd.output())
            for _ in range(20):
                assert rdata_texts(ask(dnsd, INTERNET, name, "A"), "A") == ["203.0.113.30"]
                assert ask(dnsd, INTERNET, hidden, "AAAA").rcode() == dns.rcode.NXDOMAIN
                assert rdata_texts(ask(dnsd, CLUSTER, name, "A"), "A") == ["10.96.0.30", "203.0.113.30"]
            time.sleep(0.2)  # followers report their counters once a second
            per_worker = {labels["worker"]: value
                          for labels, value in dnsd.metric_samples("dnsd_worker_queries_total")}
