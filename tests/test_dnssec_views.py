"""Both views signed, each by its own signer: the Internet's NSEC3 chain knows only the Internet's names.

dnsd runs with `--allow-recursion 127.0.0.1/32` (a client at 127.0.0.1 is the cluster, one at 127.0.0.2
the Internet) and serves a Service whose only address is a ULA (not published). Two Unbounds validate
it, one asking from each address, with the DS from `dnsd keygen` as their only trust anchor: the
Internet gets a validated NXDOMAIN whose NSEC3 owner names never include the hash of the unpublished
name (with the cluster's chain, the next closer name's own NSEC3 would be there: the existence leak),
the cluster gets the validated positive answer. An AXFR (which carries the Internet's view) passes
`dnssec-verify -z` and holds neither the private name nor its hash; after the Service is given a
published address and taken back, both views' signers have followed and everything validates again.
"""

from __future__ import annotations

import base64
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.zone
import pytest

from dnsd.dnssec.nsec3 import b32, hash_name
from tests.dnsd_process import DnsdProcess
from tests.secondaries import write_manifests
from tests.test_dnssec_signing import NETWORK, REVERSE, ZONE, _keys, _tool, unbound_for

CLUSTER, INTERNET = "127.0.0.1", "127.0.0.2"
PUBLIC = {"web": "2001:db8:42::1", "api": "2001:db8:42::2"}
SECRET = "secret.default.svc." + ZONE
SECRET_HASH = b32(hash_name(dns.name.from_text(SECRET).to_wire(), b"", 0)).decode()


class Views:
    def __init__(self, dnsd: DnsdProcess, cluster_port: int, internet_port: int, manifests: Path) -> None:
        self.dnsd, self.cluster_port, self.internet_port, self.manifests = dnsd, cluster_port, internet_port, manifests

    def resolve(self, port: int, qname: str, qtype: str) -> dns.message.Message:
        return dns.query.udp(dns.message.make_query(qname, qtype, want_dnssec=True), "127.0.0.1", port=port,
                             timeout=5)

    def validated(self, port: int, qname: str, qtype: str, rcode: int) -> dns.message.Message:
        reply = self.resolve(port, qname, qtype)
        assert reply.rcode() == rcode, reply.to_text()
        assert reply.flags & dns.flags.AD, f"not validated:\n{reply.to_text()}"
        return reply


@pytest.fixture(scope="module")
def views(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Views]:
    work = tmp_path_factory.mktemp("views")
    (work / "anchors").write_text("\n".join(_keys("ecdsap256sha256", work / "keys")) + "\n")
    manifests = work / "cluster.yaml"
    write_manifests(manifests, {**PUBLIC, "secret": "fd00:10:96::5"})
    dnsd = DnsdProcess("--zone", ZONE, "--reverse-zone", NETWORK, "--recursion", "off", "--source",
                       f"file:{manifests}", "--allow-recursion", "127.0.0.1/32", "--dnssec-keys",
                       str(work / "keys"), "--transfer-allow", "127.0.0.0/8")
    with dnsd, unbound_for(work, dnsd.port, (ZONE, REVERSE), name="cluster") as cluster_port, \
            unbound_for(work, dnsd.port, (ZONE, REVERSE), outgoing=INTERNET, name="internet") as internet_port:
        yield Views(dnsd, cluster_port, internet_port, manifests)


def _nsec3_owner_labels(message: dns.message.Message) -> set[str]:
    return {rrset.name.labels[0].decode().lower() for rrset in message.authority
            if rrset.rdtype == dns.rdatatype.NSEC3}


def _axfr(views: Views, work: Path) -> dns.zone.Zone:
    """The AXFR (asked from the Internet's address), checked by `dnssec-verify -z`."""
    zone = dns.zone.from_xfr(dns.query.xfr(CLUSTER, ZONE, port=views.dnsd.port, timeout=10, source=INTERNET))
    path = work / "axfr.zone"
    zone.to_file(str(path), relativize=False)
    result = subprocess.run([_tool("dnssec-verify"), "-z", "-o", ZONE, str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return zone


def _leaks(zone: dns.zone.Zone) -> list[str]:
    """Names in the transfer that speak of the private Service: its owner name or its NSEC3 hash."""
    found = []
    for name, node in zone.nodes.items():
        text = name.to_text().lower()
        if text.startswith("secret.") or SECRET_HASH in text:
            found.append(text)
        for rdataset in node.rdatasets:
            if rdataset.rdtype == dns.rdatatype.NSEC3:
                found += [text + " next" for rd in rdataset
                          if base64.b32hexencode(rd.next).decode().lower().rstrip("=") == SECRET_HASH]
    return found


def test_internet_denial_validates_and_does_not_hash_the_private_name(views: Views) -> None:
    reply = views.validated(views.internet_port, SECRET, "AAAA", dns.rcode.NXDOMAIN)
    assert not reply.answer
    direct = views.dnsd.query(SECRET, "AAAA", want_dnssec=True, host=CLUSTER, timeout=5)
    assert direct.rcode() == dns.rcode.NOERROR  # the cluster (127.0.0.1): it exists
    direct = dns.query.udp(dns.message.make_query(SECRET, "AAAA", want_dnssec=True), CLUSTER,
                           port=views.dnsd.port, timeout=5, source=INTERNET)
    assert direct.rcode() == dns.rcode.NXDOMAIN
    owners = _nsec3_owner_labels(direct)
    assert len(owners) >= 2, direct.to_text()
    assert SECRET_HASH not in owners, direct.to_text()
    for rrset in direct.authority:  # and no NSEC3 points to it as the next hashed owner
        if rrset.rdtype == dns.rdatatype.NSEC3:
            nexts = {base64.b32hexencode(rd.next).decode().lower().rstrip("=") for rd in rrset}
            assert SECRET_HASH not in nexts, direct.to_text()


def test_cluster_gets_the_signed_positive_answer(views: Views) -> None:
    reply = views.validated(views.cluster_port, SECRET, "AAAA", dns.rcode.NOERROR)
    assert [rd.to_text() for rrset in reply.answer if rrset.rdtype == dns.rdatatype.AAAA for rd in rrset] == [
        "fd00:10:96::5"]
    views.validated(views.internet_port, "web.default.svc." + ZONE, "AAAA", dns.rcode.NOERROR)
    views.validated(views.internet_port, "web.default.svc." + ZONE, "TXT", dns.rcode.NOERROR)  # NODATA
    views.validated(views.cluster_port, "nope.default.svc." + ZONE, "AAAA", dns.rcode.NXDOMAIN)


def test_transfer_is_the_internet_view_signed(views: Views, tmp_path: Path) -> None:
    zone = _axfr(views, tmp_path)
    assert zone.get_rdataset("web.default.svc." + ZONE + ".", "AAAA") is not None
    assert _leaks(zone) == []


def _wait(views: Views, port: int, qname: str, qtype: str, rcode: int) -> None:
    deadline = time.monotonic() + 30
    while views.resolve(port, qname, qtype).rcode() != rcode:
        assert time.monotonic() < deadline, (qname, rcode)
        time.sleep(0.2)


def test_both_signers_follow_changes(views: Views, tmp_path: Path) -> None:
    write_manifests(views.manifests, {**PUBLIC, "secret": "2001:db8:42::9"})  # published now
    _wait(views, views.internet_port, SECRET, "AAAA", dns.rcode.NOERROR)
    reply = views.validated(views.internet_port, SECRET, "AAAA", dns.rcode.NOERROR)
    assert "2001:db8:42::9" in reply.to_text()
    zone = _axfr(views, tmp_path)
    assert zone.get_rdataset(SECRET + ".", "AAAA") is not None
    write_manifests(views.manifests, {**PUBLIC, "secret": "fd00:10:96::5"})  # and private again
    _wait(views, views.internet_port, SECRET, "AAAA", dns.rcode.NXDOMAIN)
    views.validated(views.internet_port, SECRET, "AAAA", dns.rcode.NXDOMAIN)
    reply = views.validated(views.cluster_port, SECRET, "AAAA", dns.rcode.NOERROR)
    assert "fd00:10:96::5" in reply.to_text()
    assert _leaks(_axfr(views, tmp_path)) == []
