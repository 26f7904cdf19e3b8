"""Ingress and Gateway API hostname sources (`--ingress`, `--gateway-api`), asked of the real dnsd.

Two sources feed dnsd: the manifests file (the same objects as `kubectl get -o yaml` prints) and the
live informer against the fake API server (tests/fakekube.py), whose `/status` subresource a test
writes the way a controller does. dnspython asks from 127.0.0.1 (the cluster: `--allow-recursion
127.0.0.1/32`) and from 127.0.0.2 (the Internet, which sees only published addresses).
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import dns.zone

from tests.dnsd_process import DnsdProcess, rdata_texts
from tests.fakekube import FakeKube

ZONE, SECOND = "c2.k8s.ooo", "example.net"
GW_API = "gateway.networking.k8s.io/v1"


# ---- object factories (API JSON shape) -----------------------------------------------------------

def ingress(name: str, hosts: list[str], *, namespace: str = "shop", ips: tuple[str, ...] = (),
            hostnames: tuple[str, ...] = (), ingress_class: str | None = "nginx",
            legacy_class: str | None = None, tls: list[str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if legacy_class:
        meta["annotations"] = {"kubernetes.io/ingress.class": legacy_class}
    spec: dict[str, Any] = {"rules": [{"host": h, "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": {
        "service": {"name": "web", "port": {"number": 80}}}}]}} for h in hosts]}
    if ingress_class:
        spec["ingressClassName"] = ingress_class
    if tls:
        spec["tls"] = [{"hosts": tls, "secretName": f"{name}-tls"}]
    entries = [{"ip": ip} for ip in ips] + [{"hostname": h} for h in hostnames]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "metadata": meta, "spec": spec,
            "status": {"loadBalancer": {"ingress": entries} if entries else {}}}


def gateway(name: str, listeners: list[tuple[str, int, str | None]], addresses: list[dict[str, str]], *,
            namespace: str = "infra", gateway_class: str = "public") -> dict[str, Any]:
    spec_listeners = []
    for lname, port, hostname in listeners:
        listener: dict[str, Any] = {"name": lname, "port": port, "protocol": "HTTPS" if port == 443 else "HTTP"}
        if hostname is not None:
            listener["hostname"] = hostname
        spec_listeners.append(listener)
    return {"apiVersion": GW_API, "kind": "Gateway", "metadata": {"name": name, "namespace": namespace},
            "spec": {"gatewayClassName": gateway_class, "listeners": spec_listeners},
            "status": {"addresses": addresses}}


def route(name: str, hostnames: list[str], parents: list[dict[str, Any]], *, kind: str = "HTTPRoute",
          namespace: str = "shop", accepted: list[dict[str, Any]] | None = None,
          accepted_status: str = "True") -> dict[str, Any]:
    """A route whose status accepts `accepted` (default: every parentRef) with Accepted=`accepted_status`."""
    status_parents = [
        {"parentRef": ref, "controllerName": "example.net/gateway-controller",
         "conditions": [{"type": "Accepted", "status": accepted_status, "reason": "Accepted",
                         "lastTransitionTime": "2024-01-01T00:00:00Z", "observedGeneration": 1, "message": ""},
                        {"type": "ResolvedRefs", "status": "True", "reason": "ResolvedRefs",
                         "lastTransitionTime": "2024-01-01T00:00:00Z", "observedGeneration": 1, "message": ""}]}
        for ref in (parents if accepted is None else accepted)
    ]
    spec: dict[str, Any] = {"parentRefs": parents}
    if hostnames:
        spec["hostnames"] = hostnames
    return {"apiVersion": GW_API, "kind": kind, "metadata": {"name": name, "namespace": namespace},
            "spec": spec, "status": {"parents": status_parents}}


def gw_ref(name: str = "gw", **extra: Any) -> dict[str, Any]:
    return {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": name, "namespace": "infra", **extra}


PUBLIC_ADDRESSES = [{"type": "IPAddress", "value": "2001:db8:2::1"}, {"value": "10.1.0.1"}]  # type unset: an IP


def manifests() -> list[dict[str, Any]]:
    return [
        # Ingress: ip status (GUA + private), TLS hosts, a wildcard host, an invalid and an outside host
        ingress("web", ["www.example.net", "*.apps.example.net", "bad_host..example.net", "web.example.org"],
                ips=("2001:db8:1::10", "10.0.0.10"), tls=["secure.example.net"]),
        # Ingress: hostname status (a cloud load balancer) -> CNAME
        ingress("cloud", ["lb.example.net"], hostnames=("elb-1.eu.lb.cloud.example.com",)),
        # class: the legacy annotation counts when ingressClassName is unset; another class is filtered out
        ingress("legacy", ["legacy.example.net"], ips=("2001:db8:1::20",), ingress_class=None, legacy_class="nginx"),
        ingress("other", ["other.example.net"], ips=("2001:db8:1::30",), ingress_class="traefik"),
        # Gateways: `gw` (class public) with a wildcard, an exact and a hostname-less listener
        gateway("gw", [("https", 443, "*.gw.example.net"), ("api", 8443, "api.example.net"), ("any", 80, None)],
                PUBLIC_ADDRESSES),
        gateway("hostgw", [("web", 80, "cname.example.net")],
                [{"type": "Hostname", "value": "gw.lb.cloud.example.com"}]),
        gateway("private", [("web", 80, "private.example.net")], [{"type": "IPAddress", "value": "2001:db8:9::1"}],
                gateway_class="internal"),
        # Routes attached by parentRefs
        route("by-section", ["shop.example.net"], [gw_ref(sectionName="any")]),
        route("by-port", ["api.example.net", "not-on-listener.example.net"], [gw_ref(port=8443)]),
        route("deep", ["a.b.gw.example.net", "nomatch.example.net"], [gw_ref(sectionName="https")]),
        route("rejected", ["rejected.example.net"], [gw_ref(sectionName="any")], accepted_status="False"),
        route("no-status", ["nostatus.example.net"], [gw_ref(sectionName="any")], accepted=[]),
        route("status-only", ["statusonly.example.net"], [gw_ref("elsewhere")], accepted=[gw_ref()]),
        route("to-private", ["privroute.example.net"], [gw_ref("private")]),
        # a parentRef without namespace means the route's own: found from infra, not from shop
        route("same-ns", ["samens.example.net"], [{"name": "gw", "sectionName": "any"}], namespace="infra"),
        route("other-ns", ["otherns.example.net"], [{"name": "gw", "sectionName": "any"}]),
        route("grpc", ["grpc.example.net"], [gw_ref(sectionName="any")], kind="GRPCRoute"),
        route("tls", ["tls.example.net"], [gw_ref(sectionName="any")], kind="TLSRoute"),
    ]


# ---- the manifests source -------------------------------------------------------------------------

def ask(dnsd: DnsdProcess, qname: str, qtype: str, source: str = "127.0.0.1") -> dns.message.Message:
    message = dns.message.make_query(qname, qtype, use_edns=0)
    message.flags &= ~dns.flags.RD
    return dns.query.udp(message, dnsd.host, port=dnsd.port, timeout=3, source=source)


def start_file(tmp_path: Path, *extra: str, http: str = "off") -> DnsdProcess:
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests()}))
    return DnsdProcess("--zone", ZONE, "--zone", SECOND, "--source", f"file:{path}", "--recursion", "off",
                       "--allow-recursion", "127.0.0.1/32", "--ingress", "--ingress-class", "nginx",
                       "--gateway-api", "--gateway-class", "public", *extra, http=http)


def test_ingress_hosts_from_the_manifests(tmp_path: Path) -> None:
    with start_file(tmp_path, http="127.0.0.1:0") as dnsd:
        for host in (f"www.{SECOND}", f"secure.{SECOND}"):  # spec.rules[].host and spec.tls[].hosts
            assert rdata_texts(ask(dnsd, host, "AAAA"), "AAAA") == ["2001:db8:1::10"]
            assert rdata_texts(ask(dnsd, host, "A"), "A") == ["10.0.0.10"]
            assert ask(dnsd, host, "A").answer[0].ttl == 30
        # hostname status: a CNAME to the load balancer's name
        cname = ask(dnsd, f"lb.{SECOND}", "A")
        assert cname.flags & dns.flags.AA and rdata_texts(cname, "CNAME") == ["elb-1.eu.lb.cloud.example.com."]
        # class filter: the legacy annotation is honoured, another class is not served
        assert rdata_texts(ask(dnsd, f"legacy.{SECOND}", "AAAA"), "AAAA") == ["2001:db8:1::20"]
        assert ask(dnsd, f"other.{SECOND}", "AAAA").rcode() == dns.rcode.NXDOMAIN
        # an Ingress wildcard is an RFC 4592 wildcard in the zone (k8s_gateway and ExternalDNS do the same)
        for qname in (f"a.apps.{SECOND}", f"x.y.apps.{SECOND}"):
            wild = ask(dnsd, qname, "AAAA")
            assert wild.answer[0].name.to_text() == f"{qname}." and rdata_texts(wild, "AAAA") == ["2001:db8:1::10"]
        # invalid and outside hosts: skipped, one warning per object, counted
        dnsd.wait_for_log(r"Ingress shop/web: host 'bad_host\.\.example\.net' not a valid host name; skipped")
        dnsd.wait_for_log(r"Ingress shop/web: host web\.example\.org outside every zone; skipped")
        assert sum(1 for line in dnsd.lines if "Ingress shop/web: host web.example.org" in line) == 1
        assert ask(dnsd, "web.example.org", "AAAA").rcode() == dns.rcode.REFUSED
        assert dnsd.metric("dnsd_objects_skipped_total", reason="invalid_hostname") >= 1
        assert dnsd.metric("dnsd_objects_skipped_total", reason="outside_zones") >= 1
        # names per source kind: www, secure, *.apps, lb, legacy; Gateways *.gw, api, cname; routes shop, api,
        # a.b.gw, samens, grpc, tls (every address here has a global one beside it, so the Internet sees them all)
        for view in ("cluster", "internet"):
            assert dnsd.metric("dnsd_zone_names", source="ingress", view=view) == 5
            assert dnsd.metric("dnsd_zone_names", source="gateway", view=view) == 3
            assert dnsd.metric("dnsd_zone_names", source="route", view=view) == 6  # and samens
        # the Internet: only published addresses; the CNAME is unaffected
        internet = ask(dnsd, f"www.{SECOND}", "A", source="127.0.0.2")
        assert internet.rcode() == dns.rcode.NOERROR and not internet.answer
        assert rdata_texts(ask(dnsd, f"www.{SECOND}", "AAAA", source="127.0.0.2"), "AAAA") == ["2001:db8:1::10"]
        assert rdata_texts(ask(dnsd, f"lb.{SECOND}", "A", source="127.0.0.2"), "CNAME") == [
            "elb-1.eu.lb.cloud.example.com."]


def test_gateway_listeners_and_routes_from_the_manifests(tmp_path: Path) -> None:
    with start_file(tmp_path) as dnsd:
        # the listener wildcard, with both address families of status.addresses
        for qname in (f"anything.gw.{SECOND}", f"x.y.gw.{SECOND}"):
            assert rdata_texts(ask(dnsd, qname, "AAAA"), "AAAA") == ["2001:db8:2::1"]
            assert rdata_texts(ask(dnsd, qname, "A"), "A") == ["10.1.0.1"]
        assert rdata_texts(ask(dnsd, f"api.{SECOND}", "AAAA"), "AAAA") == ["2001:db8:2::1"]  # exact listener
        # a Hostname address: CNAME
        assert rdata_texts(ask(dnsd, f"cname.{SECOND}", "AAAA"), "CNAME") == ["gw.lb.cloud.example.com."]
        # routes attached by sectionName (to a listener without hostname), HTTP, GRPC and TLS routes
        for host in ("shop", "grpc", "tls"):
            assert rdata_texts(ask(dnsd, f"{host}.{SECOND}", "AAAA"), "AAAA") == ["2001:db8:2::1"], host
        # attached by port: only the listener on 8443 (api.example.net), so the other name does not intersect
        assert ask(dnsd, f"not-on-listener.{SECOND}", "AAAA").rcode() == dns.rcode.NXDOMAIN
        # `*.gw.example.net` listener x `a.b.gw.example.net` route = `a.b.gw.example.net`: a real name, so
        # its empty non-terminal `b.gw` exists (NODATA) instead of being synthesized from the wildcard
        # (RFC 4592 2.2.1), and below it the closest encloser has no wildcard (NXDOMAIN)
        assert rdata_texts(ask(dnsd, f"a.b.gw.{SECOND}", "AAAA"), "AAAA") == ["2001:db8:2::1"]
        ent = ask(dnsd, f"b.gw.{SECOND}", "AAAA")
        assert ent.rcode() == dns.rcode.NOERROR and not ent.answer and ent.authority[0].rdtype == dns.rdatatype.SOA
        assert ask(dnsd, f"z.a.b.gw.{SECOND}", "AAAA").rcode() == dns.rcode.NXDOMAIN
        assert ask(dnsd, f"nomatch.{SECOND}", "AAAA").rcode() == dns.rcode.NXDOMAIN  # outside the listener's
        # not accepted, not in status.parents, accepted only for a parent it does not reference: none
        assert rdata_texts(ask(dnsd, f"samens.{SECOND}", "AAAA"), "AAAA") == ["2001:db8:2::1"]
        assert ask(dnsd, f"otherns.{SECOND}", "AAAA").rcode() == dns.rcode.NXDOMAIN
        for host in ("rejected", "nostatus", "statusonly"):
            assert ask(dnsd, f"{host}.{SECOND}", "AAAA").rcode() == dns.rcode.NXDOMAIN, host
        # the class filter: a Gateway of another class, and routes attached to it, are not served
        assert ask(dnsd, f"private.{SECOND}", "AAAA").rcode() == dns.rcode.NXDOMAIN
        assert ask(dnsd, f"privroute.{SECOND}", "AAAA").rcode() == dns.rcode.NXDOMAIN
        # both zones keep their apex
        for zone in (ZONE, SECOND):
            soa = ask(dnsd, zone, "SOA")
            assert soa.flags & dns.flags.AA and soa.answer[0].name.to_text() == f"{zone}."
            assert soa.answer[0][0].rname.to_text() == f"hostmaster.{zone}."
        # the Internet: the private Gateway address is withheld, the global one served
        internet = ask(dnsd, f"shop.{SECOND}", "A", source="127.0.0.2")
        assert internet.rcode() == dns.rcode.NOERROR and not internet.answer
        assert rdata_texts(ask(dnsd, f"shop.{SECOND}", "AAAA", source="127.0.0.2"), "AAAA") == ["2001:db8:2::1"]
        assert rdata_texts(ask(dnsd, f"shop.{SECOND}", "A"), "A") == ["10.1.0.1"]


def test_sources_off_by_default(tmp_path: Path) -> None:
    """Without --ingress and --gateway-api the same file serves none of these names."""
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests()}))
    with DnsdProcess("--zone", ZONE, "--zone", SECOND, "--source", f"file:{path}", "--recursion", "off") as dnsd:
        for host in ("www", "shop", "api", "lb"):
            assert ask(dnsd, f"{host}.{SECOND}", "AAAA").rcode() == dns.rcode.NXDOMAIN, host


def ready(dnsd: DnsdProcess, timeout: float = 30) -> None:
    """Until /readyz is 200: with --workers, every follower has reported that it is bound and synced."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{dnsd.http_port}/readyz", timeout=3) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("dnsd not ready:\n" + dnsd.output())


def answers_everywhere(dnsd: DnsdProcess, qname: str, qtype: str, expected: list[str], timeout: float = 30) -> None:
    """Until ten queries in a row (each from a fresh source port, so spread over the processes) agree."""
    deadline = time.monotonic() + timeout
    streak = 0
    while streak < 10:
        assert time.monotonic() < deadline, f"{qname}: not {expected} in every process"
        streak = streak + 1 if rdata_texts(ask(dnsd, qname, qtype), qtype) == expected else 0


def test_workers_and_a_large_file_serve_the_same_names(tmp_path: Path) -> None:
    """`--workers 2`: the followers get the objects in their start-up snapshot and in every batch; a
    file large enough to be parsed in child processes carries them too (pickled slim records)."""
    many = [ingress(f"bulk{i}", [f"bulk{i}.example.net"], ips=(f"2001:db8:5::{i:x}",)) for i in range(600)]
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [*manifests(), *many]}))
    assert path.stat().st_size > 128 * 1024  # CHILD_PARSE_BYTES: parsed in a child process
    with DnsdProcess("--zone", ZONE, "--zone", SECOND, "--source", f"file:{path}", "--recursion", "off",
                     "--ingress", "--gateway-api", "--gateway-class", "public", "--workers", "2",
                     http="127.0.0.1:0") as dnsd:
        ready(dnsd)
        # dnspython takes a fresh source port for each query, so the kernel spreads them over both processes
        for _ in range(20):
            assert rdata_texts(ask(dnsd, f"bulk599.{SECOND}", "AAAA"), "AAAA") == ["2001:db8:5::257"]
            assert rdata_texts(ask(dnsd, f"shop.{SECOND}", "AAAA"), "AAAA") == ["2001:db8:2::1"]
        # a change of the file reaches every process: the route loses its acceptance, a new Ingress appears
        objects = [o for o in manifests() if o["metadata"]["name"] != "by-section"]
        objects.append(route("by-section", ["shop.example.net"], [gw_ref(sectionName="any")], accepted_status="False"))
        objects.append(ingress("late", ["late.example.net"], ips=("2001:db8:5::ffff",), ingress_class="any"))
        path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [*objects, *many]}))
        answers_everywhere(dnsd, f"late.{SECOND}", "AAAA", ["2001:db8:5::ffff"])
        for _ in range(20):
            assert rdata_texts(ask(dnsd, f"late.{SECOND}", "AAAA"), "AAAA") == ["2001:db8:5::ffff"]
            assert ask(dnsd, f"shop.{SECOND}", "AAAA").rcode() == dns.rcode.NXDOMAIN


# ---- the live informer against the fake API server ------------------------------------------------

async def aask(proc: DnsdProcess, qname: str, qtype: str = "AAAA", source: str = "127.0.0.1") -> dns.message.Message:
    query = dns.message.make_query(qname, qtype)
    query.flags &= ~dns.flags.RD
    return await dns.asyncquery.udp(query, proc.host, port=proc.port, timeout=2.0, source=source)


async def wait_for(proc: DnsdProcess, qname: str, qtype: str, expected: list[str], *, source: str = "127.0.0.1",
                   rcode: int = dns.rcode.NOERROR, timeout: float = 20) -> None:
    """Until the answer's rdatas of `qtype` (CNAME when asked for) are `expected` with `rcode`."""
    last = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    response = await aask(proc, qname, qtype, source)
                except dns.exception.Timeout:
                    continue
                last = (dns.rcode.to_text(response.rcode()), rdata_texts(response, qtype))
                if response.rcode() == rcode and last[1] == expected:
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"{qname} {qtype}: last answer {last}, wanted {expected}") from None


@asynccontextmanager
async def live(tmp_path: Path, *args: str) -> AsyncIterator[tuple[FakeKube, DnsdProcess]]:
    fake = FakeKube()
    await fake.start()
    kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
    proc = DnsdProcess("--zone", ZONE, "--zone", SECOND, "--source", "kubernetes", "--kubeconfig", str(kubeconfig),
                       "--recursion", "off", "--allow-recursion", "127.0.0.1/32", *args)
    await asyncio.to_thread(proc.start)
    try:
        yield fake, proc
    finally:
        await asyncio.to_thread(proc.stop)
        if proc.proc is not None and proc.proc.stdout is not None:
            proc.proc.stdout.close()
        await fake.stop()


async def write_status(fake: FakeKube, resource: str, namespace: str, name: str, status: dict[str, Any], *,
                       patch: bool) -> None:
    """Write `/status` over HTTP, as a controller does: PATCH (merge patch) or PUT of the whole object."""
    group = "networking.k8s.io" if resource == "ingresses" else "gateway.networking.k8s.io"
    url = f"{fake.url}/apis/{group}/v1/namespaces/{namespace}/{resource}/{name}/status"
    headers = {"Authorization": f"Bearer {fake.token}"}
    async with aiohttp.ClientSession() as session:
        if patch:
            request = session.patch(url, json={"status": status}, headers={
                **headers, "Content-Type": "application/merge-patch+json"})
        else:
            obj = json.loads(fake.objects[resource][(namespace, name)].raw)
            obj["status"] = status
            request = session.put(url, json=obj, headers=headers)
        async with request as response:
            assert response.status == 200, await response.text()


async def test_ingress_live_status_updates_and_class_filter(tmp_path: Path) -> None:
    async with live(tmp_path, "--ingress", "--ingress-class", "nginx") as (fake, proc):
        fake.put(ingress("web", ["www.example.net"], ips=("2001:db8:1::10",), tls=["secure.example.net"]))
        fake.put(ingress("cloud", ["lb.example.net"], hostnames=("elb-1.lb.cloud.example.com",)))
        fake.put(ingress("other", ["other.example.net"], ips=("2001:db8:1::30",), ingress_class="traefik"))
        fake.put(ingress("outside", ["www.example.org"], ips=("2001:db8:1::40",)))
        await wait_for(proc, f"www.{SECOND}", "AAAA", ["2001:db8:1::10"])
        await wait_for(proc, f"secure.{SECOND}", "AAAA", ["2001:db8:1::10"])
        assert rdata_texts(await aask(proc, f"lb.{SECOND}", "A"), "CNAME") == ["elb-1.lb.cloud.example.com."]
        assert (await aask(proc, f"other.{SECOND}")).rcode() == dns.rcode.NXDOMAIN
        await asyncio.to_thread(proc.wait_for_log, r"Ingress shop/outside: host www\.example\.org outside every zone")
        # the controller adds an address (merge PATCH of /status): served live, in both views as published
        await write_status(fake, "ingresses", "shop", "web", {"loadBalancer": {"ingress": [
            {"ip": "2001:db8:1::10"}, {"ip": "2001:db8:1::11"}, {"ip": "192.168.5.5"}]}}, patch=True)
        await wait_for(proc, f"www.{SECOND}", "AAAA", ["2001:db8:1::10", "2001:db8:1::11"])
        await wait_for(proc, f"www.{SECOND}", "A", ["192.168.5.5"])
        await wait_for(proc, f"www.{SECOND}", "A", [], source="127.0.0.2")
        await wait_for(proc, f"www.{SECOND}", "AAAA", ["2001:db8:1::10", "2001:db8:1::11"], source="127.0.0.2")
        # the Ingress changes class: it leaves the zone; it comes back with the right one
        changed = ingress("web", ["www.example.net"], ips=("2001:db8:1::10",), ingress_class="traefik")
        fake.put(changed)
        await wait_for(proc, f"www.{SECOND}", "AAAA", [], rcode=dns.rcode.NXDOMAIN)
        fake.put(ingress("web", ["www.example.net"], ips=("2001:db8:1::12",)))
        await wait_for(proc, f"www.{SECOND}", "AAAA", ["2001:db8:1::12"])
        fake.delete("ingresses", "shop", "web")
        await wait_for(proc, f"www.{SECOND}", "AAAA", [], rcode=dns.rcode.NXDOMAIN)
        # the informer watched (not only listed) the kind
        assert fake.watching("ingresses") >= 1


async def test_gateway_routes_live(tmp_path: Path) -> None:
    async with live(tmp_path, "--gateway-api") as (fake, proc):
        fake.put(gateway("gw", [("https", 443, "*.gw.example.net"), ("any", 80, None)],
                         [{"type": "IPAddress", "value": "10.1.0.1"}]))
        fake.put(route("shop", ["shop.example.net"], [gw_ref(sectionName="any")], accepted=[]))
        fake.put(route("deep", ["a.b.gw.example.net"], [gw_ref(sectionName="https")]))
        await wait_for(proc, f"a.b.gw.{SECOND}", "A", ["10.1.0.1"])
        await wait_for(proc, f"x.gw.{SECOND}", "A", ["10.1.0.1"])  # the listener wildcard
        # not yet accepted: not published; the controller accepts it (PUT of /status): published
        assert (await aask(proc, f"shop.{SECOND}", "A")).rcode() == dns.rcode.NXDOMAIN
        await write_status(fake, "httproutes", "shop", "shop", route(
            "shop", ["shop.example.net"], [gw_ref(sectionName="any")])["status"], patch=False)
        await wait_for(proc, f"shop.{SECOND}", "A", ["10.1.0.1"])
        # private address only: the Internet does not see the route's name at all
        await wait_for(proc, f"shop.{SECOND}", "A", [], source="127.0.0.2", rcode=dns.rcode.NXDOMAIN)
        # the Gateway gets a global address (status update): the route follows, in both views
        await write_status(fake, "gateways", "infra", "gw", {"addresses": [
            {"type": "IPAddress", "value": "10.1.0.1"}, {"type": "IPAddress", "value": "2001:db8:2::1"}]}, patch=True)
        await wait_for(proc, f"shop.{SECOND}", "AAAA", ["2001:db8:2::1"])
        await wait_for(proc, f"shop.{SECOND}", "AAAA", ["2001:db8:2::1"], source="127.0.0.2")
        await wait_for(proc, f"shop.{SECOND}", "A", [], source="127.0.0.2")
        assert rdata_texts(await aask(proc, f"shop.{SECOND}", "A"), "A") == ["10.1.0.1"]
        # GRPCRoute and TLSRoute are watched too
        fake.put(route("grpc", ["grpc.example.net"], [gw_ref(sectionName="any")], kind="GRPCRoute"))
        fake.put(route("tls", ["tls.example.net"], [gw_ref(sectionName="any")], kind="TLSRoute"))
        await wait_for(proc, f"grpc.{SECOND}", "AAAA", ["2001:db8:2::1"])
        await wait_for(proc, f"tls.{SECOND}", "AAAA", ["2001:db8:2::1"])
        # route deletion removes the name; the Gateway's deletion removes its routes' names
        fake.delete("httproutes", "shop", "shop")
        await wait_for(proc, f"shop.{SECOND}", "AAAA", [], rcode=dns.rcode.NXDOMAIN)
        fake.delete("gateways", "infra", "gw")
        await wait_for(proc, f"grpc.{SECOND}", "AAAA", [], rcode=dns.rcode.NXDOMAIN)
        await wait_for(proc, f"x.gw.{SECOND}", "AAAA", [], rcode=dns.rcode.NXDOMAIN)
        # the Gateway back: the routes that still reference it and are accepted return with it
        fake.put(gateway("gw", [("any", 80, None)], [{"type": "IPAddress", "value": "2001:db8:2::7"}]))
        await wait_for(proc, f"tls.{SECOND}", "AAAA", ["2001:db8:2::7"])
        for resource in ("gateways", "httproutes", "grpcroutes", "tlsroutes"):
            assert fake.watching(resource) >= 1, resource


async def test_namespaced_scopes_forbidden_and_gone_for_the_new_kinds(tmp_path: Path) -> None:
    """`--namespaces`: one informer per namespace and kind (namespaced lists, a Role each is enough); a 403
    on one kind names the permission to grant and keeps the others serving; a 410 relists."""
    fake_ingress = ingress("web", ["www.example.net"], ips=("2001:db8:1::10",), namespace="shop")
    async with live(tmp_path, "--ingress", "--gateway-api", "--namespaces", "shop", "--namespaces", "infra") as (
            fake, proc):
        fake.put(fake_ingress)
        fake.put(ingress("elsewhere", ["elsewhere.example.net"], ips=("2001:db8:1::11",), namespace="other"))
        fake.put(gateway("gw", [("any", 80, None)], [{"type": "IPAddress", "value": "2001:db8:2::1"}]))
        fake.put(route("shop", ["shop.example.net"], [gw_ref(sectionName="any")]))
        await wait_for(proc, f"www.{SECOND}", "AAAA", ["2001:db8:1::10"])
        await wait_for(proc, f"shop.{SECOND}", "AAAA", ["2001:db8:2::1"])
        assert (await aask(proc, f"elsewhere.{SECOND}")).rcode() == dns.rcode.NXDOMAIN
        lists = {(r.resource, r.namespace) for r in fake.lists()}
        for resource in ("ingresses", "gateways", "httproutes", "grpcroutes", "tlsroutes"):
            assert {(resource, "shop"), (resource, "infra")} <= lists and (resource, None) not in lists
        # 410 on every watch: the informers list again, and what changed meanwhile is served
        fake.send_error_410()
        fake.put(route("late", ["late.example.net"], [gw_ref(sectionName="any")], kind="TLSRoute"))
        await wait_for(proc, f"late.{SECOND}", "AAAA", ["2001:db8:2::1"])
        await wait_for(proc, f"www.{SECOND}", "AAAA", ["2001:db8:1::10"])
    fake2 = FakeKube()
    fake2.inject(resource="httproutes", status=403)
    fake2.put(gateway("gw", [("web", 80, "gw.example.net")], [{"type": "IPAddress", "value": "2001:db8:2::1"}]))
    await fake2.start()
    kubeconfig = fake2.write_kubeconfig(tmp_path / "kubeconfig2")
    proc2 = DnsdProcess("--zone", ZONE, "--zone", SECOND, "--source", "kubernetes", "--kubeconfig", str(kubeconfig),
                        "--recursion", "off", "--gateway-api")
    await asyncio.to_thread(proc2.start)
    try:
        line = await asyncio.to_thread(proc2.wait_for_log, r"forbidden: cannot list gateway\.networking\.k8s\.io/"
                                       r"httproutes .*apiGroups: \[\"gateway\.networking\.k8s\.io\"\], "
                                       r"resources: \[\"httproutes\"\]", 20)
        assert "ClusterRole" in line
        # the zone is not ready until every kind listed once: SERVFAIL, never a cacheable NXDOMAIN
        assert (await aask(proc2, f"gw.{SECOND}")).rcode() == dns.rcode.SERVFAIL
        fake2.clear_faults()
        await wait_for(proc2, f"gw.{SECOND}", "AAAA", ["2001:db8:2::1"], timeout=60)  # after its backoff
    finally:
        await asyncio.to_thread(proc2.stop)
        if proc2.proc is not None and proc2.proc.stdout is not None:
            proc2.proc.stdout.close()
        await fake2.stop()


def test_zone_transfer_carries_the_new_names(tmp_path: Path) -> None:
    """AXFR of the second zone holds the Ingress, Gateway and route names (and nothing filtered out)."""
    with start_file(tmp_path, "--transfer-allow", "127.0.0.1/32") as dnsd:
        zone = dns.zone.from_xfr(dns.query.xfr(dnsd.host, SECOND, port=dnsd.port, timeout=10))
        names = {name.to_text() for name in zone.nodes}
        assert {"www", "secure", "*.apps", "lb", "legacy", "*.gw", "api", "cname", "shop", "a.b.gw", "samens",
                "grpc", "tls", "@"} <= names
        assert not names & {"other", "private", "privroute", "rejected", "nostatus", "statusonly", "otherns",
                            "not-on-listener", "nomatch"}
        assert zone.find_rdataset("lb", "CNAME")[0].target.to_text() == "elb-1.eu.lb.cloud.example.com."


def test_gateway_api_hostname_intersection() -> None:
    """The intersection rules that answers alone cannot tell apart (the listener's wildcard covers them)."""
    from dnsd.kube.model import intersect_hostnames

    assert intersect_hostnames("*.x.net", ("a.b.x.net", "x.net", "a.y.net")) == ("a.b.x.net",)  # 1+ labels
    assert intersect_hostnames("a.x.net", ("*.x.net",)) == ("a.x.net",)
    assert intersect_hostnames("*.x.net", ("*.a.x.net",)) == ("*.a.x.net",)  # of two wildcards the narrower
    assert intersect_hostnames("*.a.x.net", ("*.x.net",)) == ("*.a.x.net",)
    assert intersect_hostnames("*.a.net", ("*.b.net",)) == ()
    assert intersect_hostnames("*.x.net", ()) == ("*.x.net",)  # a route without hostnames takes the listener's
    assert intersect_hostnames(None, ("a.y.net",)) == ("a.y.net",)  # a listener without hostname takes the route's
    assert intersect_hostnames(None, ()) == ()
