"""A loopback delegation for `dnsd check` (127.55.0.0/16, port 53): Knot as the root and as `test.`.

The root delegates `test.` to `ns1.nic.test.` (127.55.0.2) and `ns2.nic.test.` (127.55.0.3); `test.`
holds whatever delegations the test writes into it (NS, glue, DS of the zones dnsd is configured for),
so that one hierarchy serves every case: a consistent delegation, a missing or wrong DS, wrong NS or
glue, no delegation at all. The second server may be given other delegations, as a secondary that has
not caught up would hold, so that parent servers that disagree with each other can be tested.
`test.` also delegates `deep.test.` to two servers of which only one (127.55.0.4) runs, for a parent
with a server down; `deep` is appended to its zone file. That server also serves `mid.deep.test.`
(`mid` appended), so that a delegation found through the servers of `deep.test.` can live in a zone
below it.
dnsd itself need not run: `dnsd check` compares the parent with dnsd's configuration. Each server is
its own knotd on its own address, as in `tests/hierarchy.py`, whose helpers this module reuses.
Requires root (port 53) and the Debian package knot.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.hierarchy import MissingTool, _knot_conf, free_loopback, require
from tests.signed_hierarchy import _wait_soa

NET = "127.55.0."
ROOT = NET + "1"
TLD = NET + "2"
#: the second server of `test.`, which may hold other delegations (a secondary that is behind)
TLD2 = NET + "3"
#: the one live server of `deep.test.`, whose second server (SILENT) is down
DEEP = NET + "4"
#: an address nothing listens on (the kernel answers "port unreachable"): a parent that is down
SILENT = NET + "99"
#: where a test may run a hostile root of its own
HOSTILE = NET + "98"


def hints(address: str = ROOT) -> str:
    return f". 3600000 NS a.root-servers.test.\na.root-servers.test. 3600000 A {address}\n"


@dataclass
class CheckHierarchy:
    """Root and `test.` on loopback; `delegations` is appended to the `test.` zone file (`second`, when
    given, to the second server's copy instead)."""

    delegations: str
    second: str | None = None
    deep: str = ""
    mid: str = ""
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="dnsd-check-")))
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def hints_file(self, address: str = ROOT) -> str:
        path = self.workdir / f"root-{address}.hints"
        path.write_text(hints(address))
        return str(path)

    def start(self) -> CheckHierarchy:
        if os.geteuid() != 0:
            raise MissingTool("the check hierarchy binds port 53: run the tests as root")
        if not all(free_loopback(a) for a in (ROOT, TLD, TLD2, DEEP)):
            raise MissingTool(f"port 53 on {ROOT}, {TLD}, {TLD2} or {DEEP} is taken (a server left behind?)")
        knotd = require("knotd")
        tld = f"""$ORIGIN test.
$TTL 3600
@ SOA ns1.nic.test. hostmaster.test. 1 1800 900 604800 300
@ NS ns1.nic.test.
@ NS ns2.nic.test.
ns1.nic A {TLD}
ns2.nic A {TLD2}
deep NS ns1.deep.test.
deep NS ns2.deep.test.
ns1.deep A {DEEP}
ns2.deep A {SILENT}
"""
        zones = {
            ROOT: {".": f"""$ORIGIN .
$TTL 86400
. SOA a.root-servers.test. hostmaster.test. 1 1800 900 604800 86400
. NS a.root-servers.test.
a.root-servers.test. A {ROOT}
test. NS ns1.nic.test.
test. NS ns2.nic.test.
ns1.nic.test. A {TLD}
ns2.nic.test. A {TLD2}
"""},
            TLD: {"test.": tld + self.delegations},
            TLD2: {"test.": tld + (self.delegations if self.second is None else self.second)},
            DEEP: {"deep.test.": f"""$ORIGIN deep.test.
$TTL 3600
@ SOA ns1.deep.test. hostmaster.test. 1 1800 900 604800 300
@ NS ns1.deep.test.
@ NS ns2.deep.test.
ns1 A {DEEP}
ns2 A {SILENT}
mid NS ns1.deep.test.
""" + self.deep,
                   # a zone of the same server, below deep.test.: delegations inside it come from there
                   "mid.deep.test.": """$ORIGIN mid.deep.test.
$TTL 3600
@ SOA ns1.deep.test. hostmaster.test. 1 1800 900 604800 300
@ NS ns1.deep.test.
""" + self.mid},
        }
        try:
            for address, served in zones.items():
                directory = self.workdir / address
                directory.mkdir()
                for name, body in served.items():
                    file_name = "root.zone" if name == "." else f"{name.rstrip('.')}.zone"
                    (directory / file_name).write_text(body)
                conf = directory / "knot.conf"
                conf.write_text(_knot_conf(directory, address, served))
                self.processes.append(subprocess.Popen(
                    [knotd, "-c", str(conf)], stdout=subprocess.DEVNULL,
                    stderr=open(directory / "knot.log", "wb")))  # noqa: SIM115
            for address, served in zones.items():
                for name in served:
                    _wait_soa(address, name)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)
