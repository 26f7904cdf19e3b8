"""Large manifests files are cut into runs of whole objects and parsed by several children at once.

The cut must never change what is read: for kubectl's `kind: List` layout and for multi-document YAML
the parts, parsed one by one, give exactly the objects the whole file gives; layouts it cannot cut
safely are parsed whole.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import dnsd.config
from dnsd.kube import manifests
from dnsd.kube.manifests import ManifestSource, parse_manifests, split_objects
from dnsd.zone import ZoneIndex

ZONE = "c2.k8s.ooo"


def _kubectl_list(services: int) -> str:
    """What `kubectl get ns,svc,endpointslices -A -o yaml` prints: apiVersion, items, then kind and metadata."""
    out = ["apiVersion: v1", "items:"]
    for n in range(3):
        out += ["- apiVersion: v1", "  kind: Namespace", "  metadata:", f"    name: ns{n}"]
    for i in range(services):
        out += ["- apiVersion: v1", "  kind: Service", "  metadata:", f"    name: s{i}", f"    namespace: ns{i % 3}",
                "    annotations:", "      note: |", "        - not an item", "        kind: not a key either",
                "  spec:", f'    clusterIPs: ["fd00::{i + 1:x}"]', "    ports:", "    - name: http", "      port: 80"]
        if i % 10 == 0:
            out += ["- apiVersion: discovery.k8s.io/v1", "  kind: EndpointSlice", "  metadata:", f"    name: s{i}-x",
                    f"    namespace: ns{i % 3}", "    labels:", f"      kubernetes.io/service-name: s{i}",
                    "  endpoints:", f'  - addresses: ["fd00:1::{i + 1:x}"]', "    conditions: {ready: true}"]
    out += ["kind: List", "metadata:", '  resourceVersion: ""']
    return "\n".join(out) + "\n"


def _documents(services: int) -> str:
    out = []
    for i in range(services):
        out.append(f"apiVersion: v1\nkind: Service\nmetadata:\n  name: s{i}\n  namespace: ns{i % 3}\nspec:\n"
                   f"  clusterIP: fd00::{i + 1:x}\n  ports:\n  - name: http\n    port: 80\n")
    return "---\n" + "---\n".join(out)


@pytest.mark.parametrize("parts", [2, 3, 8])
def test_the_parts_of_a_kubectl_list_hold_exactly_its_objects(parts: int) -> None:
    text = _kubectl_list(120)
    pieces = split_objects(text, parts)
    assert pieces is not None and len(pieces) == parts
    whole = parse_manifests(text, "whole")
    joined: tuple[list[object], ...] = ([], [], [], [])  # services, slices, namespaces, ingresses/gateways/routes
    for piece in pieces:
        for target, found in zip(joined, parse_manifests(piece, "part"), strict=True):
            target.extend(found)
    assert joined == whole and (len(whole[0]), len(whole[1]), len(whole[2])) == (120, 12, 3)


def test_the_parts_of_multi_document_yaml_hold_exactly_its_objects() -> None:
    text = _documents(50)
    pieces = split_objects(text, 4)
    assert pieces is not None and len(pieces) == 4
    joined = [s for piece in pieces for s in parse_manifests(piece, "part")[0]]
    assert joined == parse_manifests(text, "whole")[0] and len(joined) == 50


@pytest.mark.parametrize("text", [
    "%YAML 1.2\n---\nkind: List\nitems:\n- kind: Service\n- kind: Service\n",
    "kind: List\nitems:\n-\n  kind: Service\n-\n  kind: Service\n",
    "kind: List\nitems: []\n",
])
def test_layouts_that_cannot_be_cut_safely_are_left_whole(text: str) -> None:
    assert split_objects(text, 2) is None


def test_a_large_file_is_read_the_same_through_parallel_children(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(_kubectl_list(300))
    monkeypatch.setattr(manifests, "CHILD_PARSE_BYTES", 1024)
    monkeypatch.setattr(manifests, "PARALLEL_PARSE_BYTES", 1024)
    monkeypatch.setattr(manifests.os, "sched_getaffinity", lambda pid: {0, 1, 2})
    zone = ZoneIndex(dnsd.config.from_mapping({"zone": ZONE, "recursion": "off"}))
    parsed = ManifestSource(path, zone)._read()
    assert parsed is not None
    assert parsed[1] == parse_manifests(path.read_text(), str(path))
    broken = tmp_path / "broken.yaml"
    broken.write_text(_kubectl_list(300).replace("  kind: Service\n", "  kind: [Service\n", 1))
    with pytest.raises(manifests.SourceError, match=r"invalid YAML at line \d+"):
        ManifestSource(broken, zone)._read()
