"""Forward mode: send the client's question, with RD, to the configured upstream resolvers.

Upstreams are tried in order of health, then smoothed RTT: a server with three failures in a row is
considered down for a growing while (2, 4, ... 60 s) and is asked only after every healthy one, so a
total outage still gets tried rather than answered from nothing. SERVFAIL and REFUSED count as
failures and move on to the next upstream (failover). The upstream is a full resolver, so its answer
section is trusted as a whole chain, but only the records that form the chain from the question
(`chain.follow`) and an SOA above its end are kept: anything else in the response is dropped.
With DNSSEC validation on, the signatures over those records and the NSEC/NSEC3 proofs are kept too,
and queries carry DO=1 and CD=1: dnsd validates itself, so it wants the data even where a validating
upstream would call it bogus.
"""

from __future__ import annotations

from dnsd.config import Endpoint
from dnsd.recursor import upstream, validator
from dnsd.recursor.cache import Answer
from dnsd.recursor.chain import Budget, ResolveError, follow
from dnsd.recursor.message import CLASS_IN, NOERROR, NXDOMAIN, SOA, is_subdomain


class Forwarder:
    """Resolves (name, type) through upstream resolvers with health tracking and failover."""

    def __init__(self, upstreams: tuple[Endpoint, ...], infra: upstream.Infra, *,
                 timeout: float = 1.5, retries: int = 1, edns_size: int = upstream.EDNS_SIZE,
                 dnssec: bool = False) -> None:
        if not upstreams:
            raise ValueError("forward mode needs at least one --forwarder")
        self.upstreams = [(e.host, e.port) for e in upstreams]
        self.infra = infra
        self.timeout = timeout
        self.retries = retries
        self.edns_size = edns_size
        #: DNSSEC: DO=1 and CD=1 (dnsd validates itself, so it wants the data even where the
        #: upstream would call it bogus), keeping RRSIG/NSEC/NSEC3 records for the validator
        self.dnssec = dnssec

    def order(self) -> list[tuple[str, int]]:
        """Healthy upstreams by RTT, then those considered down (stable for equal RTTs)."""
        return sorted(self.upstreams,
                      key=lambda u: (not self.infra.up(*u), self.infra.rtt(*u)))

    async def lookup(self, qname: bytes, qtype: int, budget: Budget) -> Answer:
        for _attempt in range(self.retries + 1):
            for address, port in self.order():
                budget.spend_query()
                try:
                    msg = await upstream.query(address, port, qname, qtype, rd=True,
                                               infra=self.infra, mode="forward",
                                               wait=self.timeout, edns_size=self.edns_size,
                                               do=self.dnssec, cd=self.dnssec)
                except upstream.UpstreamError:
                    continue
                if msg.rcode not in (NOERROR, NXDOMAIN):
                    self.infra.failure(address, port, timeout=False)
                    continue
                records = [rr for rr in msg.answer if rr.rclass == CLASS_IN]
                chain, following = follow(records, qname, qtype)
                end = following if following is not None else qname
                soa = tuple(rr for rr in msg.authority if rr.rtype == SOA and rr.rclass == CLASS_IN
                            and is_subdomain(end, rr.owner))[:1]
                complete = chain and following is None and msg.rcode == NOERROR
                if self.dnssec:
                    chain = validator.with_signatures(chain, records)
                    soa = (*soa, *validator.proofs(msg.authority, lambda rr: rr.rclass == CLASS_IN))
                    if complete:
                        soa = soa[1:] if soa and soa[0].rtype == SOA else soa
                return Answer(msg.rcode, tuple(chain), () if complete and not self.dnssec else soa)
        raise ResolveError("forwarders")
