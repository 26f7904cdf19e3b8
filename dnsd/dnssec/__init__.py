"""DNSSEC building blocks shared by the recursor's validator and (later) the zone signer.

Everything here is pure: wire-format rdata in, parsed records, canonical bytes, digests and verdicts
out; no I/O, no clock except where a caller passes `now`, no knowledge of caches or messages.

* `records`: parsers for DNSKEY, RRSIG, DS, NSEC, NSEC3 and NSEC3PARAM rdata (untrusted input:
  every length checked, `FormatError` on anything malformed) and the type bitmaps of RFC 4034 4.1.2.
* `canonical`: the canonical form and order of RFC 4034 section 6 (with RFC 6840 5.1's correction
  of the lowercase list), and the exact bytes an RRSIG signs (RFC 4034 3.1.8.1). The signer of issue
  14 produces signatures over the same bytes, so this is written once.
* `crypto`: key tags (RFC 4034 appendix B), DS digests (RFC 4034 5.1.4, RFC 4509, RFC 6605), and
  signature verification for algorithms 8, 10, 13, 14, 15 and 16 through `cryptography`.
* `nsec` and `nsec3`: the denial-of-existence proofs of RFC 4035 5.4 and RFC 5155 section 8.

Names are uncompressed wire names (bytes, case as received); comparisons fold ASCII case.
"""

from __future__ import annotations

#: RR types of DNSSEC (RFC 4034, RFC 5155).
DS, RRSIG, NSEC, DNSKEY, NSEC3, NSEC3PARAM = 43, 46, 47, 48, 50, 51
#: Types that only a DO=1 client is shown unless it asked for them (RFC 4035 3.2.1).
DNSSEC_TYPES = frozenset((RRSIG, NSEC, NSEC3))
