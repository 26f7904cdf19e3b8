"""A scriptable hostile DNS hierarchy on 127.53.2.0/24 (port 53), for the resolver's attack tests.

Unlike tests/hierarchy.py (real Knot servers with fixed zones), every server here is a small
asyncio server in a thread of the test process, so that a test can script exactly what an attacker's
authoritative server sends (an NXDOMAIN with a CNAME, 3,000 NS names, glue at 127.0.0.1, a 131-link
chain, opcode UPDATE, huge TCP answers, silence) and count exactly what dnsd sent where. Servers
answer UDP and TCP on (address, 53); an answer larger than the query's UDP size goes out with TC and
no records, so that dnsd retries over TCP like it must with a real server.

`Zone` answers like an authoritative server from zone-file text (answers with AA, CNAME without
chasing, referrals with glue below zone cuts, NXDOMAIN/NODATA with the SOA, one-label wildcards);
a server's `script` (a function of the query) runs first and may answer anything itself: a
`dns.message.Message`, raw bytes, (either, delay in seconds), or None to fall through to the zones.
`silent` servers record queries and never answer (a dead zone). Everything binds loopback only.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone

ROOT = "127.53.2.1"
VICTIM = "127.53.2.2"
ATTACKER = "127.53.2.3"
DEAD = "127.53.2.4"
VICTIM2 = "127.53.2.5"
SPARE = "127.53.2.6"

ROOT_HINTS = f""". 3600000 NS a.root.hostile.
a.root.hostile. 3600000 A {ROOT}
"""

Message = dns.message.Message
Reply = Message | bytes | tuple[Message | bytes, float] | None
Script = Callable[[Message], Reply]


class Zone:
    """Authoritative answers from zone-file text (see the module docstring)."""

    def __init__(self, origin: str, text: str) -> None:
        self.origin = dns.name.from_text(origin)
        self.zone = dns.zone.from_text(text, origin=self.origin, relativize=False, check_origin=False)

    def covers(self, qname: dns.name.Name) -> bool:
        return qname.is_subdomain(self.origin)

    def _soa(self) -> dns.rrset.RRset:
        rdataset = self.zone.find_rdataset(self.origin, dns.rdatatype.SOA)
        return dns.rrset.from_rdata_list(self.origin, rdataset.ttl, list(rdataset))

    def _rrset(self, name: dns.name.Name, rdtype: int, owner: dns.name.Name | None = None) -> dns.rrset.RRset | None:
        node = self.zone.get_node(name)
        if node is None:
            return None
        rdataset = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.RdataType.make(rdtype))
        if rdataset is None:
            return None
        return dns.rrset.from_rdata_list(owner or name, rdataset.ttl, list(rdataset))

    def answer(self, query: Message) -> Message:
        qname = query.question[0].name
        qtype = query.question[0].rdtype
        response = dns.message.make_response(query)
        # a zone cut between the origin and the name: a referral with glue
        cut = qname
        while cut != self.origin and cut.is_subdomain(self.origin):
            ns = self._rrset(cut, dns.rdatatype.NS)
            if ns is not None and not (cut == qname and qtype == dns.rdatatype.DS):
                response.authority.append(ns)
                for rdata in ns:
                    for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                        glue = self._rrset(rdata.target, rdtype)
                        if glue is not None:
                            response.additional.append(glue)
                return response
            cut = cut.parent()
        response.flags |= dns.flags.AA
        node_name = qname
        if self.zone.get_node(qname) is None:
            wildcard = dns.name.Name((b"*", *qname.labels[1:]))
            if self.zone.get_node(wildcard) is None:
                response.set_rcode(dns.rcode.NXDOMAIN)
                response.authority.append(self._soa())
                return response
            node_name = wildcard
        data = self._rrset(node_name, qtype, qname)
        if data is not None:
            response.answer.append(data)
            return response
        alias = self._rrset(node_name, dns.rdatatype.CNAME, qname)
        if alias is not None:
            response.answer.append(alias)
            return response
        response.authority.append(self._soa())
        return response


@dataclass
class Server:
    """One fake authoritative server: zones, an optional script, and a record of every query."""

    address: str
    zones: list[Zone] = field(default_factory=list)
    script: Script | None = None
    silent: bool = False
    #: UDP queries for which this says True get TC at once, without building the answer (for huge ones)
    truncate: Callable[[Message], bool] | None = None
    queries: list[tuple[str, int]] = field(default_factory=list)

    def count(self, name: str | None = None, rdtype: str | None = None) -> int:
        """Queries received, optionally only those for `name` (lower case, trailing dot) and type."""
        wanted = None if rdtype is None else dns.rdatatype.from_text(rdtype)
        return sum(1 for qname, qtype in list(self.queries)
                   if (name is None or qname == name) and (wanted is None or qtype == wanted))

    def respond(self, query: Message) -> tuple[Message | bytes, float] | None:
        if self.silent:
            return None
        if self.script is not None:
            scripted = self.script(query)
            if scripted is not None:
                return scripted if isinstance(scripted, tuple) else (scripted, 0.0)
        qname = query.question[0].name
        zones = [z for z in self.zones if z.covers(qname)]
        if not zones:
            response = dns.message.make_response(query)
            response.set_rcode(dns.rcode.REFUSED)
            return response, 0.0
        best = max(zones, key=lambda z: len(z.origin.labels))
        return best.answer(query), 0.0


def _encode(reply: Message | bytes, limit: int | None) -> bytes:
    """Wire bytes; over `limit` (UDP), the header and question only, with TC set."""
    data = reply if isinstance(reply, bytes) else reply.to_wire(max_size=65535)
    if limit is not None and len(data) > limit and not isinstance(reply, bytes):
        truncated = dns.message.Message(id=reply.id)
        truncated.flags = reply.flags | dns.flags.TC
        truncated.question = list(reply.question)
        if reply.edns >= 0:
            truncated.use_edns(0, payload=reply.payload)
        return truncated.to_wire()
    return data


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            query = dns.message.from_wire(data)
        except Exception:
            return
        if not query.question:
            return
        self.server.queries.append((query.question[0].name.to_text().lower(), query.question[0].rdtype))
        if self.server.truncate is not None and self.server.truncate(query):
            truncated = dns.message.make_response(query)
            truncated.flags |= dns.flags.TC
            self._send(truncated.to_wire(), addr)
            return
        reply = self.server.respond(query)
        if reply is None:
            return
        limit = max(512, query.payload) if query.edns >= 0 else 512
        payload, delay = reply
        asyncio.get_running_loop().call_later(delay, self._send, _encode(payload, limit), addr)

    def _send(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, addr)


async def _tcp(server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            query = dns.message.from_wire(await reader.readexactly(length))
            server.queries.append((query.question[0].name.to_text().lower(), query.question[0].rdtype))
            reply = server.respond(query)
            if reply is None:
                continue
            payload, delay = reply
            await asyncio.sleep(delay)
            data = _encode(payload, None)
            writer.write(struct.pack("!H", len(data)) + data)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, dns.exception.DNSException):
        pass
    finally:
        writer.close()


def _udp_factory(server: Server) -> Callable[[], _Udp]:
    return lambda: _Udp(server)


def _tcp_factory(server: Server) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    return lambda reader, writer: _tcp(server, reader, writer)


class Network:
    """The servers, run by one event loop in a daemon thread; `start()` binds them all."""

    def __init__(self, *servers: Server) -> None:
        self.servers = {s.address: s for s in servers}
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._closers: list[Callable[[], None]] = []
        self._by_server: dict[str, list[Callable[[], None]]] = {}

    def __getitem__(self, address: str) -> Server:
        return self.servers[address]

    def start(self) -> Network:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._bind(), self.loop).result(timeout=10)
        return self

    async def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        for server in self.servers.values():
            transport, _ = await loop.create_datagram_endpoint(_udp_factory(server),
                                                               local_addr=(server.address, 53))
            tcp = await asyncio.start_server(_tcp_factory(server), server.address, 53)
            self._closers += [transport.close, tcp.close]
            self._by_server[server.address] = [transport.close, tcp.close]

    def stop_server(self, address: str) -> None:
        """Close one server's sockets, as when its process stops: queries to it then meet ICMP port
        unreachable (UDP) and connection refused (TCP)."""
        async def close() -> None:
            for closer in self._by_server.pop(address, []):
                closer()
            await _closed()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout=10)

    def stop(self) -> None:
        async def close() -> None:
            for closer in self._closers:
                closer()
            await _closed()
            self.loop.stop()

        asyncio.run_coroutine_threadsafe(close(), self.loop)
        self._thread.join(timeout=10)


async def _closed() -> None:
    """Let the loop run the callbacks that close the sockets of closed transports, so that the
    addresses can be bound again (a test that builds its own network after another one)."""
    for _ in range(3):
        await asyncio.sleep(0)


def response(query: Message, *, aa: bool = True, rcode: dns.rcode.Rcode = dns.rcode.NOERROR,
             answer: tuple[str, ...] = (), authority: tuple[str, ...] = (),
             additional: tuple[str, ...] = ()) -> Message:
    """A response to `query` built from record texts (`owner ttl IN type rdata`)."""
    reply = dns.message.make_response(query)
    if aa:
        reply.flags |= dns.flags.AA
    reply.set_rcode(rcode)
    for section, texts in ((reply.answer, answer), (reply.authority, authority),
                           (reply.additional, additional)):
        for text in texts:
            owner, ttl, rdclass, rdtype, *rdata = text.split()
            section.append(dns.rrset.from_text(owner, int(ttl), rdclass, rdtype, " ".join(rdata)))
    return reply


def with_opcode(reply: Message, opcode: int) -> bytes:
    """`reply` in wire form with its opcode replaced (dnspython keeps the query's)."""
    data = bytearray(reply.to_wire())
    data[2] = (data[2] & 0x87) | (opcode << 3)
    return bytes(data)


ROOT_ZONE = f"""
$TTL 86400
. SOA a.root.hostile. hostmaster.hostile. 1 1800 900 604800 60
. NS a.root.hostile.
a.root.hostile. A {ROOT}
victim. NS ns.victim.
ns.victim. A {VICTIM}
attacker. NS ns.attacker.
ns.attacker. A {ATTACKER}
dead. NS ns.dead.
ns.dead. A {DEAD}
two. NS ns1.two.
two. NS ns2.two.
ns1.two. A {VICTIM}
ns2.two. A {VICTIM2}
"""

#: SOA TTL and MINIMUM 2: negative answers lapse after 2 s (finding 7's test waits for that).
VICTIM_ZONE = f"""
$TTL 300
victim. 2 SOA ns.victim. hostmaster.victim. 1 1800 900 604800 2
victim. NS ns.victim.
ns.victim. A {VICTIM}
www A 192.0.2.1
www AAAA 2001:db8::1
mail A 192.0.2.2
mail AAAA 2001:db8::2
mail MX 10 mail.victim.
target A 198.51.100.7
mapped-only AAAA ::ffff:1.2.3.8
alias 86400 CNAME later.victim.
later 300 A 1.2.3.9
*.fresh A 192.0.2.9
"""

TWO_ZONE = f"""
$TTL 300
two. 60 SOA ns1.two. hostmaster.two. 1 1800 900 604800 60
two. NS ns1.two.
two. NS ns2.two.
ns1.two. A {VICTIM}
ns2.two. A {VICTIM2}
*.two. A 192.0.2.22
"""


def standard(attacker: Script | None = None) -> Network:
    """Root, victim (also one of two servers of `two.`), a second `two.` server, the attacker
    (scripted), and a dead zone's silent server."""
    return Network(
        Server(ROOT, [Zone(".", ROOT_ZONE)]),
        Server(VICTIM, [Zone("victim.", VICTIM_ZONE), Zone("two.", TWO_ZONE)]),
        Server(VICTIM2, [Zone("two.", TWO_ZONE)]),
        Server(ATTACKER, [], script=attacker),
        Server(DEAD, silent=True),
    )
