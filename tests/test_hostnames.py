"""More names: several zones, ExternalDNS hostname/TTL annotations and RFC 4592 wildcards, asked of the real dnsd.

The manifests source feeds dnsd; dnspython asks from 127.0.0.1 (the cluster, `--allow-recursion`
default) and 127.0.0.2 where the Internet's view matters.
"""

from __future__ import annotations

from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

from tests.dnsd_process import DnsdProcess, rdata_texts

ZONE, SECOND = "c2.k8s.ooo", "example.net"

MANIFESTS = """\
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Service
  metadata:
    name: web
    namespace: shop
    annotations:
      external-dns.kubernetes.io/hostname: "www.example.net, shop.c2.k8s.ooo"
      external-dns.alpha.kubernetes.io/hostname: "alpha-loses.example.net"
      external-dns.kubernetes.io/ttl: "1m30s"
  spec:
    clusterIPs: [2001:db8:42::20, 10.96.0.20]
- apiVersion: v1
  kind: Service
  metadata:
    name: api
    namespace: shop
    annotations:
      external-dns.alpha.kubernetes.io/hostname: "api.example.net,*.apps.example.net,bad_name..x,outside.example.org"
      external-dns.alpha.kubernetes.io/ttl: "42"
  spec:
    clusterIPs: [2001:db8:42::30]
- apiVersion: v1
  kind: Service
  metadata:
    name: hidden
    namespace: shop
    annotations:
      external-dns.kubernetes.io/hostname: "hidden.example.net"
  spec:
    clusterIPs: [10.96.0.40]
- apiVersion: v1
  kind: Service
  metadata:
    name: named
    namespace: shop
    annotations:
      external-dns.kubernetes.io/hostname: "host.sub.apps.example.net"
  spec:
    clusterIPs: [2001:db8:42::50]
"""


def ask(dnsd: DnsdProcess, qname: str, qtype: str, source: str = "127.0.0.1") -> dns.message.Message:
    message = dns.message.make_query(qname, qtype, use_edns=0)
    message.flags &= ~dns.flags.RD
    return dns.query.udp(message, dnsd.host, port=dnsd.port, timeout=3, source=source)


def start(tmp_path: Path, http: str = "off") -> DnsdProcess:
    path = tmp_path / "cluster.yaml"
    path.write_text(MANIFESTS)
    return DnsdProcess("--zone", ZONE, "--zone", SECOND, "--source", f"file:{path}", "--recursion", "off",
                       "--allow-recursion", "127.0.0.1/32", "--nameserver", f"ns1.{ZONE}=2001:db8::53",
                       http=http)


def test_several_zones_each_with_its_apex(tmp_path: Path) -> None:
    with start(tmp_path) as dnsd:
        for zone in (ZONE, SECOND):
            soa = ask(dnsd, zone, "SOA")
            assert soa.flags & dns.flags.AA and soa.rcode() == dns.rcode.NOERROR
            assert soa.answer[0].name.to_text() == f"{zone}."
            assert soa.answer[0][0].rname.to_text() == f"hostmaster.{zone}."
            assert rdata_texts(ask(dnsd, zone, "NS"), "NS") == [f"ns1.{ZONE}."]
            missing = ask(dnsd, f"nothing.{zone}", "A")
            assert missing.rcode() == dns.rcode.NXDOMAIN
            assert missing.authority[0].name.to_text() == f"{zone}." and missing.flags & dns.flags.AA
        # outside every zone, recursion off: REFUSED
        assert ask(dnsd, "www.example.org", "A").rcode() == dns.rcode.REFUSED


def test_hostname_annotations_both_prefixes_ttl_and_validation(tmp_path: Path) -> None:
    with start(tmp_path, http="127.0.0.1:0") as dnsd:
        www = ask(dnsd, f"www.{SECOND}", "AAAA")
        assert rdata_texts(www, "AAAA") == ["2001:db8:42::20"]
        assert www.answer[0].ttl == 90  # external-dns.kubernetes.io/ttl "1m30s"
        assert rdata_texts(ask(dnsd, f"www.{SECOND}", "A"), "A") == ["10.96.0.20"]
        assert rdata_texts(ask(dnsd, f"shop.{ZONE}", "AAAA"), "AAAA") == ["2001:db8:42::20"]
        # the GA annotation wins: the alpha one on the same Service is not used
        assert ask(dnsd, f"alpha-loses.{SECOND}", "AAAA").rcode() == dns.rcode.NXDOMAIN
        # the alpha prefix alone works, with its TTL
        api = ask(dnsd, f"api.{SECOND}", "AAAA")
        assert rdata_texts(api, "AAAA") == ["2001:db8:42::30"] and api.answer[0].ttl == 42
        # invalid names and names outside every zone are skipped with one warning each
        dnsd.wait_for_log(r"Service shop/api: annotation external-dns.alpha.kubernetes.io/hostname: 'bad_name..x'")
        dnsd.wait_for_log(r"Service shop/api: hostname outside.example.org outside every zone; skipped")
        assert ask(dnsd, "outside.example.org", "AAAA").rcode() == dns.rcode.REFUSED
        # the Internet sees the hostnames only with published addresses
        internet = ask(dnsd, f"www.{SECOND}", "A", source="127.0.0.2")
        assert internet.rcode() == dns.rcode.NOERROR and not internet.answer
        assert rdata_texts(ask(dnsd, f"www.{SECOND}", "AAAA", source="127.0.0.2"), "AAAA") == ["2001:db8:42::20"]
        assert rdata_texts(ask(dnsd, f"hidden.{SECOND}", "A"), "A") == ["10.96.0.40"]
        assert ask(dnsd, f"hidden.{SECOND}", "A", source="127.0.0.2").rcode() == dns.rcode.NXDOMAIN
        # names per source kind and view, skipped names per reason
        assert dnsd.metric("dnsd_zone_names", source="service", view="cluster") == 4
        assert dnsd.metric("dnsd_zone_names", source="service", view="internet") == 3  # hidden: RFC 1918 only
        # www, shop, api, *.apps, hidden, host.sub.apps: all in the cluster; hidden not for the Internet
        assert dnsd.metric("dnsd_zone_names", source="annotation", view="cluster") == 6
        assert dnsd.metric("dnsd_zone_names", source="annotation", view="internet") == 5
        assert dnsd.metric("dnsd_objects_skipped_total", reason="invalid_hostname") >= 1
        assert dnsd.metric("dnsd_objects_skipped_total", reason="outside_zones") >= 1


def test_wildcards_follow_rfc_4592(tmp_path: Path) -> None:
    """RFC 4592 2.2.1's cases on `*.apps.example.net` with `host.sub.apps.example.net` also present."""
    with start(tmp_path) as dnsd:
        apps = f"apps.{SECOND}"
        # one label and several labels below the closest encloser `apps` are synthesized, owner = qname
        for qname in (f"a.{apps}", f"x.y.{apps}"):
            response = ask(dnsd, qname, "AAAA")
            assert response.rcode() == dns.rcode.NOERROR and response.flags & dns.flags.AA
            assert response.answer[0].name.to_text() == f"{qname}."
            assert rdata_texts(response, "AAAA") == ["2001:db8:42::30"]
        # the wildcard owner itself answers
        assert rdata_texts(ask(dnsd, f"*.{apps}", "AAAA"), "AAAA") == ["2001:db8:42::30"]
        # a matching name of another type: NODATA from the wildcard (it exists), not NXDOMAIN
        nodata = ask(dnsd, f"a.{apps}", "TXT")
        assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer
        assert nodata.authority[0].rdtype == dns.rdatatype.SOA
        # names that exist are never matched: the owner, and the empty non-terminal `sub` above it
        assert rdata_texts(ask(dnsd, f"host.sub.{apps}", "AAAA"), "AAAA") == ["2001:db8:42::50"]
        ent = ask(dnsd, f"sub.{apps}", "AAAA")
        assert ent.rcode() == dns.rcode.NOERROR and not ent.answer
        # below an existing name the closest encloser is that name, which has no wildcard: NXDOMAIN
        assert ask(dnsd, f"z.sub.{apps}", "AAAA").rcode() == dns.rcode.NXDOMAIN
        assert ask(dnsd, f"z.host.sub.{apps}", "AAAA").rcode() == dns.rcode.NXDOMAIN
        # the closest encloser `apps` exists (ENT), the wildcard does not cover its siblings
        assert ask(dnsd, f"other.{SECOND}", "AAAA").rcode() == dns.rcode.NXDOMAIN
        # synthesized answers twice in a row (the second from the fast path) are the same
        assert rdata_texts(ask(dnsd, f"a.{apps}", "AAAA"), "AAAA") == ["2001:db8:42::30"]
