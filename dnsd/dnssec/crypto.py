"""Key tags, DS digests and signature verification (RFC 4034, 5702, 6605, 8080) with `cryptography`.

Which algorithms count (RFC 8624 section 3.1, validation column): RSASHA256 (8), RSASHA512 (10),
ECDSAP256SHA256 (13), ECDSAP384SHA384 (14), ED25519 (15) and ED448 (16). Anything else, including
RSASHA1 (5, 7), DSA and GOST, is unsupported: a zone signed only with those is treated as insecure
(RFC 4035 5.2), never as bogus. DS digests: SHA-1 (1), SHA-256 (2), SHA-384 (4); GOST (3) is not.
Public key objects are parsed once per key and kept in a bounded map, since a zone's keys verify
many signatures.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from dnsd.dnssec.canonical import lower
from dnsd.dnssec.records import Dnskey

RSASHA256, RSASHA512, ECDSAP256SHA256, ECDSAP384SHA384, ED25519, ED448 = 8, 10, 13, 14, 15, 16
SUPPORTED_ALGORITHMS = frozenset((RSASHA256, RSASHA512, ECDSAP256SHA256, ECDSAP384SHA384, ED25519, ED448))
SHA1, SHA256, SHA384 = 1, 2, 4
SUPPORTED_DIGESTS = {SHA1: hashlib.sha1, SHA256: hashlib.sha256, SHA384: hashlib.sha384}
#: RSA keys shorter than this are refused (RFC 8624 3.1 deprecates them; cryptography needs >= 512).
MIN_RSA_BITS = 1024

_KEYS: OrderedDict[bytes, Any] = OrderedDict()
_MAX_KEYS = 4096


def key_tag(rdata: bytes) -> int:
    """RFC 4034 appendix B (algorithm 1's different rule is moot: it is not supported)."""
    total = (sum(rdata[0::2]) << 8) + sum(rdata[1::2])  # even octets high, odd low; sums run in C
    total += (total >> 16) & 0xFFFF
    return total & 0xFFFF


def ds_digest(owner: bytes, dnskey_rdata: bytes, digest_type: int) -> bytes | None:
    """The DS digest of a DNSKEY (RFC 4034 5.1.4), or None for an unsupported digest type."""
    algorithm = SUPPORTED_DIGESTS.get(digest_type)
    if algorithm is None:
        return None
    return algorithm(lower(owner) + dnskey_rdata, usedforsecurity=True).digest()


def _public_key(key: Dnskey) -> Any:
    """The `cryptography` public key of a DNSKEY, or None when malformed or unsupported."""
    cached = _KEYS.get(key.rdata)
    if cached is not None:
        _KEYS.move_to_end(key.rdata)
        return cached
    public: Any = None
    raw = key.key
    try:
        if key.algorithm in (RSASHA256, RSASHA512):
            if len(raw) < 3:
                return None
            if raw[0]:
                exp_len, offset = raw[0], 1
            else:
                exp_len, offset = int.from_bytes(raw[1:3], "big"), 3
            exponent = int.from_bytes(raw[offset : offset + exp_len], "big")
            modulus = int.from_bytes(raw[offset + exp_len :], "big")
            if modulus.bit_length() < MIN_RSA_BITS or exponent < 3 or offset + exp_len >= len(raw):
                return None
            public = rsa.RSAPublicNumbers(exponent, modulus).public_key()
        elif key.algorithm in (ECDSAP256SHA256, ECDSAP384SHA384):
            curve: ec.EllipticCurve = ec.SECP256R1() if key.algorithm == ECDSAP256SHA256 else ec.SECP384R1()
            if len(raw) != (64 if key.algorithm == ECDSAP256SHA256 else 96):
                return None
            public = ec.EllipticCurvePublicKey.from_encoded_point(curve, b"\x04" + raw)
        elif key.algorithm == ED25519:
            public = ed25519.Ed25519PublicKey.from_public_bytes(raw)
        elif key.algorithm == ED448:
            public = ed448.Ed448PublicKey.from_public_bytes(raw)
    except (ValueError, UnsupportedAlgorithm):
        return None
    if public is not None:
        _KEYS[key.rdata] = public
        if len(_KEYS) > _MAX_KEYS:
            _KEYS.popitem(last=False)
    return public


def usable(key: Dnskey) -> bool:
    """Whether `key` can verify anything here: supported algorithm, well-formed, protocol 3."""
    return key.protocol == 3 and key.algorithm in SUPPORTED_ALGORITHMS and _public_key(key) is not None


def verify(key: Dnskey, signature: bytes, data: bytes) -> bool:
    """Whether `signature` over `data` verifies with `key` (False for anything unsupported)."""
    public = _public_key(key)
    if public is None:
        return False
    try:
        if key.algorithm in (RSASHA256, RSASHA512):
            digest: hashes.HashAlgorithm = hashes.SHA256() if key.algorithm == RSASHA256 else hashes.SHA512()
            public.verify(signature, data, padding.PKCS1v15(), digest)
        elif key.algorithm in (ECDSAP256SHA256, ECDSAP384SHA384):
            half = 32 if key.algorithm == ECDSAP256SHA256 else 48
            if len(signature) != 2 * half:
                return False
            der = encode_dss_signature(int.from_bytes(signature[:half], "big"),
                                       int.from_bytes(signature[half:], "big"))
            ecdsa_hash: hashes.HashAlgorithm = hashes.SHA256() if half == 32 else hashes.SHA384()
            public.verify(der, data, ec.ECDSA(ecdsa_hash))
        else:
            public.verify(signature, data)
    except (InvalidSignature, ValueError):
        return False
    return True
