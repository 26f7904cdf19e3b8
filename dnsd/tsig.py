"""TSIG (RFC 8945): key files, verifying signed requests, signing responses, one message or many.

Keys come from files in the format `tsig-keygen` writes (BIND's `key "NAME" { algorithm ALG;
secret "BASE64"; };`, several per file allowed); hmac-sha256, hmac-sha384 and hmac-sha512 with the
standard library's `hmac`. HMAC-MD5 and SHA-1 are refused when the file is read (RFC 8945 6 makes
SHA-256 the one to implement; the older ones are not worth a downgrade path).

Verification reads the raw message, not a parse of it: the MAC covers the exact bytes the client sent
(with the TSIG record removed, ARCOUNT one less, the original ID in place), so this module finds the
TSIG record itself (it must be the last additional record) and never depends on how `dnsd.wire`
parses the rest. The outcomes are RFC 8945 5.2:

* unknown key or algorithm: BADKEY (the response carries an unsigned TSIG, rcode NOTAUTH);
* a MAC that does not verify (or is truncated below RFC 8945 5.2.2.1's minimum): BADSIG, same;
* a time signed outside `fudge` of our clock: BADTIME, and this response *is* signed, with our time
  in Other Data, so that the client can tell a skewed clock from an attack.

Signing a response: the first message's MAC covers the request's MAC, the message, and the TSIG
variables; each later message of a transfer (RFC 8945 5.3.1) covers the previous MAC, the message,
and only the timers. dnsd signs every message of a transfer (the RFC allows gaps of up to 99; none
is simpler and costs one HMAC per 16 KB).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from dnsd.wire import read_name, text_to_wire, wire_to_text

TSIG = 250
CLASS_ANY = 255
NOTAUTH = 9
BADSIG, BADKEY, BADTIME = 16, 17, 18
#: Seconds of clock difference allowed (RFC 8945 10 recommends 300).
FUDGE = 300

ALGORITHMS = {
    "hmac-sha256": hashlib.sha256,
    "hmac-sha384": hashlib.sha384,
    "hmac-sha512": hashlib.sha512,
}

_KEY_RE = re.compile(r'key\s+"?([^"\s{]+)"?\s*\{(.*?)\}\s*;', re.S)
_ALG_RE = re.compile(r"algorithm\s+\"?([A-Za-z0-9.-]+)\"?\s*;")
_SECRET_RE = re.compile(r'secret\s+"([^"]*)"\s*;')


class KeyFileError(ValueError):
    """A key file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True, slots=True)
class Key:
    """One TSIG key: `name` lower-case dotted without the trailing dot."""

    name: str
    algorithm: str
    secret: bytes

    @property
    def name_wire(self) -> bytes:
        return text_to_wire(self.name)

    @property
    def algorithm_wire(self) -> bytes:
        return text_to_wire(self.algorithm)

    def mac(self, data: bytes) -> bytes:
        return hmac.new(self.secret, data, ALGORITHMS[self.algorithm]).digest()


_COMMENT_RE = re.compile(r'"[^"]*"|(?:#|//)[^\n]*|/\*.*?\*/', re.S)


def parse_key_text(text: str, origin: str) -> list[Key]:
    """Every key in a `tsig-keygen` style text."""
    keys: list[Key] = []
    # Comments (#, //, /* */) are dropped, but never inside a quoted string: a base64 secret may hold
    # "//" (about one key in a hundred), and cutting it there made a good key file unreadable.
    body = _COMMENT_RE.sub(lambda m: m.group(0) if m.group(0).startswith('"') else " ", text)
    for match in _KEY_RE.finditer(body):
        name = match.group(1).rstrip(".").lower()
        alg = _ALG_RE.search(match.group(2))
        secret = _SECRET_RE.search(match.group(2))
        if alg is None or secret is None:
            raise KeyFileError(f"{origin}: key {name!r} needs an algorithm and a secret")
        algorithm = alg.group(1).lower().rstrip(".")
        if algorithm not in ALGORITHMS:
            raise KeyFileError(f"{origin}: key {name!r}: algorithm {algorithm!r} is not one of "
                               f"{', '.join(ALGORITHMS)}")
        try:
            raw = base64.b64decode(secret.group(1), validate=True)
        except (binascii.Error, ValueError):
            raise KeyFileError(f"{origin}: key {name!r}: the secret is not base64") from None
        if not raw:
            raise KeyFileError(f"{origin}: key {name!r}: empty secret")
        try:
            text_to_wire(name)
        except (UnicodeError, ValueError):
            raise KeyFileError(f"{origin}: {name!r} is not a key name") from None
        if any(not label or len(label) > 63 for label in name.split(".")):
            raise KeyFileError(f"{origin}: {name!r} is not a key name")
        keys.append(Key(name, algorithm, raw))
    if not keys:
        raise KeyFileError(f"{origin}: no key {{ algorithm ...; secret ...; }} found")
    return keys


def load_key_file(path: str) -> list[Key]:
    """The keys of one `--tsig-key-file`."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    return parse_key_text(text, path)


@dataclass(frozen=True, slots=True)
class Signed:
    """The TSIG record of a message, as found by `find`."""

    start: int  # offset of the TSIG record: the message without it is data[:start]
    key_name: str
    key_name_wire: bytes
    algorithm: str
    time_signed: int
    fudge: int
    mac: bytes
    original_id: int
    error: int
    other: bytes


def _skip_record(data: bytes, offset: int) -> int:
    _, offset = read_name(data, offset, allow_pointers=True)
    if offset + 10 > len(data):
        raise ValueError("record runs past the end")
    rdlength = (data[offset + 8] << 8) | data[offset + 9]
    if offset + 10 + rdlength > len(data):
        raise ValueError("rdata runs past the end")
    return offset + 10 + rdlength


def find(data: bytes) -> Signed | None:
    """The TSIG record when it is the last record of the message, else None.

    Raises ValueError for a message that cannot be walked or a TSIG record that is malformed (the
    caller answers FORMERR, RFC 8945 5.2).
    """
    if len(data) < 12:
        raise ValueError("shorter than a header")
    qd, an, ns, ar = struct.unpack_from("!HHHH", data, 4)
    if ar == 0:
        return None
    offset = 12
    for _ in range(qd):
        _, offset = read_name(data, offset, allow_pointers=True)
        offset += 4
        if offset > len(data):
            raise ValueError("question runs past the end")
    for _ in range(an + ns + ar - 1):
        offset = _skip_record(data, offset)
    start = offset
    name, offset = read_name(data, offset, allow_pointers=True)
    if offset + 10 > len(data):
        raise ValueError("record runs past the end")
    rtype, rclass, ttl, rdlength = struct.unpack_from("!HHIH", data, offset)
    if rtype != TSIG:
        return None
    offset += 10
    end = offset + rdlength
    if end != len(data):
        raise ValueError("data after the TSIG record")
    if rclass != CLASS_ANY or ttl != 0:
        raise ValueError("TSIG record with a class other than ANY or a TTL other than 0")
    alg_wire, offset = read_name(data, offset, allow_pointers=False)
    if offset + 10 > end:
        raise ValueError("TSIG rdata too short")
    high, low, fudge, mac_size = struct.unpack_from("!HIHH", data, offset)
    offset += 10
    mac = data[offset : offset + mac_size]
    offset += mac_size
    if offset + 6 > end:
        raise ValueError("TSIG rdata too short")
    original_id, error, other_len = struct.unpack_from("!HHH", data, offset)
    offset += 6
    if offset + other_len != end:
        raise ValueError("TSIG other data does not fill the rdata")
    return Signed(start, wire_to_text(name), name, wire_to_text(alg_wire), (high << 32) | low, fudge, mac,
                  original_id, error, data[offset:end])


def _variables(key: Key, time_signed: int, fudge: int, error: int, other: bytes) -> bytes:
    """RFC 8945 4.3.3: the TSIG variables, names in canonical (lower-case, uncompressed) form."""
    return b"".join((key.name_wire, struct.pack("!HI", CLASS_ANY, 0), key.algorithm_wire,
                     struct.pack("!HIHHH", time_signed >> 32, time_signed & 0xFFFFFFFF, fudge, error,
                                 len(other)), other))


def _unsigned_message(data: bytes, signed: Signed) -> bytes:
    """The message as it was before the TSIG record was added: ARCOUNT one less, the original ID."""
    message = bytearray(data[: signed.start])
    struct.pack_into("!H", message, 0, signed.original_id)
    struct.pack_into("!H", message, 10, struct.unpack_from("!H", message, 10)[0] - 1)
    return bytes(message)


@dataclass(slots=True)
class Verdict:
    """The result of checking a request: the key (None when unknown) and an RFC 8945 error (0: good)."""

    signed: Signed
    key: Key | None
    error: int


def verify(data: bytes, signed: Signed, keys: dict[str, Key], now: float | None = None) -> Verdict:
    """Check a request's TSIG against the known keys (RFC 8945 5.2)."""
    key = keys.get(signed.key_name)
    if key is None or key.algorithm != signed.algorithm:
        return Verdict(signed, None, BADKEY)
    digest_size = ALGORITHMS[key.algorithm]().digest_size
    size = len(signed.mac)
    if size > digest_size or size < max(10, digest_size // 2):
        return Verdict(signed, None, BADSIG)  # RFC 8945 5.2.2.1: too short to trust
    expected = key.mac(_unsigned_message(data, signed)
                       + _variables(key, signed.time_signed, signed.fudge, signed.error, signed.other))
    if not hmac.compare_digest(expected[:size], signed.mac):
        return Verdict(signed, None, BADSIG)
    clock = int(time.time() if now is None else now)
    if abs(clock - signed.time_signed) > signed.fudge:
        return Verdict(signed, key, BADTIME)
    return Verdict(signed, key, 0)


def _record(key_name_wire: bytes, algorithm_wire: bytes, time_signed: int, fudge: int, mac: bytes,
            original_id: int, error: int, other: bytes) -> bytes:
    rdata = b"".join((algorithm_wire, struct.pack("!HIHH", time_signed >> 32, time_signed & 0xFFFFFFFF,
                                                   fudge, len(mac)),
                      mac, struct.pack("!HHH", original_id, error, len(other)), other))
    return key_name_wire + struct.pack("!HHIH", TSIG, CLASS_ANY, 0, len(rdata)) + rdata


def _append(message: bytes, record: bytes) -> bytes:
    out = bytearray(message)
    struct.pack_into("!H", out, 10, struct.unpack_from("!H", out, 10)[0] + 1)
    return bytes(out) + record


def unsigned_error(message: bytes, signed: Signed, error: int) -> bytes:
    """A response to a request whose key or MAC failed: an unsigned TSIG carrying `error`."""
    record = _record(signed.key_name_wire.lower(), text_to_wire(signed.algorithm), signed.time_signed,
                     signed.fudge, b"", signed.original_id, error, b"")
    return _append(message, record)


class Signer:
    """Signs the messages of one response in order (one message, or every message of a transfer)."""

    def __init__(self, key: Key, request: Signed, error: int = 0) -> None:
        self.key = key
        self.request = request
        self.error = error
        self.previous: bytes | None = None  # the MAC of the previous message, once one is signed

    def sign(self, message: bytes, now: float | None = None) -> bytes:
        """The message with its TSIG record appended (its ID is the original ID already)."""
        key = self.key
        time_signed = int(time.time() if now is None else now)
        other = struct.pack("!HI", time_signed >> 32, time_signed & 0xFFFFFFFF) if self.error == BADTIME else b""
        if self.error == BADTIME:
            time_signed = self.request.time_signed  # RFC 8945 5.2.3: echo the client's time
        if self.previous is None:
            prior = self.request.mac
            mac = key.mac(struct.pack("!H", len(prior)) + prior + message
                          + _variables(key, time_signed, FUDGE, self.error, other))
        else:
            prior = self.previous
            mac = key.mac(struct.pack("!H", len(prior)) + prior + message
                          + struct.pack("!HIH", time_signed >> 32, time_signed & 0xFFFFFFFF, FUDGE))
        self.previous = mac
        original_id = struct.unpack_from("!H", message, 0)[0]
        return _append(message, _record(key.name_wire, key.algorithm_wire, time_signed, FUDGE, mac,
                                        original_id, self.error, other))


def sign_request(message: bytes, key: Key, now: float | None = None) -> tuple[bytes, bytes]:
    """A signed request (dnsd's NOTIFY) and its MAC, to verify the answer with `verify_response`."""
    time_signed = int(time.time() if now is None else now)
    mac = key.mac(message + _variables(key, time_signed, FUDGE, 0, b""))
    original_id = struct.unpack_from("!H", message, 0)[0]
    return _append(message, _record(key.name_wire, key.algorithm_wire, time_signed, FUDGE, mac, original_id,
                                    0, b"")), mac


def verify_response(data: bytes, key: Key, request_mac: bytes, now: float | None = None) -> bool:
    """True when a single-message response is signed by `key` over our request's MAC, in time."""
    try:
        signed = find(data)
    except ValueError:
        return False
    if signed is None or signed.key_name != key.name or signed.algorithm != key.algorithm or signed.error:
        return False
    expected = key.mac(struct.pack("!H", len(request_mac)) + request_mac + _unsigned_message(data, signed)
                       + _variables(key, signed.time_signed, signed.fudge, signed.error, signed.other))
    if len(signed.mac) < 10 or not hmac.compare_digest(expected[: len(signed.mac)], signed.mac):
        return False
    clock = int(time.time() if now is None else now)
    return abs(clock - signed.time_signed) <= signed.fudge
