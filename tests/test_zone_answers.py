"""Every row of the naming contract, asked of the real dnsd process serving examples/cluster.yaml."""

from __future__ import annotations

import dns.flags
import dns.rcode
import dns.rdatatype
import pytest

from tests.dnsd_process import DnsdProcess, rdata_texts, rrset_texts

Z = "c2.k8s.ooo"


def test_clusterip_ipv6_only_service(example_dnsd: DnsdProcess) -> None:
    reply = example_dnsd.query(f"sample-service.default.svc.{Z}", "AAAA")
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.flags & dns.flags.AA
    assert not reply.flags & dns.flags.RA
    assert rrset_texts(reply) == [f"sample-service.default.svc.{Z}. 30 IN AAAA 2001:db8:42::10"]


def test_a_query_of_ipv6_only_service_is_nodata_with_soa(example_dnsd: DnsdProcess) -> None:
    reply = example_dnsd.query(f"sample-service.default.svc.{Z}", "A")
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer == []
    (soa,) = reply.authority
    assert soa.rdtype == dns.rdatatype.SOA
    assert soa.name.to_text() == f"{Z}."
    assert soa.ttl == 5  # min(SOA TTL 30, SOA minimum 5), RFC 2308 3
    assert soa[0].minimum == 5


def test_dual_stack_service_has_a_and_aaaa_and_ttl_annotation(example_dnsd: DnsdProcess) -> None:
    aaaa = example_dnsd.query(f"frontend.shop.svc.{Z}", "AAAA")
    a = example_dnsd.query(f"frontend.shop.svc.{Z}", "A")
    assert rrset_texts(aaaa) == [f"frontend.shop.svc.{Z}. 60 IN AAAA 2001:db8:42::20"]
    assert rrset_texts(a) == [f"frontend.shop.svc.{Z}. 60 IN A 10.96.0.20"]


def test_loadbalancer_serves_cluster_external_and_ingress_addresses(example_dnsd: DnsdProcess) -> None:
    reply = example_dnsd.query(f"gateway.shop.svc.{Z}", "AAAA")
    assert rdata_texts(reply, "AAAA") == ["2001:db8:100::30", "2001:db8:200::1", "2001:db8:42::30"]


def test_externalname_is_a_cname(example_dnsd: DnsdProcess) -> None:
    reply = example_dnsd.query(f"payments.shop.svc.{Z}", "AAAA")
    assert reply.rcode() == dns.rcode.NOERROR
    assert rrset_texts(reply) == [f"payments.shop.svc.{Z}. 30 IN CNAME api.payments.example.com."]
    cname = example_dnsd.query(f"payments.shop.svc.{Z}", "CNAME")
    assert rdata_texts(cname, "CNAME") == ["api.payments.example.com."]


def test_headless_service_answers_ready_endpoints_only(example_dnsd: DnsdProcess) -> None:
    reply = example_dnsd.query(f"db.shop.svc.{Z}", "AAAA")
    assert rdata_texts(reply, "AAAA") == ["2001:db8:43::100", "2001:db8:43::101"]


def test_headless_endpoint_hostnames(example_dnsd: DnsdProcess) -> None:
    reply = example_dnsd.query(f"db-1.db.shop.svc.{Z}", "AAAA")
    assert rrset_texts(reply) == [f"db-1.db.shop.svc.{Z}. 30 IN AAAA 2001:db8:43::101"]
    not_ready = example_dnsd.query(f"db-2.db.shop.svc.{Z}", "AAAA")
    assert not_ready.rcode() == dns.rcode.NXDOMAIN


def test_headless_srv_per_ready_endpoint_with_addresses_in_additional(example_dnsd: DnsdProcess) -> None:
    reply = example_dnsd.query(f"_postgres._tcp.db.shop.svc.{Z}", "SRV")
    assert rdata_texts(reply, "SRV") == [
        f"0 100 5432 db-0.db.shop.svc.{Z}.",
        f"0 100 5432 db-1.db.shop.svc.{Z}.",
    ]
    assert rrset_texts(reply, "additional") == [
        f"db-0.db.shop.svc.{Z}. 30 IN AAAA 2001:db8:43::100",
        f"db-1.db.shop.svc.{Z}. 30 IN AAAA 2001:db8:43::101",
    ]


def test_publish_not_ready_addresses_serves_all_with_generated_hostnames(example_dnsd: DnsdProcess) -> None:
    reply = example_dnsd.query(f"peers.shop.svc.{Z}", "AAAA")
    assert rdata_texts(reply, "AAAA") == ["2001:db8:43::200", "2001:db8:43::201"]
    srv = example_dnsd.query(f"_gossip._udp.peers.shop.svc.{Z}", "SRV")
    label = "2001-0db8-0043-0000-0000-0000-0000-0201"
    assert f"0 100 7946 {label}.peers.shop.svc.{Z}." in rdata_texts(srv, "SRV")
    host = example_dnsd.query(f"{label}.peers.shop.svc.{Z}", "AAAA")
    assert rdata_texts(host, "AAAA") == ["2001:db8:43::201"]


def test_headless_without_ready_endpoints_is_nxdomain(example_dnsd: DnsdProcess) -> None:
    reply = example_dnsd.query(f"cold.shop.svc.{Z}", "AAAA")
    assert reply.rcode() == dns.rcode.NXDOMAIN
    assert reply.authority[0].rdtype == dns.rdatatype.SOA


def test_clusterip_srv_for_named_ports_only(example_dnsd: DnsdProcess) -> None:
    http = example_dnsd.query(f"_http._tcp.sample-service.default.svc.{Z}", "SRV")
    assert rrset_texts(http) == [
        f"_http._tcp.sample-service.default.svc.{Z}. 30 IN SRV 0 100 80 sample-service.default.svc.{Z}."
    ]
    assert rrset_texts(http, "additional") == [f"sample-service.default.svc.{Z}. 30 IN AAAA 2001:db8:42::10"]
    udp = example_dnsd.query(f"_dns._udp.frontend.shop.svc.{Z}", "SRV")
    assert rdata_texts(udp, "SRV") == [f"0 100 53 frontend.shop.svc.{Z}."]
    wrong_proto = example_dnsd.query(f"_http._udp.sample-service.default.svc.{Z}", "SRV")
    assert wrong_proto.rcode() == dns.rcode.NXDOMAIN


def test_expose_false_hides_the_service(example_dnsd: DnsdProcess) -> None:
    assert example_dnsd.query(f"internal-admin.default.svc.{Z}", "AAAA").rcode() == dns.rcode.NXDOMAIN
    assert example_dnsd.query("9.9.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.2.4.0.0.8.b.d.0.1.0.0.2.ip6.arpa",
                              "PTR").rcode() == dns.rcode.NXDOMAIN


@pytest.mark.parametrize(
    ("address", "target"),
    [
        ("2001:db8:42::10", f"sample-service.default.svc.{Z}."),
        ("2001:db8:43::100", f"db-0.db.shop.svc.{Z}."),
        ("10.96.0.20", f"frontend.shop.svc.{Z}."),
    ],
)
def test_ptr_records_in_reverse_zones(example_dnsd: DnsdProcess, address: str, target: str) -> None:
    import dns.reversename

    name = dns.reversename.from_address(address).to_text()
    reply = example_dnsd.query(name, "PTR")
    assert reply.flags & dns.flags.AA
    assert rdata_texts(reply, "PTR") == [target]


def test_reverse_zone_apex_has_soa_and_ns(example_dnsd: DnsdProcess) -> None:
    reply = example_dnsd.query("2.4.0.0.8.b.d.0.1.0.0.2.ip6.arpa", "SOA")
    assert rrset_texts(reply)[0].startswith("2.4.0.0.8.b.d.0.1.0.0.2.ip6.arpa. 30 IN SOA ns1.c2.k8s.ooo.")
    ent = example_dnsd.query("0.96.10.in-addr.arpa", "PTR")  # above 20.0.96.10.in-addr.arpa
    assert ent.rcode() == dns.rcode.NOERROR and ent.answer == []
    assert example_dnsd.query("21.0.96.10.in-addr.arpa", "PTR").rcode() == dns.rcode.NXDOMAIN
    assert rdata_texts(example_dnsd.query("96.10.in-addr.arpa", "NS"), "NS") == ["ns1.c2.k8s.ooo."]


def test_address_outside_reverse_zones_is_refused(example_dnsd: DnsdProcess) -> None:
    reply = example_dnsd.query("1.0.0.127.in-addr.arpa", "PTR")
    assert reply.rcode() == dns.rcode.REFUSED


def test_dns_version_txt(example_dnsd: DnsdProcess) -> None:
    reply = example_dnsd.query(f"dns-version.{Z}", "TXT")
    assert rrset_texts(reply) == [f'dns-version.{Z}. 30 IN TXT "1.1.0"']


def test_apex_soa_and_ns_with_glue(example_dnsd: DnsdProcess) -> None:
    soa = example_dnsd.query(Z, "SOA")
    (rrset,) = soa.answer
    assert rrset[0].mname.to_text() == f"ns1.{Z}."
    assert rrset[0].rname.to_text() == f"hostmaster.{Z}."
    ns = example_dnsd.query(Z, "NS")
    assert rrset_texts(ns) == [f"{Z}. 30 IN NS ns1.{Z}."]
    assert rrset_texts(ns, "additional") == [f"ns1.{Z}. 30 IN AAAA 2001:db8:53::53"]


@pytest.mark.parametrize(
    "name",
    [f"svc.{Z}", f"default.svc.{Z}", f"shop.svc.{Z}", f"_tcp.sample-service.default.svc.{Z}",
     f"empty-team.svc.{Z}"],
)
def test_empty_non_terminals_are_nodata(example_dnsd: DnsdProcess, name: str) -> None:
    reply = example_dnsd.query(name, "A")
    assert reply.rcode() == dns.rcode.NOERROR
    assert reply.answer == []
    assert reply.authority[0].rdtype == dns.rdatatype.SOA


def test_unknown_names_are_nxdomain_with_soa(example_dnsd: DnsdProcess) -> None:
    for name in (f"nosuch.svc.{Z}", f"x.sample-service.default.svc.{Z}", f"www.{Z}"):
        reply = example_dnsd.query(name, "AAAA")
        assert reply.rcode() == dns.rcode.NXDOMAIN, name
        (soa,) = reply.authority
        assert soa.ttl == 5
        assert reply.flags & dns.flags.AA


def test_names_match_case_insensitively_and_question_is_echoed(example_dnsd: DnsdProcess) -> None:
    asked = "SaMpLe-SeRvIcE.DeFaUlT.sVc.C2.K8s.OoO"
    reply = example_dnsd.query(asked, "AAAA")
    assert reply.question[0].name.to_text() == asked + "."
    assert rdata_texts(reply, "AAAA") == ["2001:db8:42::10"]
    again = example_dnsd.query(asked.lower(), "AAAA")
    assert again.question[0].name.to_text() == asked.lower() + "."


def test_ipv6_listener_answers_too(example_dnsd: DnsdProcess) -> None:
    host, port = example_dnsd.bound[1]
    assert host == "::1"
    reply = example_dnsd.query(f"sample-service.default.svc.{Z}", "AAAA", host=host, port=port)
    assert rdata_texts(reply, "AAAA") == ["2001:db8:42::10"]
    tcp = example_dnsd.query(f"sample-service.default.svc.{Z}", "AAAA", host=host, port=port, tcp=True)
    assert rdata_texts(tcp, "AAAA") == ["2001:db8:42::10"]


def test_cluster_domain_below_the_zone() -> None:
    from tests.dnsd_process import EXAMPLE_MANIFESTS

    with DnsdProcess("--zone", "k8s.ooo", "--cluster-domain", Z, "--source", f"file:{EXAMPLE_MANIFESTS}",
                     "--recursion", "off") as proc:
        reply = proc.query(f"sample-service.default.svc.{Z}", "AAAA")
        assert rdata_texts(reply, "AAAA") == ["2001:db8:42::10"]
        ent = proc.query(Z, "A")
        assert ent.rcode() == dns.rcode.NOERROR and ent.answer == []
        assert ent.authority[0].name.to_text() == "k8s.ooo."
        assert rdata_texts(proc.query("k8s.ooo", "NS"), "NS") == ["ns1.k8s.ooo."]
        assert rrset_texts(proc.query(f"dns-version.{Z}", "TXT")) == [f'dns-version.{Z}. 30 IN TXT "1.1.0"']
        assert proc.query("other.k8s.ooo", "A").rcode() == dns.rcode.NXDOMAIN
        assert proc.query("k8s.ooo", "SOA").answer[0].name.to_text() == "k8s.ooo."
