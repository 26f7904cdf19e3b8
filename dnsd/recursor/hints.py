"""Root hints: the bundled IANA `named.root` or an operator's file (`--root-hints`).

The file is a master file (RFC 1035 section 5) of root NS records and their A/AAAA addresses; only
those three types are read, `;` starts a comment, and TTL and class are optional. A file that yields
no name server with an address is an error, reported once at start-up rather than as SERVFAIL for
every query. dnsd does not prime (RFC 8109): the hints are used as the root delegation directly,
which is what they are when the file is current; the bundled copy is IANA's (see root.hints).
"""

from __future__ import annotations

import ipaddress
from importlib import resources
from pathlib import Path

from dnsd.recursor.message import key, to_wire


class HintsError(ValueError):
    """The root hints file is unreadable or names no server with an address."""


def load(path: str | None) -> dict[bytes, list[str]]:
    """Name server wire name -> addresses, from `path` or the bundled file."""
    if path is None:
        text = resources.files("dnsd.recursor").joinpath("root.hints").read_text(encoding="utf-8")
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise HintsError(f"cannot read root hints {path}: {exc.strerror}") from None
    return parse(text)


def parse(text: str) -> dict[bytes, list[str]]:
    """Parse hints text (raises HintsError)."""
    servers: dict[bytes, list[str]] = {}
    addresses: dict[bytes, list[str]] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split(";", 1)[0].split()
        if not line:
            continue
        owner, rest = line[0], [t for t in line[1:] if not t.isdigit() and t.upper() != "IN"]
        if len(rest) != 2:
            raise HintsError(f"root hints line {number}: expected OWNER [TTL] [IN] TYPE DATA")
        rtype, data = rest[0].upper(), rest[1]
        try:
            if rtype == "NS":
                if owner != ".":
                    raise HintsError(f"root hints line {number}: NS owner must be the root")
                servers.setdefault(key(to_wire(data)), [])
            elif rtype in ("A", "AAAA"):
                address = ipaddress.ip_address(data)
                if (address.version == 4) != (rtype == "A"):
                    raise HintsError(f"root hints line {number}: {data} is not an {rtype} address")
                addresses.setdefault(key(to_wire(owner)), []).append(str(address))
        except ValueError as exc:
            if isinstance(exc, HintsError):
                raise
            raise HintsError(f"root hints line {number}: {exc}") from None
    for name in servers:
        servers[name] = addresses.get(name, [])
    if not any(servers.values()):
        raise HintsError("root hints name no root server with an address")
    return servers
