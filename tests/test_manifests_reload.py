"""The manifests source follows its file: edits show within a second, broken edits keep old data."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import dns.rcode
import yaml

from dnsd.kube.manifests import CHILD_PARSE_BYTES
from tests.dnsd_process import EXAMPLE_MANIFESTS, DnsdProcess, rdata_texts

Z = "c2.k8s.ooo"

SERVICE = """apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec: {{clusterIP: "{ip}", clusterIPs: ["{ip}"]}}
"""


def _serial(proc: DnsdProcess) -> int:
    return int(proc.query(Z, "SOA").answer[0][0].serial)


def _wait_for(proc: DnsdProcess, name: str, expected: list[str], limit: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if rdata_texts(proc.query(name, "AAAA"), "AAAA") == expected:
            return time.monotonic() - started
        time.sleep(0.02)
    raise AssertionError(f"{name} did not become {expected} within {limit}s")


def test_edits_change_answers_within_a_second_and_serial_grows(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(SERVICE.format(ip="2001:db8:42::1"))
    with DnsdProcess("--zone", Z, "--source", f"file:{path}", "--recursion", "off") as proc:
        name = f"web.default.svc.{Z}"
        assert rdata_texts(proc.query(name, "AAAA"), "AAAA") == ["2001:db8:42::1"]
        before = _serial(proc)
        path.write_text(SERVICE.format(ip="2001:db8:42::2"))
        assert _wait_for(proc, name, ["2001:db8:42::2"], 1.0) < 1.0
        assert _serial(proc) > before

        # A broken edit: one clear error, the old answers stay.
        mark = len(proc.lines)
        path.write_text("apiVersion: v1\nkind: Service\nmetadata: {name: [unclosed\n")
        line = proc.wait_for_log(r"ERROR .*cluster\.yaml: invalid YAML at line \d+.*keeping the last good data",
                                 timeout=3, start=mark)
        assert "Traceback" not in proc.output()
        time.sleep(0.6)
        assert rdata_texts(proc.query(name, "AAAA"), "AAAA") == ["2001:db8:42::2"]
        assert sum("invalid YAML" in entry for entry in proc.lines[mark:]) == 1, line

        # The file vanishing is a source error too; data stays.
        path.unlink()
        time.sleep(0.6)
        assert rdata_texts(proc.query(name, "AAAA"), "AAAA") == ["2001:db8:42::2"]

        # Fixed again: new data is served.
        path.write_text(SERVICE.format(ip="2001:db8:42::3"))
        _wait_for(proc, name, ["2001:db8:42::3"], 1.0)

        # Removing the service makes it NXDOMAIN.
        path.write_text("")
        deadline = time.monotonic() + 1.0
        while proc.query(name, "AAAA").rcode() != dns.rcode.NXDOMAIN:
            assert time.monotonic() < deadline
            time.sleep(0.02)


def test_invalid_objects_are_skipped_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(
        SERVICE.format(ip="2001:db8:42::1")
        + "---\napiVersion: v1\nkind: Service\nmetadata: {name: Bad_Name!, namespace: default}\n"
        "spec: {clusterIP: 2001:db8:42::9}\n"
        "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: ttl-bad\n  namespace: default\n"
        "  annotations: {dnsd.k8s.ooo/ttl: soon}\nspec: {clusterIP: 2001:db8:42::8}\n"
        "---\napiVersion: v1\nkind: Service\nmetadata: {name: ext, namespace: default}\n"
        "spec: {type: ExternalName, externalName: 'not a name'}\n"
    )
    with DnsdProcess("--zone", Z, "--source", f"file:{path}", "--recursion", "off") as proc:
        assert rdata_texts(proc.query(f"web.default.svc.{Z}", "AAAA"), "AAAA") == ["2001:db8:42::1"]
        proc.wait_for_log(r"WARNING .*Bad_Name!.*not a valid DNS label")
        proc.wait_for_log(r"WARNING .*dnsd.k8s.ooo/ttl='soon'")
        proc.wait_for_log(r"WARNING .*externalName 'not a name'")
        ttl_bad = proc.query(f"ttl-bad.default.svc.{Z}", "AAAA")
        assert ttl_bad.answer[0].ttl == 30  # the bad annotation is ignored, not the service
        assert proc.query(f"ext.default.svc.{Z}", "CNAME").rcode() == dns.rcode.NXDOMAIN
        assert "Traceback" not in proc.output()


def test_json_manifests_serve_the_same_names_and_bad_json_is_one_error(tmp_path: Path) -> None:
    """`kubectl get -o json` output is read too (fast: the form for large clusters), and reloads."""
    objects = yaml.safe_load(EXAMPLE_MANIFESTS.read_text())
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(objects))
    with DnsdProcess("--zone", "c2.k8s.ooo", "--source", f"file:{path}", "--recursion", "off") as proc:
        reply = proc.query("sample-service.default.svc.c2.k8s.ooo", "AAAA")
        assert rdata_texts(reply, "AAAA") == ["2001:db8:42::10"]
        assert rdata_texts(proc.query("frontend.shop.svc.c2.k8s.ooo", "A"), "A") == ["10.96.0.20"]
        path.write_text(json.dumps(objects).replace("2001:db8:42::10", "2001:db8:42::77"))
        _wait_for(proc, "sample-service.default.svc.c2.k8s.ooo", ["2001:db8:42::77"], 2.0)
    path.write_text('{"kind": "List", "items": [')
    broken = subprocess.run([sys.executable, "-m", "dnsd", "--zone", "c2.k8s.ooo", "--source", f"file:{path}",
                             "--listen", "127.0.0.1:0", "--http", "off"], capture_output=True, text=True, timeout=30)
    assert broken.returncode == 3
    errors = [line for line in broken.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "invalid JSON" in errors[0] and str(path) in errors[0]


def test_a_large_file_is_parsed_in_a_child_process_and_reloads(tmp_path: Path) -> None:
    """Past CHILD_PARSE_BYTES the file is parsed by a short-lived child: same answers, same reloads."""
    def cluster(address_base: int) -> str:
        ports = [{"name": "http", "port": 80}]
        items = [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"svc{i}", "namespace": "big"},
                  "spec": {"clusterIPs": [f"2001:db8:42::{address_base + i:x}"], "ports": ports}}
                 for i in range(1500)]
        return yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items})

    path = tmp_path / "big.yaml"
    path.write_text(cluster(0x1000))
    assert path.stat().st_size > CHILD_PARSE_BYTES
    with DnsdProcess("--zone", "c2.k8s.ooo", "--source", f"file:{path}", "--recursion", "off") as proc:
        assert rdata_texts(proc.query("svc1499.big.svc.c2.k8s.ooo", "AAAA"), "AAAA") == ["2001:db8:42::15db"]
        path.write_text(cluster(0x3000))
        _wait_for(proc, "svc0.big.svc.c2.k8s.ooo", ["2001:db8:42::3000"], 10.0)
        path.write_text(cluster(0x3000) + "\n  broken: [")
        proc.wait_for_log("invalid YAML", timeout=10)
        assert rdata_texts(proc.query("svc7.big.svc.c2.k8s.ooo", "AAAA"), "AAAA") == ["2001:db8:42::3007"]
    assert "Traceback" not in proc.output()
