"""Shared fixtures: a dnsd process serving the example cluster."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.dnsd_process import EXAMPLE_MANIFESTS, DnsdProcess

EXAMPLE_ARGS = (
    "--zone", "c2.k8s.ooo",
    "--source", f"file:{EXAMPLE_MANIFESTS}",
    "--nameserver", "ns1.c2.k8s.ooo=2001:db8:53::53",
    "--reverse-zone", "2001:db8:42::/48",
    "--reverse-zone", "2001:db8:43::/48",
    "--reverse-zone", "10.96.0.0/16",
    "--recursion", "off",
)


@pytest.fixture(scope="module")
def example_dnsd() -> Iterator[DnsdProcess]:
    """dnsd on 127.0.0.1 and ::1 (random ports) serving examples/cluster.yaml, recursion off."""
    with DnsdProcess(*EXAMPLE_ARGS, listen=("127.0.0.1:0", "[::1]:0")) as proc:
        yield proc
