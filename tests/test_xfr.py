"""Zone transfers from the real dnsd process, checked with dnspython (an independent implementation).

Refusals with the right rcode (REFUSED for an unsigned request where a key is required and for an
address outside `--transfer-allow`, NOTAUTH with BADKEY/BADSIG/BADTIME for a bad signature, NOTAUTH
for a name that is no zone apex), IXFR over UDP (our SOA alone), IXFR at the current serial, a
multi-message AXFR of a larger zone (every message below 16 KiB and TSIG-verified by dnspython, with
several queries on one TCP connection), every served zone (forward and reverse), the metrics, and the
serial: equal in two processes on the same data (manifests file and fake Kubernetes API) and not
lower after a restart.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.tsig
import dns.tsigkeyring
import dns.xfr
import dns.zone
import pytest

from tests.dnsd_process import EXAMPLE_MANIFESTS as REPO_EXAMPLE
from tests.dnsd_process import DnsdProcess
from tests.fakekube import FakeKube, service
from tests.secondaries import key_file, manifests, write_manifests

ZONE = "xfr.test"
REVERSE = "2.4.0.0.8.b.d.0.1.0.0.2.ip6.arpa"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    return key_file(tmp_path_factory.mktemp("keys"), "xfr-key")


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory, keys: tuple[Path, str]) -> Iterator[DnsdProcess]:
    """3,000 Services; transfers for 127.0.0.1 with the key, and for 127.0.0.2 (only) without one."""
    path = tmp_path_factory.mktemp("big") / "cluster.yaml"
    path.write_text(manifests({f"svc{i}": f"2001:db8:42::{i:x}" for i in range(3000)}))
    with DnsdProcess("--zone", ZONE, "--recursion", "off", "--source", f"file:{path}",
                     "--reverse-zone", "2001:db8:42::/48", "--tsig-key-file", str(keys[0]),
                     "--transfer-allow", "127.0.0.1/32=xfr-key", "--transfer-allow", "127.0.0.2/32",
                     http="127.0.0.1:0") as proc:
        yield proc


def ring(secret: str, name: str = "xfr-key") -> dict[dns.name.Name, dns.tsig.Key]:
    return dns.tsigkeyring.from_text({name: ("hmac-sha256", secret)})  # type: ignore[no-any-return]


def signed(qname: str, rdtype: str, secret: str, name: str = "xfr-key") -> dns.message.QueryMessage:
    query = dns.message.make_query(qname, rdtype)
    query.use_tsig(ring(secret, name), name)
    return query


def test_refusals_carry_the_right_rcode(big: DnsdProcess, keys: tuple[Path, str]) -> None:
    secret = keys[1]
    # unsigned, from an address whose entry needs the key
    reply = dns.query.tcp(dns.message.make_query(ZONE, "AXFR"), "127.0.0.1", port=big.port, timeout=5)
    assert reply.rcode() == dns.rcode.REFUSED and not reply.answer
    # signed with the right key, from an address no entry allows
    reply = dns.query.tcp(signed(ZONE, "AXFR", secret), big.host, port=big.port, timeout=5, source="127.0.0.3")
    assert reply.rcode() == dns.rcode.REFUSED and reply.had_tsig  # the refusal is signed
    # unknown key, wrong secret: NOTAUTH with the TSIG error, which dnspython raises as such
    with pytest.raises(dns.tsig.PeerBadKey):
        dns.query.tcp(signed(ZONE, "AXFR", secret, "nobody"), big.host, port=big.port, timeout=5)
    with pytest.raises(dns.tsig.PeerBadSignature):
        dns.query.tcp(signed(ZONE, "AXFR", "A" * 43 + "="), big.host, port=big.port, timeout=5)
    # a clock 20 minutes off: BADTIME, in a response signed with the key
    query = signed(ZONE, "AXFR", secret)
    with mock.patch("dns.renderer.time.time", return_value=time.time() - 1200):
        wire = query.to_wire()
    with socket.create_connection((big.host, big.port), timeout=5) as sock:
        dns.query.send_tcp(sock, wire)
        with pytest.raises(dns.tsig.PeerBadTime):
            dns.query.receive_tcp(sock, time.time() + 5, keyring=ring(secret), request_mac=query.mac)
    # a name that is no apex of a served zone
    reply = dns.query.tcp(signed(f"svc1.default.svc.{ZONE}", "AXFR", secret), big.host, port=big.port, timeout=5)
    assert reply.rcode() == dns.rcode.NOTAUTH
    reply = dns.query.tcp(signed("example.com", "AXFR", secret), big.host, port=big.port, timeout=5)
    assert reply.rcode() == dns.rcode.NOTAUTH
    # an address allowed without a key
    zone = dns.zone.Zone(REVERSE)
    dns.query.inbound_xfr(big.host, zone, dns.message.make_query(REVERSE, "AXFR"), port=big.port,
                          timeout=10, source="127.0.0.2")
    assert len([n for n in zone.nodes if zone[n].get_rdataset(dns.rdataclass.IN, dns.rdatatype.PTR)]) == 3000
    results = {(s[0]["kind"], s[0]["result"]): s[1] for s in big.metric_samples("dnsd_transfers_total")}
    for key in (("axfr", "refused"), ("axfr", "badkey"), ("axfr", "badsig"), ("axfr", "badtime"),
                ("axfr", "notauth"), ("axfr", "full")):
        assert results.get(key, 0) >= 1, (key, results)


def ixfr(serial: int) -> dns.message.QueryMessage:
    """An IXFR query carrying a client at `serial` (RFC 1995 3)."""
    query = dns.message.make_query(ZONE, "IXFR")
    query.authority.append(dns.rrset.from_text(f"{ZONE}.", 0, "IN", "SOA", f"ns1.{ZONE}. h.{ZONE}. {serial} 1 1 1 1"))
    return query


def test_udp_ixfr_gets_the_current_soa_alone(big: DnsdProcess, keys: tuple[Path, str]) -> None:
    current = dns.query.udp(dns.message.make_query(ZONE, "SOA"), big.host, port=big.port, timeout=3)
    serial = current.answer[0][0].serial
    for client_serial in (1, serial - 1, serial, serial + 5):
        query = ixfr(client_serial)
        query.use_tsig(ring(keys[1]), "xfr-key")
        reply = dns.query.udp(query, big.host, port=big.port, timeout=3)
        assert reply.rcode() == dns.rcode.NOERROR and reply.flags & dns.flags.AA and reply.had_tsig
        assert [(r.rdtype, r[0].serial) for r in reply.answer] == [(dns.rdatatype.SOA, serial)]
        assert len(reply.answer[0]) == 1
    # and over TCP, a client already at our serial gets that SOA alone too
    query = ixfr(serial)
    query.use_tsig(ring(keys[1]), "xfr-key")
    reply = dns.query.tcp(query, big.host, port=big.port, timeout=5)
    assert [(r.rdtype, r[0].serial) for r in reply.answer] == [(dns.rdatatype.SOA, serial)]


def _read_message(sock: socket.socket) -> bytes:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    return exactly(struct.unpack("!H", exactly(2))[0])


def test_a_large_signed_axfr_comes_in_verified_messages_below_16k_on_a_shared_connection(
        big: DnsdProcess, keys: tuple[Path, str]) -> None:
    secret = keys[1]
    soa = dns.message.make_query(ZONE, "SOA", id=1111)
    axfr = dns.message.make_query(ZONE, "AXFR", id=2222)
    for query in (soa, axfr):
        query.use_tsig(ring(secret), "xfr-key")
    with socket.create_connection((big.host, big.port), timeout=10) as sock:
        sock.sendall(b"".join(struct.pack("!H", len(w)) + w for w in (soa.to_wire(), axfr.to_wire(), soa.to_wire())))
        # The two SOA answers may come between the transfer's messages (RFC 5936 4.1.2 allows it).
        soa_answers: list[dns.message.Message] = []
        context = None
        records = soas = 0
        sizes: list[int] = []
        serial = None
        while soas < 2 or len(soa_answers) < 2:
            message = _read_message(sock)
            if struct.unpack_from("!H", message)[0] == 1111:
                soa_answers.append(dns.message.from_wire(message, keyring=ring(secret), request_mac=soa.mac))
                continue
            sizes.append(len(message))
            # dnspython carries the previous MAC in tsig_ctx (RFC 8945 5.3.1) and checks every message
            parsed = dns.message.from_wire(message, keyring=ring(secret), request_mac=axfr.mac, xfr=True,
                                           origin=dns.name.from_text(ZONE), tsig_ctx=context, multi=True)
            context = parsed.tsig_ctx
            assert parsed.id == 2222 and parsed.flags & dns.flags.AA and parsed.had_tsig
            for rrset in parsed.answer:
                records += len(rrset)
                if rrset.rdtype == dns.rdatatype.SOA:
                    soas += 1
                    serial = rrset[0].serial if serial is None else serial
                    assert rrset[0].serial == serial
    assert [a.answer[0][0].serial for a in soa_answers] == [serial, serial]
    assert len(sizes) > 4 and max(sizes) < 16384 and min(sizes[:-1]) > 12000, sizes
    # 3,000 Services: AAAA + SRV each, apex NS, glue-less ns1 (out of the zone here), dns-version TXT, 2 SOA
    assert records == 3000 * 2 + 1 + 1 + 2


def test_notify_to_dnsd_is_refused(big: DnsdProcess) -> None:
    notify = dns.message.make_query(ZONE, "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    reply = dns.query.udp(notify, big.host, port=big.port, timeout=3)
    assert reply.opcode() == dns.opcode.NOTIFY and reply.rcode() == dns.rcode.REFUSED


def _serial(proc: DnsdProcess) -> int:
    reply = dns.query.udp(dns.message.make_query(ZONE, "SOA"), proc.host, port=proc.port, timeout=3)
    return int(reply.answer[0][0].serial)


def test_two_processes_on_one_file_have_one_serial_and_a_restart_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    write_manifests(path, {"a": "2001:db8:42::a", "b": "2001:db8:42::b"})
    args = ("--zone", ZONE, "--recursion", "off", "--source", f"file:{path}")
    with DnsdProcess(*args) as one, DnsdProcess(*args) as two:
        first = _serial(one)
        assert first == _serial(two) == int(path.stat().st_mtime)
        write_manifests(path, {"a": "2001:db8:42::a", "b": "2001:db8:42::bb"})
        deadline = time.monotonic() + 10
        while not (_serial(one) == _serial(two) != first):
            assert time.monotonic() < deadline, (_serial(one), _serial(two))
            time.sleep(0.05)
        second = _serial(one)
        one.stop()
        with DnsdProcess(*args) as again:
            assert _serial(again) == second


def test_two_processes_on_one_cluster_have_one_serial_and_a_restart_is_not_lower(tmp_path: Path) -> None:
    async def run() -> None:
        fake = FakeKube()
        await fake.start()
        try:
            for i in range(30):
                fake.put(service("default", f"s{i}", [f"2001:db8:42::{i:x}"]))
            kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")
            args = ("--zone", ZONE, "--recursion", "off", "--source", "kubernetes", "--kubeconfig", str(kubeconfig))

            async def agreed(procs: list[DnsdProcess], want: int) -> None:
                got: list[int] = []
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    try:
                        got = [await asyncio.to_thread(_serial, p) for p in procs]
                    except (dns.exception.Timeout, IndexError):
                        got = []
                    if got == [want] * len(procs):
                        return
                    await asyncio.sleep(0.05)
                raise AssertionError(f"serials {got}, wanted {want} in both:\n"
                                     + "\n".join(p.output()[-3000:] for p in procs))

            one, two = DnsdProcess(*args), DnsdProcess(*args)
            await asyncio.to_thread(one.start)
            # a change between the two starts: one watches it, two lists it
            fake.put(service("default", "late", ["2001:db8:42::1a7e"]))
            await asyncio.to_thread(two.start)
            try:
                await agreed([one, two], fake.rv)
                fake.put(service("default", "s3", ["2001:db8:42::3333"]))
                fake.put(service("default", "s4", ["2001:db8:42::4"], annotations={"team": "x"}))  # no DNS change
                await agreed([one, two], fake.rv)
                before = fake.rv
                await asyncio.to_thread(two.stop)
                two = DnsdProcess(*args)
                await asyncio.to_thread(two.start)
                await agreed([one, two], before)
            finally:
                await asyncio.to_thread(one.stop)
                await asyncio.to_thread(two.stop)
        finally:
            await fake.stop()

    asyncio.run(run())


def _axfr_records(messages: list[bytes]) -> set[str]:
    records: set[str] = set()
    for raw in messages:
        for rrset in dns.message.from_wire(raw, xfr=True, origin=dns.name.from_text(ZONE)).answer:
            records.update(rrset.to_text().splitlines())
    return records


def _axfr_messages(sock: socket.socket) -> list[bytes]:
    """The messages of one AXFR on `sock`, up to the closing SOA."""
    messages: list[bytes] = []
    soas = 0
    while soas < 2:
        messages.append(_read_message(sock))
        soas += sum(1 for rrset in dns.message.from_wire(messages[-1], xfr=True).answer
                    if rrset.rdtype == dns.rdatatype.SOA)
    return messages


def test_a_paused_transfer_sends_the_zone_of_its_serial_and_never_stalls_answers(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    services = {f"svc{i}": f"2001:db8:42::{i:x}" for i in range(3000)}
    write_manifests(path, services)
    with DnsdProcess("--zone", ZONE, "--recursion", "off", "--source", f"file:{path}",
                     "--transfer-allow", "127.0.0.0/8", http="127.0.0.1:0") as proc:
        reference = socket.create_connection((proc.host, proc.port), timeout=10)
        with reference:
            query = dns.message.make_query(ZONE, "AXFR").to_wire()
            reference.sendall(struct.pack("!H", len(query)) + query)
            before = _axfr_records(_axfr_messages(reference))
        old_serial = _serial(proc)
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills at once: dnsd must wait for us
        slow.settimeout(10)
        slow.connect((proc.host, proc.port))
        with slow:
            slow.sendall(struct.pack("!H", len(query)) + query)
            first = [_read_message(slow)]
            # while the transfer waits for its client: answers go on, and the zone changes under it
            for i in range(100):
                services[f"svc{i}"] = f"2001:db8:42::f:{i:x}"
            for i in range(100, 200):
                del services[f"svc{i}"]
            write_manifests(path, services)
            deadline = time.monotonic() + 10
            while _serial(proc) == old_serial:
                assert time.monotonic() < deadline, proc.output()
                time.sleep(0.05)
            reply = dns.query.udp(dns.message.make_query(f"svc5.default.svc.{ZONE}", "AAAA"), proc.host,
                                  port=proc.port, timeout=2)
            assert reply.answer[0][0].to_text() == "2001:db8:42::f:5"
            during = _axfr_records(first + _axfr_messages_after(slow, first))
        assert during == before  # exactly the zone at the transfer's serial
        with socket.create_connection((proc.host, proc.port), timeout=10) as fresh:
            fresh.sendall(struct.pack("!H", len(query)) + query)
            after = _axfr_records(_axfr_messages(fresh))
        assert "svc5.default.svc 30 IN AAAA 2001:db8:42::f:5" in after  # relative to the zone's origin
        assert not any(r.startswith("svc150.default.svc ") for r in after)
        assert len(before) - len(after) == 100 * 2  # AAAA and SRV of each deleted Service
        serials = proc.metric_samples("dnsd_ixfr_journal_serials")
        assert serials and serials[0][1] >= 1


def _axfr_messages_after(sock: socket.socket, first: list[bytes]) -> list[bytes]:
    soas = sum(1 for raw in first for rrset in dns.message.from_wire(raw, xfr=True).answer
               if rrset.rdtype == dns.rdatatype.SOA)
    messages: list[bytes] = []
    while soas < 2:
        messages.append(_read_message(sock))
        soas += sum(1 for rrset in dns.message.from_wire(messages[-1], xfr=True).answer
                    if rrset.rdtype == dns.rdatatype.SOA)
    return messages


def test_notify_is_retried_until_answered_and_coalesces_changes(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    services = {"a": "2001:db8:42::a"}
    write_manifests(path, services)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as secondary:
        secondary.bind(("127.0.0.1", 0))
        secondary.settimeout(15)

        def receive() -> tuple[dns.message.Message, tuple[str, int], float]:
            data, peer = secondary.recvfrom(4096)
            return dns.message.from_wire(data), peer, time.monotonic()

        with DnsdProcess("--zone", ZONE, "--recursion", "off", "--source", f"file:{path}",
                         "--notify", f"127.0.0.1:{secondary.getsockname()[1]}", http="127.0.0.1:0") as proc:
            first, _, at = receive()
            assert first.opcode() == dns.opcode.NOTIFY and first.flags & dns.flags.AA
            assert first.question[0].rdtype == dns.rdatatype.SOA and first.question[0].name.to_text() == f"{ZONE}."
            assert first.answer[0][0].serial == _serial(proc)  # our SOA in the answer section (NSD needs it)
            retry, _, again = receive()  # not answered: sent again after a second
            assert retry.answer[0][0].serial == first.answer[0][0].serial and again - at >= 0.8
            for n in range(3):  # changes faster than the secondary answers
                services[f"n{n}"] = f"2001:db8:42::{n + 1:x}"
                write_manifests(path, services)
                time.sleep(0.3)
            newest = _serial(proc)
            deadline = time.monotonic() + 20
            while True:  # the next NOTIFY carries the newest serial; answer it
                message, peer, _ = receive()
                if message.answer[0][0].serial == newest:
                    break
                assert time.monotonic() < deadline
            answer = dns.message.make_response(message)
            answer.flags |= dns.flags.AA
            secondary.sendto(answer.to_wire(), peer)
            secondary.settimeout(3)
            with pytest.raises(TimeoutError):  # acknowledged: no more NOTIFY for this serial
                receive()
            samples = {s[0]["result"]: s[1] for s in proc.metric_samples("dnsd_notifies_total")}
            assert samples["acknowledged"] == 1 and samples["timeout"] >= 2, samples
        assert proc.wait_for_log(f"notify 127.0.0.1:\\d+ zone={ZONE} serial={newest} result=acknowledged")


def test_ixfr_applies_exactly_in_dnspython_and_falls_back_to_the_whole_zone(tmp_path: Path) -> None:
    """dnspython applies our IXFR to its copy of the zone and ends with the zone a fresh AXFR gives; a serial
    the journal does not hold gets the whole zone in the IXFR answer (RFC 1995 4)."""
    path = tmp_path / "cluster.yaml"
    services = {f"s{i}": f"2001:db8:42::{i:x}" for i in range(50)}
    write_manifests(path, services)
    with DnsdProcess("--zone", ZONE, "--recursion", "off", "--source", f"file:{path}",
                     "--reverse-zone", "2001:db8:42::/48", "--transfer-allow", "127.0.0.0/8") as proc:
        copy = dns.zone.Zone(ZONE)
        dns.query.inbound_xfr(proc.host, copy, port=proc.port, timeout=10)
        start = copy.get_soa().serial
        for step in range(3):
            services[f"s{step}"] = f"2001:db8:42::a:{step:x}"  # changed
            del services[f"s{10 + step}"]  # deleted
            services[f"new{step}"] = f"2001:db8:42::b:{step:x}"  # added
            serial = _serial(proc)
            write_manifests(path, services)
            deadline = time.monotonic() + 10
            while _serial(proc) == serial:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        reply = dns.query.tcp(ixfr(start), proc.host, port=proc.port, timeout=5, one_rr_per_rrset=True)
        reply_soas = [r for r in reply.answer if r.rdtype == dns.rdatatype.SOA]
        assert len(reply_soas) == 2 + 3 * 2  # incremental: our SOA twice, old and new SOA per serial
        query, _ = dns.xfr.make_query(copy, serial=start)  # dnspython's own IXFR, applied to its copy
        dns.query.inbound_xfr(proc.host, copy, query, port=proc.port, timeout=10)
        fresh = dns.zone.Zone(ZONE)
        dns.query.inbound_xfr(proc.host, fresh, port=proc.port, timeout=10)
        assert copy.get_soa().serial == fresh.get_soa().serial == _serial(proc)
        assert copy.to_text() == fresh.to_text()
        # a serial dnsd never had: the whole zone, AXFR-style, inside the IXFR answer
        full = dns.query.tcp(ixfr(start - 1000), proc.host, port=proc.port, timeout=5, one_rr_per_rrset=True)
        kinds = [r.rdtype for r in full.answer]
        assert kinds[0] == kinds[-1] == dns.rdatatype.SOA and dns.rdatatype.SOA not in kinds[1:-1]
        assert len(kinds) == sum(len(rdataset) for _, rdataset in fresh.iterate_rdatasets()) + 1
        # an IXFR without the SOA it should carry (RFC 1995 3) is still answered, with the whole zone
        bare = dns.query.tcp(dns.message.make_query(ZONE, "IXFR"), proc.host, port=proc.port, timeout=5,
                             one_rr_per_rrset=True)
        assert bare.rcode() == dns.rcode.NOERROR and [r.rdtype for r in bare.answer] == kinds


@pytest.mark.parametrize(("flags", "message"), [
    (["--tsig-key-file", "{missing}"], "tsig: {missing}: cannot read"),
    (["--tsig-key-file", "{bad}"], "algorithm 'hmac-md5' is not one of hmac-sha256, hmac-sha384, hmac-sha512"),
    (["--transfer-allow", "127.0.0.0/8=nokey"], "--transfer-allow names key 'nokey', which no --tsig-key-file holds"),
    (["--notify", "127.0.0.1:5399=nokey"], "--notify names key 'nokey', which no --tsig-key-file holds"),
])
def test_key_problems_stop_start_up_with_one_line(tmp_path: Path, flags: list[str], message: str) -> None:
    import subprocess
    import sys

    bad = tmp_path / "bad.key"
    bad.write_text('key "old" { algorithm hmac-md5; secret "Pxe+vv4RWMid8BWM4Se1mLq0jZsbAAmluBFjzCMtYJ8="; };\n')
    names = {"missing": str(tmp_path / "missing.key"), "bad": str(bad)}
    argv = [sys.executable, "-m", "dnsd", "--zone", ZONE, "--source", f"file:{REPO_EXAMPLE}", "--recursion", "off",
            "--listen", "127.0.0.1:0", "--http", "off", *(f.format(**names) for f in flags)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 3, done.stderr
    errors = [line for line in done.stderr.splitlines() if "start-up failed" in line]
    assert len(errors) == 1 and message.format(**names) in errors[0], done.stderr


def test_transfers_over_ipv6_follow_the_acl(tmp_path: Path) -> None:
    with DnsdProcess("--zone", ZONE, "--recursion", "off", "--source", f"file:{REPO_EXAMPLE}",
                     "--transfer-allow", "::1/128", listen=("[::1]:0",)) as proc:
        zone = dns.zone.Zone(ZONE)
        dns.query.inbound_xfr("::1", zone, port=proc.port, timeout=10)
        assert zone.get_soa() is not None and len(zone.nodes) > 1
    with DnsdProcess("--zone", ZONE, "--recursion", "off", "--source", f"file:{REPO_EXAMPLE}",
                     "--transfer-allow", "127.0.0.1/32", listen=("[::1]:0",)) as proc:
        reply = dns.query.tcp(dns.message.make_query(ZONE, "AXFR"), "::1", port=proc.port, timeout=5)
        assert reply.rcode() == dns.rcode.REFUSED
