"""Signing keys: BIND key files in and out, key generation, and RRSIG creation (RFC 4034 3.1).

Keys live in `--dnssec-keys DIR` as the pairs `K<zone>.+<alg>+<tag>.key` / `.private` that BIND's
`dnssec-keygen` and `dnsd keygen` write, so that a key can be made by either tool and mounted into
every replica (a Kubernetes Secret): every replica and worker then publishes the same DNSKEY RRset.
Only ECDSAP256SHA256 (13) and ED25519 (15) are signed with (RFC 8624 3.1, "MUST" for signing).

The bytes a signature covers come from `dnssec.canonical.signed_data`, the same function the
validator checks with, so signer and validator agree by construction.
"""

from __future__ import annotations

import base64
import calendar
import os
import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from dnsd.dnssec.canonical import signed_data
from dnsd.dnssec.crypto import ECDSAP256SHA256, ED25519, SHA256, ds_digest, key_tag
from dnsd.dnssec.records import SEP, ZONE_KEY, Rrsig, label_count
from dnsd.wire import text_to_wire

ALGORITHM_NAMES = {ECDSAP256SHA256: "ECDSAP256SHA256", ED25519: "ED25519"}
ALGORITHMS_BY_NAME = {name.lower(): number for number, name in ALGORITHM_NAMES.items()}
KSK_FLAGS = ZONE_KEY | SEP  # 257
ZSK_FLAGS = ZONE_KEY  # 256
DNSKEY_PROTOCOL = 3
_TIMING_FIELDS = ("Created", "Publish", "Activate", "Inactive", "Delete")


class KeyError_(ValueError):
    """A key file that cannot be used (named so as not to shadow the builtin KeyError)."""


@dataclass(slots=True)
class Key:
    """One signing key of one zone, with the BIND timing metadata (seconds since the epoch, or None)."""

    zone: str  # lower-case, no trailing dot
    flags: int
    algorithm: int
    private: Any  # ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
    public_key: bytes  # the DNSKEY public key field
    publish: int | None = None
    activate: int | None = None
    inactive: int | None = None
    delete: int | None = None
    created: int | None = None

    @property
    def dnskey_rdata(self) -> bytes:
        return struct.pack("!HBB", self.flags, DNSKEY_PROTOCOL, self.algorithm) + self.public_key

    @property
    def tag(self) -> int:
        return key_tag(self.dnskey_rdata)

    @property
    def sep(self) -> bool:
        """A KSK or CSK: the key the parent's DS points at, which signs the DNSKEY RRset."""
        return bool(self.flags & SEP)

    def published(self, now: float) -> bool:
        """In the DNSKEY RRset at `now` (RFC 7583: from Publish until Delete)."""
        start = self.publish if self.publish is not None else self.activate
        return (start is None or start <= now) and (self.delete is None or now < self.delete)

    def active(self, now: float) -> bool:
        """Signing at `now` (RFC 7583: from Activate until Inactive)."""
        return (self.activate is None or self.activate <= now) and (self.inactive is None or now < self.inactive)

    def ds_rdata(self, digest_type: int = SHA256) -> bytes:
        digest = ds_digest(text_to_wire(self.zone), self.dnskey_rdata, digest_type)
        if digest is None:
            raise KeyError_(f"digest type {digest_type} is not supported")
        return struct.pack("!HBB", self.tag, self.algorithm, digest_type) + digest

    def ds_text(self) -> str:
        rdata = self.ds_rdata()
        return f"{self.zone}. IN DS {self.tag} {self.algorithm} {SHA256} {rdata[4:].hex().upper()}"

    def dnskey_text(self) -> str:
        key = base64.b64encode(self.public_key).decode()
        return f"{self.zone}. IN DNSKEY {self.flags} {DNSKEY_PROTOCOL} {self.algorithm} {key}"

    @property
    def basename(self) -> str:
        return f"K{self.zone}.+{self.algorithm:03d}+{self.tag:05d}"

    def sign(self, owner: bytes, rtype: int, ttl: int, rdatas: list[bytes], inception: int,
             expiration: int) -> bytes:
        """The RRSIG rdata over one RRset (`owner` a wire name, `rdatas` uncompressed wire rdata)."""
        signer = text_to_wire(self.zone)
        head = struct.pack("!HBBIIIH", rtype, self.algorithm, label_count(owner.lower()), ttl,
                           expiration & 0xFFFFFFFF, inception & 0xFFFFFFFF, self.tag) + signer
        template = Rrsig(rtype, self.algorithm, head[3], ttl, expiration, inception, self.tag, signer, b"", head)
        data = signed_data(template, owner, rtype, 1, rdatas)
        if self.algorithm == ECDSAP256SHA256:
            r, s = decode_dss_signature(self.private.sign(data, ec.ECDSA(hashes.SHA256())))
            signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        else:
            signature = self.private.sign(data)
        return head + signature


def generate(zone: str, algorithm: int = ECDSAP256SHA256, flags: int = KSK_FLAGS, now: float | None = None) -> Key:
    """A fresh key (a CSK by default: flags 257, signing everything)."""
    zone = zone.rstrip(".").lower()
    private: Any
    if algorithm == ECDSAP256SHA256:
        private = ec.generate_private_key(ec.SECP256R1())
    elif algorithm == ED25519:
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        raise KeyError_(f"algorithm {algorithm} is not supported for signing (13 or 15)")
    created = int(time.time() if now is None else now)
    return Key(zone, flags, algorithm, private, _public_bytes(algorithm, private),
               publish=created, activate=created, created=created)


def _public_bytes(algorithm: int, private: Any) -> bytes:
    if algorithm == ECDSAP256SHA256:
        numbers = private.public_key().public_numbers()
        return bytes(numbers.x.to_bytes(32, "big") + numbers.y.to_bytes(32, "big"))
    from cryptography.hazmat.primitives import serialization

    return bytes(private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def _private_bytes(key: Key) -> bytes:
    if key.algorithm == ECDSAP256SHA256:
        return bytes(key.private.private_numbers().private_value.to_bytes(32, "big"))
    from cryptography.hazmat.primitives import serialization

    return bytes(key.private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                           serialization.NoEncryption()))


def _stamp(value: int) -> str:
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(value))


def _parse_stamp(value: str) -> int:
    value = value.strip().split()[0]
    if not re.fullmatch(r"\d{14}", value):
        raise KeyError_(f"bad time {value!r} (YYYYMMDDHHMMSS)")
    return calendar.timegm(time.strptime(value, "%Y%m%d%H%M%S"))


def write(key: Key, directory: str | Path) -> Path:
    """Write the BIND `.key` and `.private` files of `key` into `directory`; the path without suffix."""
    base = Path(directory) / key.basename
    kind = "key-signing" if key.sep else "zone-signing"
    public = [f"; This is a {kind} key, keyid {key.tag}, for {key.zone}."]
    for field_name in _TIMING_FIELDS:
        value = getattr(key, field_name.lower())
        if value is not None:
            public.append(f"; {field_name}: {_stamp(value)}")
    public.append(key.dnskey_text())
    private = [
        "Private-key-format: v1.3",
        f"Algorithm: {key.algorithm} ({ALGORITHM_NAMES[key.algorithm]})",
        f"PrivateKey: {base64.b64encode(_private_bytes(key)).decode()}",
    ]
    for field_name in _TIMING_FIELDS:
        value = getattr(key, field_name.lower())
        if value is not None:
            private.append(f"{field_name}: {_stamp(value)}")
    Path(f"{base}.key").write_text("\n".join(public) + "\n")
    fd = os.open(f"{base}.private", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write("\n".join(private) + "\n")
    return base


def read(private_path: str | Path) -> Key:
    """One key from its `.private` file and the `.key` file beside it."""
    private_path = Path(private_path)
    public_path = private_path.with_suffix(".key")
    fields: dict[str, str] = {}
    for line in private_path.read_text().splitlines():
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip()] = value.strip()
    try:
        algorithm = int(fields["Algorithm"].split()[0])
        secret = base64.b64decode(fields["PrivateKey"], validate=True)
    except (KeyError, ValueError) as exc:
        raise KeyError_(f"{private_path}: not a BIND private key file") from exc
    private: Any
    if algorithm == ECDSAP256SHA256 and 0 < len(secret) <= 32:  # BIND drops leading zero octets
        private = ec.derive_private_key(int.from_bytes(secret, "big"), ec.SECP256R1())
    elif algorithm == ED25519 and len(secret) == 32:
        private = ed25519.Ed25519PrivateKey.from_private_bytes(secret)
    else:
        raise KeyError_(f"{private_path}: algorithm {algorithm} is not supported for signing (13 or 15)")
    zone = flags = None
    for line in public_path.read_text().splitlines():
        line = line.split(";", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if "DNSKEY" not in parts:
            continue
        at = parts.index("DNSKEY")
        zone = parts[0].rstrip(".").lower()
        flags = int(parts[at + 1])
        public_key = base64.b64decode("".join(parts[at + 4 :]))
        if public_key != _public_bytes(algorithm, private):
            raise KeyError_(f"{public_path}: public key does not match {private_path.name}")
        break
    if zone is None or flags is None:
        raise KeyError_(f"{public_path}: no DNSKEY record")
    key = Key(zone, flags, algorithm, private, _public_bytes(algorithm, private))
    for field_name in _TIMING_FIELDS:
        if field_name in fields:
            setattr(key, field_name.lower(), _parse_stamp(fields[field_name]))
    return key


def load_dir(directory: str | Path) -> list[Key]:
    """Every key in `directory` (sorted by file name, so every replica orders them alike)."""
    return [read(path) for path in sorted(Path(directory).glob("K*.private"))]
