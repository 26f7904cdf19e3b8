"""Helpers for tests that start dnsd from an installed entry point rather than through DnsdProcess.

The chart and wheel tests run `dnsd` from a rendered config or a fresh venv, with output in a log file,
so they pick a port up front and poll for the zone's SOA; both use these.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import pytest

from tests.dnsd_process import EXAMPLE_MANIFESTS


def free_port() -> int:
    """A loopback port free for both UDP and TCP."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free loopback port")


def example_flags(port: int) -> list[str]:
    """The example cluster as source, a loopback listener on `port`, no HTTP, no lame duck."""
    return ["--source", f"file:{EXAMPLE_MANIFESTS}", "--listen", f"127.0.0.1:{port}", "--http", "off",
            "--lame-duck", "0"]


def query_soa(
    process: subprocess.Popen[bytes], port: int, zone: str, log: Path, deadline: float = 30.0
) -> dns.message.Message:
    """Ask 127.0.0.1:port for the zone's SOA over UDP until dnsd answers (bounded by `deadline`)."""
    query = dns.message.make_query(zone, "SOA")
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if process.poll() is not None:
            pytest.fail(f"dnsd exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            return dns.query.udp(query, "127.0.0.1", port=port, timeout=0.5)
        except (dns.exception.Timeout, OSError):
            time.sleep(0.1)
    pytest.fail(f"no answer from dnsd within {deadline}s:\n{log.read_text(errors='replace')}")


def stop(process: subprocess.Popen[bytes]) -> int | None:
    """SIGTERM, then the exit status (None when it had to be killed)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
            return None
    return process.returncode
