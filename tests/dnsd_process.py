"""Run the real `dnsd` process for tests, and query it with dnspython.

`DnsdProcess` starts `python -m dnsd` with the given flags, listening on loopback port 0 unless told
otherwise, and learns the bound ports from its "listening on" and "http on" log lines: no port is
guessed, so tests can run side by side. Every wait is bounded.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.query
import dns.rdatatype
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_MANIFESTS = REPO / "examples" / "cluster.yaml"

_LISTEN_RE = re.compile(r"listening on (\S+(?:, \S+)*) \(udp, tcp\)")
_HTTP_RE = re.compile(r"http on (\S+) ")


def _split(hostport: str) -> tuple[str, int]:
    hostport = hostport.rstrip(",")
    if hostport.startswith("["):
        host, port = hostport[1:].split("]:")
        return host, int(port)
    host, port = hostport.rsplit(":", 1)
    return host, int(port)


class DnsdProcess:
    """A running dnsd; use as a context manager or call start() / stop()."""

    def __init__(self, *args: str, listen: tuple[str, ...] = ("127.0.0.1:0",), http: str = "off",
                 env: dict[str, str] | None = None, wait_ready: bool = True,
                 lame_duck: str = "0") -> None:
        self.args = [*args]
        if listen:
            for endpoint in listen:
                self.args += ["--listen", endpoint]
        if "--http" not in self.args:
            self.args += ["--http", http]
        if "--lame-duck" not in self.args:
            self.args += ["--lame-duck", lame_duck]
        if "--dnssec-validation" not in self.args:
            # the test upstreams and the loopback hierarchy of tests/hierarchy.py are unsigned, and
            # their root is not the real one: validation is tested on its own signed hierarchy
            self.args += ["--dnssec-validation", "off"]
        self.env = {**os.environ, **(env or {})}
        self.wait_ready = wait_ready
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self.bound: list[tuple[str, int]] = []
        self.http_port: int | None = None
        self._reader: threading.Thread | None = None
        self._listening = threading.Event()

    @property
    def port(self) -> int:
        return self.bound[0][1]

    @property
    def host(self) -> str:
        return self.bound[0][0]

    def start(self, timeout: float = 20.0) -> DnsdProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dnsd", *self.args], cwd=REPO, env=self.env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if self.wait_ready:
            deadline = time.monotonic() + timeout
            while not self._listening.wait(0.05):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"dnsd exited with {self.proc.returncode}:\n{self.output()}")
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"dnsd did not start listening:\n{self.output()}")
            if "--http" in self.args and self.args[self.args.index("--http") + 1] != "off":
                while self.http_port is None and time.monotonic() < deadline:
                    time.sleep(0.02)
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            match = _LISTEN_RE.search(line)
            if match:
                self.bound = [_split(item) for item in match.group(1).split(", ")]
                self._listening.set()
            match = _HTTP_RE.search(line)
            if match:
                self.http_port = _split(match.group(1))[1]

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_log(self, pattern: str, timeout: float = 10.0, start: int = 0) -> str:
        """The first log line from index `start` on matching `pattern` (a regex)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines[start:]:
                if regex.search(line):
                    return line
            time.sleep(0.02)
        raise AssertionError(f"no log line matching {pattern!r} within {timeout}s:\n{self.output()}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._reader is not None:
            self._reader.join(2)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    def __enter__(self) -> DnsdProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ---- metrics --------------------------------------------------------------------------------

    def metric_samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        """(labels, value) of every sample called `name` on /metrics (needs `http=`)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=3) as r:
            text = r.read().decode()
        return [(dict(sample.labels), sample.value) for family in text_string_to_metric_families(text)
                for sample in family.samples if sample.name == name]

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples called `name` whose labels include `labels`."""
        return sum(value for found, value in self.metric_samples(name)
                   if all(found.get(k) == v for k, v in labels.items()))

    # ---- queries --------------------------------------------------------------------------------

    def query(self, qname: str, qtype: str | int = "A", *, tcp: bool = False, edns: int | bool = 0,
              payload: int = 1232, want_dnssec: bool = False, rd: bool = False, timeout: float = 3.0,
              host: str | None = None, port: int | None = None) -> dns.message.Message:
        """Ask dnsd one question with dnspython; rd is off by default (an authoritative query)."""
        use_edns = -1 if edns is False else (0 if edns is True else edns)
        message = dns.message.make_query(qname, qtype, use_edns=use_edns, payload=payload,
                                         want_dnssec=want_dnssec)
        if not rd:
            message.flags &= ~dns.flags.RD
        where = host or self.host
        port = port or self.port
        if tcp:
            return dns.query.tcp(message, where, port=port, timeout=timeout)
        return dns.query.udp(message, where, port=port, timeout=timeout)


def read_frame(sock: socket.socket) -> bytes:
    """One length-prefixed DNS message from a TCP socket (RFC 7766 framing); ConnectionError when closed."""
    header = b""
    while len(header) < 2:
        chunk = sock.recv(2 - len(header))
        if not chunk:
            raise ConnectionError("closed")
        header += chunk
    (length,) = struct.unpack("!H", header)
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            raise ConnectionError("closed")
        body += chunk
    return body


def rrset_texts(message: dns.message.Message, section: str = "answer") -> list[str]:
    """Every record of a section as `name ttl class type rdata` text, sorted, for compact asserts."""
    out = []
    for rrset in getattr(message, section):
        for line in rrset.to_text().splitlines():
            out.append(" ".join(line.split()))
    return sorted(out)


def rdata_texts(message: dns.message.Message, qtype: str) -> list[str]:
    """The rdata texts of the answer records of one type, sorted."""
    wanted = dns.rdatatype.from_text(qtype)
    return sorted(rd.to_text() for rrset in message.answer if rrset.rdtype == wanted for rd in rrset)
