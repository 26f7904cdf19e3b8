"""The HTTP side of a running dnsd: metrics move as queries are answered, health and readiness, shutdown."""

from __future__ import annotations

import json
import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import EXAMPLE_ARGS
from tests.dnsd_process import DnsdProcess

Z = "c2.k8s.ooo"


def _get(proc: DnsdProcess, path: str) -> tuple[int, str]:
    url = f"http://127.0.0.1:{proc.http_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:  # loopback only
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture(scope="module")
def http_dnsd() -> DnsdProcess:
    proc = DnsdProcess(*EXAMPLE_ARGS, http="127.0.0.1:0").start()
    yield proc  # type: ignore[misc]
    proc.stop()


def test_query_counters_move_by_transport_qtype_rcode_and_source(http_dnsd: DnsdProcess) -> None:
    before = _samples(_get(http_dnsd, "/metrics")[1])
    for _ in range(3):
        http_dnsd.query(f"sample-service.default.svc.{Z}", "AAAA")
    http_dnsd.query(f"nosuch.{Z}", "A")
    http_dnsd.query(f"sample-service.default.svc.{Z}", "AAAA", tcp=True)
    http_dnsd.query("www.example.com", "A", rd=True)
    http_dnsd.query(f"x.{Z}", 65280)  # a private-use qtype: reported as "other"
    after = _samples(_get(http_dnsd, "/metrics")[1])

    def delta(**labels: str) -> float:
        return _value(after, "dnsd_queries_total", **labels) - _value(before, "dnsd_queries_total", **labels)

    assert delta(transport="udp", qtype="AAAA", rcode="NOERROR", source="zone") == 3
    assert delta(transport="udp", qtype="A", rcode="NXDOMAIN", source="zone") == 1
    assert delta(transport="tcp", qtype="AAAA", rcode="NOERROR", source="zone") == 1
    assert delta(transport="udp", qtype="A", rcode="REFUSED", source="refused") == 1
    assert delta(transport="udp", qtype="other", rcode="NXDOMAIN", source="zone") == 1
    count = "dnsd_query_duration_seconds_count"
    assert _value(after, count, source="zone") - _value(before, count, source="zone") == 6


def test_zone_gauges_and_source_metrics(http_dnsd: DnsdProcess) -> None:
    samples = _samples(_get(http_dnsd, "/metrics")[1])
    serial = int(http_dnsd.query(Z, "SOA").answer[0][0].serial)
    assert _value(samples, "dnsd_zone_serial") == serial
    assert _value(samples, "dnsd_zone_records") > 20
    assert _value(samples, "dnsd_zone_services") == 8
    assert _value(samples, "dnsd_informer_synced") == 1
    assert _value(samples, "dnsd_informer_last_sync_timestamp_seconds", kind="file") > time.time() - 3600


def test_every_metric_name_follows_the_conventions(http_dnsd: DnsdProcess) -> None:
    text = _get(http_dnsd, "/metrics")[1]
    families = [f for f in text_string_to_metric_families(text) if f.name.startswith("dnsd")]
    assert families
    for family in text_string_to_metric_families(text):
        if family.name.startswith(("python_", "process_")):
            continue  # prometheus-client's own collectors
        assert family.name.startswith("dnsd_"), family.name
        assert re.fullmatch(r"[a-z][a-z0-9_]*", family.name), family.name
        if family.type == "counter":
            assert any(s.name.endswith("_total") for s in family.samples) or not family.samples, family.name
        if "duration" in family.name or "latency" in family.name:
            assert family.name.endswith("_seconds"), family.name
        for sample in family.samples:
            assert "qname" not in sample.labels and "client" not in sample.labels


def test_healthz_and_readyz(http_dnsd: DnsdProcess) -> None:
    assert _get(http_dnsd, "/healthz") == (200, "ok\n")
    assert _get(http_dnsd, "/readyz")[0] == 200


class _StallingServer:
    """Accepts TCP connections and never answers: an API server that has not synced anything yet."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.clients: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.clients.append(client)

    def close(self) -> None:
        self.sock.close()
        for client in self.clients:
            client.close()


def test_readyz_is_503_and_zone_servfail_before_the_first_sync(tmp_path: Path) -> None:
    stall = _StallingServer()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "t",
        "clusters": [{"name": "t", "cluster": {"server": f"http://127.0.0.1:{stall.port}"}}],
        "contexts": [{"name": "t", "context": {"cluster": "t", "user": "t"}}],
        "users": [{"name": "t", "user": {"token": "x"}}],
    }))
    try:
        with DnsdProcess("--zone", Z, "--source", "kubernetes", "--kubeconfig", str(kubeconfig),
                         "--recursion", "off", http="127.0.0.1:0") as proc:
            status, body = _get(proc, "/readyz")
            assert status == 503
            assert "sync" in body
            assert _get(proc, "/healthz")[0] == 200
            assert proc.query(f"sample-service.default.svc.{Z}", "AAAA").rcode() == dns.rcode.SERVFAIL
            assert proc.query("www.example.com", "A").rcode() == dns.rcode.REFUSED
    finally:
        stall.close()


def test_sigterm_lame_duck_keeps_answering_then_exits_zero() -> None:
    proc = DnsdProcess(*EXAMPLE_ARGS, http="127.0.0.1:0", lame_duck="1.5").start()
    try:
        assert _get(proc, "/readyz")[0] == 200
        answered: list[float] = []
        failed: list[float] = []
        stop = threading.Event()

        def stream() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.settimeout(0.5)
                while not stop.is_set():
                    query = dns.message.make_query(f"sample-service.default.svc.{Z}", "AAAA")
                    sock.sendto(query.to_wire(), (proc.host, proc.port))
                    try:
                        reply = dns.message.from_wire(sock.recv(4096))
                        (answered if reply.id == query.id else failed).append(time.monotonic())
                    except (TimeoutError, OSError):
                        failed.append(time.monotonic())
                    time.sleep(0.005)

        worker = threading.Thread(target=stream)
        worker.start()
        time.sleep(0.3)
        signalled = time.monotonic()
        proc.signal(signal.SIGTERM)
        time.sleep(0.3)
        assert _get(proc, "/readyz")[0] == 503  # lame duck: not ready, still serving
        time.sleep(0.9)  # still inside the 1.5 s lame duck
        stop.set()
        worker.join(5)
        assert proc.proc is not None
        assert proc.proc.wait(10) == 0
        assert failed == [], "queries were lost during the lame duck"
        assert sum(1 for t in answered if t > signalled) > 20
        proc.wait_for_log(r"lame duck")
        proc.wait_for_log(r"shut down cleanly")
    finally:
        proc.stop()


def test_json_log_format_one_object_per_line(tmp_path: Path) -> None:
    with DnsdProcess(*EXAMPLE_ARGS, "--log-format", "json") as proc:
        proc.query(Z, "SOA")
    lines = [line for line in proc.lines if line.strip()]
    assert lines
    for line in lines:
        entry = json.loads(line)
        assert {"ts", "level", "logger", "msg"} <= entry.keys()
    assert any("listening on" in json.loads(line)["msg"] for line in lines)


def test_query_log_is_off_by_default_and_sampled_when_on() -> None:
    with DnsdProcess(*EXAMPLE_ARGS) as quiet:
        for _ in range(5):
            quiet.query(f"nosuch{_}.{Z}", "A")
        time.sleep(0.2)
    assert not any("dnsd.query" in line for line in quiet.lines)
    with DnsdProcess(*EXAMPLE_ARGS, "--query-log-sample", "1") as loud:
        loud.query(f"nosuch.{Z}", "A")
        line = loud.wait_for_log(r"dnsd\.query: client=127\.0\.0\.1 transport=udp qname=nosuch\.c2\.k8s\.ooo")
    assert "rcode=NXDOMAIN" in line
