"""The behaviour-on-the-wire contract, against the real process: flags, EDNS, truncation, TCP, errors."""

from __future__ import annotations

import socket
import struct
import subprocess
import time
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

from tests.dnsd_process import DnsdProcess, rdata_texts, read_frame

Z = "c2.k8s.ooo"


def _raw_udp(proc: DnsdProcess, payload: bytes, timeout: float = 1.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(payload, (proc.host, proc.port))
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


def test_refused_outside_the_zone_without_recursion(example_dnsd: DnsdProcess) -> None:
    reply = example_dnsd.query("www.example.com", "A", rd=True)
    assert reply.rcode() == dns.rcode.REFUSED
    assert not reply.flags & dns.flags.RA
    assert not reply.flags & dns.flags.AA
    assert reply.flags & dns.flags.RD  # copied from the query


def test_root_ns_is_answered_promptly(example_dnsd: DnsdProcess) -> None:
    """CoreDNS's forward health check asks `. IN NS`; any prompt answer keeps dnsd marked healthy."""
    started = time.monotonic()
    reply = example_dnsd.query(".", "NS", rd=True, timeout=1.0)
    assert time.monotonic() - started < 0.5
    assert reply.rcode() == dns.rcode.REFUSED


def test_edns_is_echoed_with_our_payload_size(example_dnsd: DnsdProcess) -> None:
    reply = example_dnsd.query(f"sample-service.default.svc.{Z}", "AAAA", payload=4096)
    assert reply.edns == 0
    assert reply.payload == 1232
    plain = example_dnsd.query(f"sample-service.default.svc.{Z}", "AAAA", edns=False)
    assert plain.edns == -1
    assert rdata_texts(plain, "AAAA") == ["2001:db8:42::10"]


def test_do_bit_is_echoed(example_dnsd: DnsdProcess) -> None:
    reply = example_dnsd.query(f"sample-service.default.svc.{Z}", "AAAA", want_dnssec=True)
    assert reply.ednsflags & dns.flags.DO


def test_edns_version_above_zero_gets_badvers(example_dnsd: DnsdProcess) -> None:
    reply = example_dnsd.query(f"sample-service.default.svc.{Z}", "AAAA", edns=1)
    assert reply.rcode() == dns.rcode.BADVERS
    assert reply.edns == 0
    assert reply.answer == []


def test_edns_options_such_as_cookies_are_ignored(example_dnsd: DnsdProcess) -> None:
    message = dns.message.make_query(f"sample-service.default.svc.{Z}", "AAAA", use_edns=0,
                                     options=[dns.edns.GenericOption(10, b"\x01" * 8)])
    reply = dns.query.udp(message, example_dnsd.host, port=example_dnsd.port, timeout=2)
    assert rdata_texts(reply, "AAAA") == ["2001:db8:42::10"]


def test_any_gets_a_minimal_answer(example_dnsd: DnsdProcess) -> None:
    reply = example_dnsd.query(f"frontend.shop.svc.{Z}", "ANY")
    assert reply.rcode() == dns.rcode.NOERROR
    assert len(reply.answer) == 1  # one RRset, RFC 8482 4.1


def test_zone_transfer_is_refused(example_dnsd: DnsdProcess) -> None:
    reply = example_dnsd.query(Z, "AXFR", tcp=True)
    assert reply.rcode() == dns.rcode.REFUSED


def test_other_classes_are_refused(example_dnsd: DnsdProcess) -> None:
    message = dns.message.make_query("version.bind", "TXT", "CH")
    reply = dns.query.udp(message, example_dnsd.host, port=example_dnsd.port, timeout=2)
    assert reply.rcode() == dns.rcode.REFUSED


@pytest.mark.parametrize("opcode", [dns.opcode.NOTIFY, dns.opcode.UPDATE, dns.opcode.STATUS])
def test_other_opcodes_get_notimp(example_dnsd: DnsdProcess, opcode: int) -> None:
    message = dns.message.make_query(Z, "SOA")
    message.set_opcode(opcode)
    raw = _raw_udp(example_dnsd, message.to_wire())
    assert raw is not None
    reply = dns.message.from_wire(raw)
    assert reply.rcode() == dns.rcode.NOTIMP
    assert reply.id == message.id


def test_qdcount_zero_and_two_get_formerr(example_dnsd: DnsdProcess) -> None:
    zero = struct.pack("!HHHHHH", 0x1234, 0, 0, 0, 0, 0)
    raw = _raw_udp(example_dnsd, zero)
    assert raw is not None and raw[:2] == b"\x12\x34" and raw[3] & 0xF == dns.rcode.FORMERR
    question = dns.message.make_query(Z, "SOA").to_wire()[12:]
    two = struct.pack("!HHHHHH", 0x4321, 0, 2, 0, 0, 0) + question + question
    raw = _raw_udp(example_dnsd, two)
    assert raw is not None and raw[3] & 0xF == dns.rcode.FORMERR


def test_malformed_question_gets_formerr(example_dnsd: DnsdProcess) -> None:
    # A label length that runs past the end of the packet.
    bad = struct.pack("!HHHHHH", 0x2222, 0, 1, 0, 0, 0) + b"\x3fabc"
    raw = _raw_udp(example_dnsd, bad)
    assert raw is not None and raw[:2] == b"\x22\x22" and raw[3] & 0xF == dns.rcode.FORMERR
    # A compression pointer in the question.
    pointer = struct.pack("!HHHHHH", 0x2223, 0, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01"
    raw = _raw_udp(example_dnsd, pointer)
    assert raw is not None and raw[3] & 0xF == dns.rcode.FORMERR


def test_garbage_is_dropped_and_the_server_keeps_answering(example_dnsd: DnsdProcess) -> None:
    assert _raw_udp(example_dnsd, b"\x00\x01\x02", timeout=0.3) is None
    response_bit = dns.message.make_query(Z, "SOA")
    response_bit.flags |= dns.flags.QR
    assert _raw_udp(example_dnsd, response_bit.to_wire(), timeout=0.3) is None  # never answer answers
    assert example_dnsd.query(Z, "SOA").rcode() == dns.rcode.NOERROR


@pytest.fixture(scope="module")
def big_dnsd(tmp_path_factory: pytest.TempPathFactory) -> DnsdProcess:
    """A headless service with 60 endpoints: its AAAA answer exceeds 512 and 1232 bytes."""
    path: Path = tmp_path_factory.mktemp("big") / "big.yaml"
    endpoints = "\n".join(
        f"  - addresses: ['2001:db8:43::{i:x}']\n    hostname: pod-{i}" for i in range(1, 61)
    )
    path.write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: big, namespace: default}\n"
        "spec:\n  clusterIP: None\n  ports: [{name: http, port: 80, protocol: TCP}]\n---\n"
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n"
        "metadata: {name: big-1, namespace: default, labels: {kubernetes.io/service-name: big}}\n"
        f"addressType: IPv6\nports: [{{name: http, port: 80, protocol: TCP}}]\nendpoints:\n{endpoints}\n"
    )
    proc = DnsdProcess("--zone", Z, "--source", f"file:{path}", "--recursion", "off").start()
    yield proc  # type: ignore[misc]
    proc.stop()


def test_large_answer_is_truncated_over_udp_and_complete_over_tcp(big_dnsd: DnsdProcess) -> None:
    name = f"big.default.svc.{Z}"
    for edns in (False, 0):
        udp = big_dnsd.query(name, "AAAA", edns=edns)
        assert udp.flags & dns.flags.TC
        assert udp.answer == []
        assert len(udp.to_wire()) <= 512 if edns is False else 1232
    tcp = big_dnsd.query(name, "AAAA", tcp=True)
    assert not tcp.flags & dns.flags.TC
    assert len(rdata_texts(tcp, "AAAA")) == 60


def test_large_srv_answer_is_complete_over_tcp_with_additional(big_dnsd: DnsdProcess) -> None:
    name = f"_http._tcp.big.default.svc.{Z}"
    assert big_dnsd.query(name, "SRV", payload=4096).flags & dns.flags.TC
    tcp = big_dnsd.query(name, "SRV", tcp=True)
    assert len(rdata_texts(tcp, "SRV")) == 60
    assert sum(len(rrset) for rrset in tcp.additional) == 60


def test_dig_falls_back_to_tcp_on_truncation(big_dnsd: DnsdProcess) -> None:
    out = subprocess.run(
        ["dig", f"@{big_dnsd.host}", "-p", str(big_dnsd.port), f"big.default.svc.{Z}", "AAAA", "+short",
         "+norec", "+tries=1", "+time=2"],
        capture_output=True, text=True, timeout=10, check=True,
    ).stdout.split()
    assert len(out) == 60


def _tcp_frame(message: dns.message.Message) -> bytes:
    wire = message.to_wire()
    return struct.pack("!H", len(wire)) + wire


def test_tcp_pipelining_answers_every_query_on_one_connection(example_dnsd: DnsdProcess) -> None:
    names = [f"sample-service.default.svc.{Z}", f"frontend.shop.svc.{Z}", f"db.shop.svc.{Z}", Z]
    queries = [dns.message.make_query(n, "AAAA") for n in names]
    with socket.create_connection((example_dnsd.host, example_dnsd.port), timeout=3) as sock:
        sock.sendall(b"".join(_tcp_frame(q) for q in queries))  # all before reading any answer
        replies = [dns.message.from_wire(read_frame(sock)) for _ in queries]
    assert sorted(r.id for r in replies) == sorted(q.id for q in queries)
    by_id = {r.id: r for r in replies}
    assert rdata_texts(by_id[queries[0].id], "AAAA") == ["2001:db8:42::10"]


def test_tcp_idle_connections_are_closed() -> None:
    from tests.conftest import EXAMPLE_ARGS

    with DnsdProcess(*EXAMPLE_ARGS, "--tcp-idle-timeout", "0.5") as proc, \
            socket.create_connection((proc.host, proc.port), timeout=5) as sock:
        sock.sendall(_tcp_frame(dns.message.make_query(Z, "SOA")))
        assert dns.message.from_wire(read_frame(sock)).rcode() == dns.rcode.NOERROR
        started = time.monotonic()
        assert sock.recv(1) == b""  # the server closed the idle connection
        assert 0.3 < time.monotonic() - started < 3


def test_dig_over_udp_and_tcp(example_dnsd: DnsdProcess) -> None:
    for transport in ("+notcp", "+tcp"):
        out = subprocess.run(
            ["dig", f"@{example_dnsd.host}", "-p", str(example_dnsd.port), f"db.shop.svc.{Z}", "AAAA",
             "+short", "+norec", transport],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout.split()
        assert sorted(out) == ["2001:db8:43::100", "2001:db8:43::101"]
