"""Zone transfers out (AXFR RFC 5936, IXFR RFC 1995), NOTIFY out (RFC 1996), TSIG-signed answers.

dnsd is a hidden primary: Knot, NSD or BIND secondaries take its zones by transfer and serve the
Internet. The handler hands this module every query for qtype AXFR or IXFR, every NOTIFY, and every
TSIG-signed query (a secondary's SOA check is signed too, and must be answered signed).

Who may transfer: `--transfer-allow CIDR[=KEY]`; a client matching no entry gets REFUSED (the
default: nobody). An entry with a key admits only requests signed with that key; a request signed
with an unknown key, a bad MAC or a time out of fudge gets NOTAUTH with BADKEY, BADSIG or BADTIME
(`dnsd.tsig`). A question for a name that is not the apex of a served zone gets NOTAUTH, a transfer
before the first sync SERVFAIL.

What is sent:

* AXFR: SOA, every record of the zone (from `ZoneIndex.open_snapshot`, so exactly the zone at its
  serial without a second copy of it), SOA.
* IXFR (TCP): the client's serial from the SOA in the authority section. Not older than ours: our SOA
  alone. In the journal: each serial's exact diff (SOA old, deletions, SOA new, additions), between
  our SOA twice. Otherwise the whole zone, AXFR-style. IXFR is *always* answered (NSD turns IXFR off
  for hours after one NOTIMP or FORMERR), an IXFR without an SOA included.
* IXFR over UDP: our SOA alone (RFC 1995 4), so the client comes back over TCP. AXFR over UDP: REFUSED.

Messages are about 15 KB (below the 16 KiB that compression pointers reach, well below 64 KB), each
with the question, each signed when the request was; the transport writes them one at a time and
yields to the event loop in between (waiting while the client does not read), so answers never
stall behind a transfer, and one transfer of a 100,000-Service zone holds one message in memory.
Every transfer logs one line (client, zone, kind, serials, result, messages, records, seconds, key)
and counts in `dnsd_transfers_total{kind,result}`; refusals and bad signatures, which anyone can send,
log at most `REFUSAL_LOG_PER_SECOND` lines a second (all are counted).

NOTIFY (`Notifier`, in the watching process only, so that `--workers` followers do not repeat it):
when a zone's serial moves (each zone has its own) each `--notify` target gets, for that zone, a
NOTIFY with our SOA in the
answer section (NSD ignores one whose serial is not newer), signed when the target names a key,
retried with exponential backoff (1 s doubling to 60 s) until it is answered. One NOTIFY per target
and zone is in flight at a time: changes that come faster coalesce into the next one, which always
carries the newest serial.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
import struct
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from dnsd import authority, metrics, tsig, wire
from dnsd.config import Config, NotifyTarget, TransferAllow
from dnsd.zone import CNAME, NS, PTR, SOA, SRV, JournalEntry, Snapshot, XfrRR, ZoneApex, ZoneIndex, serial_gt

logger = logging.getLogger(__name__)

OPCODE_NOTIFY = 4
NOTAUTH = 9
#: A transfer message is closed once it holds this many bytes: with the largest record dnsd makes
#: (an SOA, about 530 bytes) and a TSIG (about 400) it stays below 16,384, so every name in it can
#: be a compression target.
MESSAGE_FILL = 15_000
#: Seconds a transfer waits for a batch in progress (a relist) to reach its serial.
SETTLE_TIMEOUT = 30.0
#: Refused or badly signed transfer requests logged per second at most (the rest are only counted).
REFUSAL_LOG_PER_SECOND = 10
_REFUSALS = frozenset(("refused", "notauth", "badkey", "badsig", "badtime", "formerr"))
#: NOTIFY retry: first wait for an answer, and the cap of its doubling.
NOTIFY_TIMEOUT = 1.0
NOTIFY_TIMEOUT_MAX = 60.0


_RR_HEAD = struct.Struct("!HHIH")
_SOA_TAIL = struct.Struct("!IIIII")
_SRV_HEAD = struct.Struct("!HHH")


class _Packer:
    """One transfer message being written, with name compression (RFC 1035 4.1.4).

    The same wire form as `wire._Writer` (owner names, CNAME/PTR/NS targets and SOA names compressed,
    SRV targets never, pointers only below 0x4000), written for the transfer's volume: a suffix is a
    slice of the name, not a join of its labels, and it is remembered in the same pass that writes it,
    which makes a 100,000-Service AXFR about twice as fast. Names are the plain dotted text dnsd makes.
    """

    __slots__ = ("buf", "names")

    def __init__(self, prefix: bytes, qname: str) -> None:
        self.buf = bytearray(prefix)
        self.names: dict[str, int] = {}
        if qname and "\\" not in qname:
            offset = 12
            pos = 0
            while offset < 0x4000:
                self.names.setdefault(qname[pos:], offset)
                dot = qname.find(".", pos)
                if dot < 0:
                    break
                offset += dot - pos + 1
                pos = dot + 1

    def name(self, name: str, compress: bool = True) -> None:
        buf = self.buf
        if not name:
            buf.append(0)
            return
        names = self.names
        raw = name.encode()
        pos = 0
        while True:
            suffix = name[pos:] if pos else name
            if compress:
                pointer = names.get(suffix)
                if pointer is not None:
                    buf += (0xC000 | pointer).to_bytes(2, "big")
                    return
            start = len(buf)
            if start < 0x4000:
                names.setdefault(suffix, start)
            dot = name.find(".", pos)
            end = len(name) if dot < 0 else dot
            buf.append(end - pos)
            buf += raw[pos:end]
            if dot < 0:
                buf.append(0)
                return
            pos = dot + 1

    def rr(self, record: XfrRR) -> None:
        owner, rtype, ttl, rdata = record
        self.name(owner)
        buf = self.buf
        at = len(buf)
        buf += _RR_HEAD.pack(rtype, wire.CLASS_IN, ttl, 0)
        if isinstance(rdata, bytes):
            buf += rdata
        elif isinstance(rdata, str):
            self.name(rdata, compress=rtype in (CNAME, PTR, NS))
        elif rtype == SRV:
            priority, weight, port, target = rdata  # type: ignore[misc]
            buf += _SRV_HEAD.pack(priority, weight, port)
            self.name(target, compress=False)
        elif rtype == SOA:
            mname, rname, serial, refresh, retry, expire, minimum = rdata  # type: ignore[misc]
            self.name(mname)
            self.name(rname)
            buf += _SOA_TAIL.pack(serial, refresh, retry, expire, minimum)
        struct.pack_into("!H", buf, at + 8, len(buf) - at - 10)


def load_keys(config: Config) -> dict[str, tsig.Key]:
    """Every key of the `--tsig-key-file`s by name; ValueError when a key named in a flag is missing."""
    keys: dict[str, tsig.Key] = {}
    for path in config.tsig_key_file:
        for key in tsig.load_key_file(path):
            keys[key.name] = key
    for entry in config.transfer_allow:
        if entry.key is not None and entry.key not in keys:
            raise ValueError(f"--transfer-allow names key {entry.key!r}, which no --tsig-key-file holds")
    for target in config.notify:
        if target.key is not None and target.key not in keys:
            raise ValueError(f"--notify names key {target.key!r}, which no --tsig-key-file holds")
    return keys


@dataclass(slots=True)
class _Request:
    """One transfer or signed request as seen by `Transfers`."""

    data: bytes
    query: wire.Query
    host: str
    tcp: bool
    signer: tsig.Signer | None = None
    key_name: str = ""


def _client_serial(data: bytes) -> int | None:
    """The serial of the SOA in an IXFR's authority section, or None when there is none."""
    try:
        qd, an, ns = struct.unpack_from("!HHH", data, 4)
        offset = 12
        for _ in range(qd):
            _, offset = wire.read_name(data, offset, allow_pointers=True)
            offset += 4
        for _ in range(an):
            offset = wire._skip_rr(data, offset)
        for _ in range(ns):
            _, after = wire.read_name(data, offset, allow_pointers=True)
            if after + 10 > len(data):
                return None
            rtype, _, _, rdlength = struct.unpack_from("!HHIH", data, after)
            rdata = after + 10
            if rdata + rdlength > len(data):
                return None
            if rtype == SOA:
                _, pos = wire.read_name(data, rdata, allow_pointers=True)
                _, pos = wire.read_name(data, pos, allow_pointers=True)
                if pos + 20 > rdata + rdlength:
                    return None
                return int(struct.unpack_from("!I", data, pos)[0])
            offset = rdata + rdlength
    except (ValueError, struct.error):
        return None
    return None


class Transfers:
    """Answers transfers, NOTIFYs and signed queries for one process's zone index."""

    def __init__(self, config: Config, zone: ZoneIndex, keys: dict[str, tsig.Key]) -> None:
        self.config = config
        self.zone = zone
        self.keys = keys
        self.allow: tuple[TransferAllow, ...] = config.transfer_allow
        self.edns_size = config.edns_udp_size
        self.active = 0
        self.signer: Any = None  # a dnssec.signer.Signer when --dnssec-keys signs the zones
        self._log_window = 0.0
        self._logged = 0
        self._suppressed = 0

    # ---- dispatch (called by the handler's slow path) -------------------------------------------

    def wants(self, data: bytes, query: wire.Query) -> bool:
        """True for what this module answers: AXFR, IXFR, NOTIFY, and anything TSIG-signed."""
        if query.qtype in (wire.AXFR, wire.IXFR) and query.opcode == wire.OPCODE_QUERY:
            return True
        if query.opcode == OPCODE_NOTIFY and query.has_question:
            return True
        if data[10:12] == b"\x00\x00":
            return False
        try:
            return tsig.find(data) is not None
        except ValueError:
            return True  # a broken TSIG record: FORMERR from here

    def respond(self, data: bytes, query: wire.Query, host: str, tcp: bool) -> bytes | AsyncIterator[bytes] | None:
        """The answer: one message, a stream of messages (TCP transfers), or None to drop."""
        request = _Request(data, query, host, tcp)
        kind = self._kind(query, tcp)
        try:
            signed = tsig.find(data)
        except ValueError:
            return self._error(request, wire.FORMERR, kind, "formerr")
        if signed is not None:
            verdict = tsig.verify(data, signed, self.keys)
            if verdict.error in (tsig.BADKEY, tsig.BADSIG):
                result = "badkey" if verdict.error == tsig.BADKEY else "badsig"
                self._count(kind, result)
                self._log(request, kind, result, detail=f"key={signed.key_name}")
                reply = self._plain(request, NOTAUTH)
                return tsig.unsigned_error(reply, signed, verdict.error)
            if verdict.key is None:  # verify returns a key for every other verdict
                return self._plain(request, NOTAUTH)
            request.signer = tsig.Signer(verdict.key, signed, verdict.error)
            request.key_name = verdict.key.name
            if verdict.error == tsig.BADTIME:
                self._count(kind, "badtime")
                self._log(request, kind, "badtime", detail=f"key={signed.key_name} time={signed.time_signed}")
                return self._sign(request, self._plain(request, NOTAUTH))
        if query.opcode == OPCODE_NOTIFY and query.has_question:
            # dnsd is nobody's secondary: a NOTIFY to it is refused (the parser's NOTIMP is for
            # opcodes dnsd knows nothing of; this one it knows).
            return self._sign(request, self._plain(request, wire.REFUSED))
        if query.error is not None:
            return self._error(request, query.error, kind, "formerr")
        if query.qtype not in (wire.AXFR, wire.IXFR):
            return self._signed_answer(request)
        return self._transfer(request, kind)

    # ---- transfers ------------------------------------------------------------------------------

    @staticmethod
    def _kind(query: wire.Query, tcp: bool) -> str:
        if query.qtype == wire.AXFR:
            return "axfr"
        if query.qtype == wire.IXFR:
            return "ixfr" if tcp else "ixfr_udp"
        return "query"

    def _allowed(self, host: str, key_name: str) -> bool:
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        for entry in self.allow:
            if address.version == entry.network.version and address in entry.network and (
                    entry.key is None or entry.key == key_name):
                return True
        return False

    def _transfer(self, request: _Request, kind: str) -> bytes | AsyncIterator[bytes] | None:
        query = request.query
        if not self._allowed(request.host, request.key_name):
            return self._error(request, wire.REFUSED, kind, "refused")
        if query.qclass != wire.CLASS_IN:
            return self._error(request, wire.REFUSED, kind, "refused")
        zone = self.zone
        apex = zone.find_apex(query.qname)
        if apex is None or apex.name != query.qname:
            return self._error(request, NOTAUTH, kind, "notauth")
        if not zone.synced:
            return self._error(request, wire.SERVFAIL, kind, "servfail")
        if query.qtype == wire.AXFR and not request.tcp:
            return self._error(request, wire.REFUSED, kind, "refused")
        if not request.tcp:  # RFC 1995 4: over UDP, the current SOA tells the client to come over TCP
            self._count(kind, "current")
            self._log(request, kind, "current", detail=f"serial={zone.serial_of(apex)}")
            return self._message(request, [self._soa(apex, zone.serial_of(apex))])  # signed by _finish
        return self._stream(request, kind, apex)

    async def _stream(self, request: _Request, kind: str, apex: ZoneApex) -> AsyncIterator[bytes]:
        zone = self.zone
        started = time.monotonic()
        deadline = started + SETTLE_TIMEOUT
        while not zone.settled:  # a relist in progress: its serial is not there yet
            if time.monotonic() > deadline:
                self._count(kind, "servfail")
                yield self._sign(request, self._plain(request, wire.SERVFAIL))
                return
            await asyncio.sleep(0.05)
        serial = zone.serial_of(apex)
        client = _client_serial(request.data) if request.query.qtype == wire.IXFR else None
        entries: list[JournalEntry] | None = None
        if client is not None and not serial_gt(serial, client):
            result = "current"
            records: Iterator[XfrRR] = iter((self._soa(apex, serial),))
            snapshot = None
        else:
            if client is not None and self.signer is None:  # signed: the journal lacks the RRSIGs, AXFR
                entries = zone.journal_since(apex, client)
            if entries is not None:
                result = "incremental"
                snapshot = None
                records = self._incremental(apex, serial, entries)
            else:
                result = "full"
                snapshot = zone.open_snapshot(apex)
                records = self._full(apex, snapshot)
        messages = count = size = 0
        self.active += 1
        finished = False
        try:
            for message, in_it in self._pack(request, records):
                messages += 1
                count += in_it
                size += len(message)
                yield message
            finished = True
        finally:
            self.active -= 1
            if snapshot is not None:
                snapshot.close()
            outcome = result if finished else "aborted"
            self._count(kind, outcome)
            self._log(request, kind, outcome, detail=(
                f"serial={serial} client_serial={client if client is not None else '-'} messages={messages} "
                f"records={count} bytes={size} seconds={time.monotonic() - started:.3f}"))

    def _full(self, apex: ZoneApex, snapshot: Snapshot) -> Iterator[XfrRR]:
        soa = self._soa(apex, snapshot.serial)
        yield soa
        if self.signer is not None:
            yield from ((apex.name, 46, soa[2], sig) for sig in self.signer.soa_signatures(apex.name))
            yield from self.signer.transfer_records(apex, snapshot.records())
        else:
            yield from snapshot.records()
        yield soa

    def _incremental(self, apex: ZoneApex, serial: int, entries: list[JournalEntry]) -> Iterator[XfrRR]:
        find = self.zone.find_apex
        current = self._soa(apex, serial)
        yield current
        for entry in entries:
            yield self._soa(apex, entry.old)
            yield from (rr for rr in entry.deleted if find(rr[0]) is apex)
            yield self._soa(apex, entry.new)
            yield from (rr for rr in entry.added if find(rr[0]) is apex)
        yield current

    def _soa(self, apex: ZoneApex, serial: int) -> XfrRR:
        mname, rname, _, refresh, retry, expire, minimum = self.zone.soa_rdata(apex)
        return apex.name, SOA, self.zone.config.ttl, (mname, rname, serial, refresh, retry, expire, minimum)

    def _pack(self, request: _Request, records: Iterable[XfrRR]) -> Iterator[tuple[bytes, int]]:
        """Records into messages of about MESSAGE_FILL bytes, each finished (and signed) as it fills."""
        query = request.query
        writer = self._writer(query)
        count = 0
        for record in records:
            writer.rr(record)
            count += 1
            if len(writer.buf) >= MESSAGE_FILL:
                yield self._finish(request, writer, count), count
                writer = self._writer(query)
                count = 0
        if count:
            yield self._finish(request, writer, count), count

    @staticmethod
    def _writer(query: wire.Query) -> _Packer:
        question = query.qname_wire + struct.pack("!HH", query.qtype, query.qclass)
        return _Packer(b"\x00" * 12 + question, query.qname)

    def _finish(self, request: _Request, writer: _Packer, count: int) -> bytes:
        query = request.query
        flags = wire.QR | wire.AA | (query.flags & wire.RD)
        opt = wire.opt_record(self.edns_size, query.edns_do) if query.edns else b""
        struct.pack_into("!HHHHHH", writer.buf, 0, query.id, flags, 1, count, 0, 1 if opt else 0)
        return self._sign(request, bytes(writer.buf) + opt)

    def _message(self, request: _Request, records: list[XfrRR]) -> bytes:
        writer = self._writer(request.query)
        for record in records:
            writer.rr(record)
        return self._finish(request, writer, len(records))

    # ---- single answers -------------------------------------------------------------------------

    def _signed_answer(self, request: _Request) -> bytes | None:
        """A TSIG-signed ordinary query (a secondary's SOA check): the zone's answer, signed."""
        query = request.query
        tcp_limit = 65535
        limit = tcp_limit if request.tcp else (
            max(wire.CLASSIC_UDP_SIZE, min(query.udp_size, self.edns_size)) if query.edns
            else wire.CLASSIC_UDP_SIZE)
        if request.signer is not None:
            limit -= 120 + len(request.signer.key.name_wire) + len(request.signer.key.algorithm_wire)
        if query.qclass not in (wire.CLASS_IN, wire.ANY):
            return self._sign(request, self._plain(request, wire.REFUSED))
        result = authority.answer(self.zone, query.qname, query.qtype)
        if result is None:
            return self._sign(request, self._plain(request, wire.REFUSED))
        return self._sign(request, wire.encode(query, result.response, False, limit, self.edns_size))

    def _plain(self, request: _Request, rcode: int) -> bytes:
        query = request.query
        reply = wire.encode_error(query, rcode, False, self.edns_size)
        if query.opcode == OPCODE_NOTIFY:
            reply = reply[:2] + bytes((reply[2] | wire.AA >> 8,)) + reply[3:]
        return reply

    def _error(self, request: _Request, rcode: int, kind: str, result: str) -> bytes:
        if kind != "query":
            self._count(kind, result)
            self._log(request, kind, result)
        return self._sign(request, self._plain(request, rcode))

    @staticmethod
    def _sign(request: _Request, message: bytes) -> bytes:
        return message if request.signer is None else request.signer.sign(message)

    @staticmethod
    def _count(kind: str, result: str) -> None:
        if kind != "query":
            metrics.TRANSFERS.labels(kind, result).inc()

    def _log(self, request: _Request, kind: str, result: str, detail: str = "") -> None:
        """One line per transfer; refusals and bad signatures (anyone can send them) at most
        `REFUSAL_LOG_PER_SECOND` a second, with the number left out said in the next line."""
        if kind == "query":
            return  # a signed ordinary query (a secondary's SOA check) is counted, not logged
        if result in _REFUSALS:
            now = time.monotonic()
            if now - self._log_window >= 1.0:
                self._log_window, self._logged = now, 0
            if self._logged >= REFUSAL_LOG_PER_SECOND:
                self._suppressed += 1
                return
            self._logged += 1
            if self._suppressed:
                detail = f"{detail} (and {self._suppressed} more refusals not logged)".strip()
                self._suppressed = 0
        logger.info("transfer client=%s kind=%s zone=%s result=%s key=%s%s", request.host, kind,
                    request.query.qname or ".", result, request.key_name or "-", f" {detail}" if detail else "")


# ---- NOTIFY -----------------------------------------------------------------------------------


class _NotifyProtocol(asyncio.DatagramProtocol):
    """One UDP socket towards one secondary: answers are matched to the waiting NOTIFY by ID."""

    def __init__(self) -> None:
        self.waiting: dict[int, asyncio.Future[bytes]] = {}
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[object, ...]) -> None:
        if len(data) < 12 or not data[2] & 0x80 or (data[2] >> 3) & 0xF != OPCODE_NOTIFY:
            return  # not an answer to a NOTIFY: ignore, never trust
        future = self.waiting.pop(int.from_bytes(data[:2], "big"), None)
        if future is not None and not future.done():
            future.set_result(data)

    def error_received(self, exc: Exception) -> None:
        logger.debug("NOTIFY socket error: %s", exc)


class Notifier:
    """Sends NOTIFY for every zone to every `--notify` target on every new serial (see the module doc)."""

    def __init__(self, config: Config, zone: ZoneIndex, keys: dict[str, tsig.Key]) -> None:
        self.zone = zone
        self.targets: tuple[NotifyTarget, ...] = config.notify
        self.keys = keys
        self._events: dict[tuple[int, str], asyncio.Event] = {}
        self._protocols: dict[int, _NotifyProtocol] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._last: dict[str, int | None] = {}  # apex -> the serial the secondaries were last told of

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for index, target in enumerate(self.targets):
            _, protocol = await loop.create_datagram_endpoint(
                _NotifyProtocol, remote_addr=(target.endpoint.host, target.endpoint.port))
            self._protocols[index] = protocol
            for apex in self.zone.apexes:
                event = asyncio.Event()
                if self.zone.synced:
                    event.set()  # tell the secondaries at once that we are here (and which serial)
                self._events[(index, apex.name)] = event
                self._tasks.append(asyncio.create_task(self._run(index, target, apex, event),
                                                       name=f"notify-{target.endpoint}-{apex.name}"))
        self._last = {apex.name: self.zone.serial_of(apex) if self.zone.synced else None
                      for apex in self.zone.apexes}
        self.zone.subscribe_serial(self._on_serial)
        self.zone.subscribe(lambda changed: self._on_sync())  # the first sync

    def _on_sync(self) -> None:
        for apex in self.zone.apexes:
            self._on_serial(apex, self.zone.serial_of(apex))

    def _on_serial(self, apex: ZoneApex, serial: int) -> None:
        """Only the zone whose serial moved is announced: its secondaries have something to transfer."""
        if self.zone.synced and serial != self._last.get(apex.name):
            self._last[apex.name] = serial
            for index in range(len(self.targets)):
                event = self._events.get((index, apex.name))
                if event is not None:
                    event.set()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        for protocol in self._protocols.values():
            if protocol.transport is not None:
                protocol.transport.close()

    async def _run(self, index: int, target: NotifyTarget, apex: ZoneApex, event: asyncio.Event) -> None:
        key = self.keys.get(target.key) if target.key is not None else None
        told: int | None = None  # the serial this secondary last answered a NOTIFY for
        while True:
            await event.wait()
            event.clear()
            if self.zone.serial_of(apex) == told:
                continue  # changes during the retries: the answered NOTIFY already carried them
            timeout = NOTIFY_TIMEOUT
            while True:
                serial = self.zone.serial_of(apex)  # the newest: changes meanwhile coalesce into this NOTIFY
                result = await self._send(index, target, apex, serial, key, timeout)
                metrics.NOTIFIES.labels(result).inc()
                if result != "timeout":
                    told = serial
                    # refused: a secondary that takes only some of the zones says so for the others
                    level = logging.WARNING if result in ("badsig", "error") else logging.INFO
                    logger.log(level, "notify %s zone=%s serial=%d result=%s", target.endpoint, apex.name,
                               serial, result)
                    break
                logger.debug("notify %s zone=%s serial=%d: no answer in %.0f s, retrying", target.endpoint,
                             apex.name, serial, timeout)
                timeout = min(timeout * 2, NOTIFY_TIMEOUT_MAX)

    async def _send(self, index: int, target: NotifyTarget, apex: ZoneApex, serial: int,
                    key: tsig.Key | None, wait: float) -> str:
        protocol = self._protocols[index]
        ident = random.randrange(65536)
        while ident in protocol.waiting:
            ident = random.randrange(65536)
        message = self._notify_message(ident, apex, serial)
        request_mac = b""
        if key is not None:
            message, request_mac = tsig.sign_request(message, key)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        protocol.waiting[ident] = future
        try:
            if protocol.transport is None:
                return "error"
            protocol.transport.sendto(message)
            reply = await asyncio.wait_for(future, wait)
        except TimeoutError:
            return "timeout"
        except OSError:
            await asyncio.sleep(wait)  # unreachable now (ICMP): wait as if it had timed out
            return "timeout"
        finally:
            protocol.waiting.pop(ident, None)
        if key is not None and not tsig.verify_response(reply, key, request_mac):
            return "badsig"
        rcode = reply[3] & 0xF
        return "acknowledged" if rcode == wire.NOERROR else "refused"

    def _notify_message(self, ident: int, apex: ZoneApex, serial: int) -> bytes:
        writer = _Packer(b"\x00" * 12 + wire.text_to_wire(apex.name) + struct.pack("!HH", SOA, wire.CLASS_IN),
                         apex.name)
        mname, rname, _, refresh, retry, expire, minimum = self.zone.soa_rdata(apex)
        writer.rr((apex.name, SOA, self.zone.config.ttl, (mname, rname, serial, refresh, retry, expire, minimum)))
        struct.pack_into("!HHHHHH", writer.buf, 0, ident, (OPCODE_NOTIFY << 11) | wire.AA, 1, 1, 0, 0)
        return bytes(writer.buf)
