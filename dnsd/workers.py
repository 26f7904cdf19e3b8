"""`--workers N`: N processes answering on the same ports, only one of them watching the cluster.

Python answers on one core per process, so a busy node needs several processes. They share the
listening ports through SO_REUSEPORT (the kernel spreads clients across the sockets by address and
port), and they must give identical answers, yet the API server must see one watch per pod, not N.

So the process started by the operator (the *watching* process) runs the source as usual and, via
`ZoneIndex.publish_to`, hands every committed batch of zone operations (put/delete of slim
records, a full replace, "synced") together with the new SOA serial to each *follower*. A follower
is `python -m dnsd.workers FD`: a full dnsd (own handler, fast path, recursor and cache, listeners
bound to the watching process's actual ports) whose zone is fed by `ZoneIndex.follow` instead of a
source. The same operations under the same serial give the same data, hence the same bytes.

The link is a socketpair carrying length-prefixed pickles (private to the two processes, never a
network socket). First frame: ("start", config, number); then ("ops", operations, serial, serials)
(serials: each zone's own serial, which a follower takes as given rather than derives) with a
snapshot of the current state first (with the zone serials of every view, `ZoneIndex.snapshot`),
so a follower started (or restarted) late catches up in one
step; ("stop",) ends it. A follower sends ("stats", snapshot, ready) once a second, so /metrics on
the watching process counts every process's queries and /readyz waits for all of them. A follower
whose link closes (the watching process died) stops; a follower that dies is started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import pickle
import signal
import socket
import struct
import sys
from typing import Any

from dnsd.config import Config, Endpoint
from dnsd.metrics import QueryStats
from dnsd.zone import Op, ZoneIndex

logger = logging.getLogger(__name__)

_LENGTH = struct.Struct("!I")
#: Bytes a follower may leave unread on its link before it is considered stuck and restarted.
MAX_BACKLOG = 256 * 1024 * 1024
#: Seconds between a follower's statistics reports.
REPORT_INTERVAL = 1.0
#: Seconds a follower gets to stop when told before it is killed.
STOP_TIMEOUT = 5.0
#: Seconds before a dead follower is started again.
RESTART_DELAY = 1.0


def frame(message: tuple[Any, ...]) -> bytes:
    """One link message: 4-byte length, then the pickle."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(payload)) + payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[Any, ...] | None:
    """The next message, or None when the other side has gone."""
    try:
        header = await reader.readexactly(_LENGTH.size)
        payload = await reader.readexactly(_LENGTH.unpack(header)[0])
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    message = pickle.loads(payload)  # noqa: S301  # our own process at the other end of a socketpair
    return message if isinstance(message, tuple) and message else None


class Follower:
    """The watching process's handle on one follower process."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.process: asyncio.subprocess.Process | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.ready = False
        self.reader_task: asyncio.Task[None] | None = None

    def send(self, message: tuple[Any, ...]) -> None:
        writer = self.writer
        if writer is None or writer.is_closing():
            return
        if writer.transport.get_write_buffer_size() > MAX_BACKLOG:
            logger.error("worker %d is not keeping up with zone changes; restarting it", self.number)
            self.kill()
            return
        writer.write(frame(message))

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()


class WorkerPool:
    """Starts, feeds, watches and stops the followers of the watching process."""

    def __init__(self, config: Config, zone: ZoneIndex, stats: QueryStats) -> None:
        self.config = config
        self.zone = zone
        self.stats = stats
        self.followers = [Follower(n) for n in range(1, config.workers)]
        self.endpoints: tuple[Endpoint, ...] = ()
        self.stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        zone.publish_to(self.publish)

    def publish(self, ops: list[Op], serial: int, serials: dict[str, int]) -> None:
        """The zone's hook: every committed batch goes to every follower, with every zone's serial."""
        message = ("ops", ops, serial, serials)
        for follower in self.followers:
            follower.send(message)

    def ready(self) -> bool:
        """True when every follower has reported that it is bound and synced."""
        return all(f.ready for f in self.followers)

    async def start(self, bound: list[tuple[str, int]]) -> None:
        """Start every follower on the ports the watching process actually bound."""
        self.endpoints = tuple(Endpoint(host, port) for host, port in bound)
        for follower in self.followers:
            await self._spawn(follower)
            self._tasks.append(asyncio.create_task(self._supervise(follower), name=f"worker-{follower.number}"))

    async def _spawn(self, follower: Follower) -> None:
        parent, child = socket.socketpair()
        try:
            follower.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "dnsd.workers", str(child.fileno()), pass_fds=(child.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            child.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent)
        follower.writer = writer
        follower.ready = False
        config = dataclasses.replace(self.config, listen=self.endpoints, http=None, workers=1, lame_duck=0.0)
        # No await between the snapshot and the first publish after it: the follower misses nothing.
        writer.write(frame(("start", config, follower.number)))
        writer.write(frame(("ops", self.zone.snapshot(), self.zone.serial, dict(self.zone.serials))))
        follower.reader_task = asyncio.create_task(self._listen(follower, reader))
        logger.info("worker %d started (pid %d)", follower.number, follower.process.pid)

    async def _listen(self, follower: Follower, reader: asyncio.StreamReader) -> None:
        while True:
            message = await read_frame(reader)
            if message is None:
                return
            if message[0] == "stats":
                self.stats.peers[follower.number] = message[1]
                follower.ready = bool(message[2])

    async def _supervise(self, follower: Follower) -> None:
        while True:
            process = follower.process
            if process is None:
                return
            code = await process.wait()
            if follower.writer is not None:
                follower.writer.close()
            follower.ready = False
            if self.stopping:
                return
            logger.error("worker %d exited with status %s; starting it again", follower.number, code)
            await asyncio.sleep(RESTART_DELAY)
            if self.stopping:
                return
            await self._spawn(follower)

    async def close(self) -> None:
        """Tell every follower to stop, wait for them, kill what is left."""
        self.stopping = True
        for follower in self.followers:
            follower.send(("stop",))
        for follower in self.followers:
            process = follower.process
            if process is None:
                continue
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                follower.kill()
                await process.wait()
        for task in self._tasks:
            task.cancel()
        for follower in self.followers:
            if follower.reader_task is not None:
                follower.reader_task.cancel()


async def follow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, zone: ZoneIndex, stats: QueryStats,
                 stopping: asyncio.Event, is_ready: Any) -> None:
    """A follower's source: apply published batches, report statistics, stop when told or orphaned."""

    def send_stats() -> None:
        writer.write(frame(("stats", stats.snapshot(), bool(is_ready()))))

    async def report() -> None:
        while True:
            send_stats()
            await asyncio.sleep(REPORT_INTERVAL)

    reporter = asyncio.create_task(report())
    try:
        while True:
            message = await read_frame(reader)
            if message is None:
                logger.warning("the watching process has gone; stopping")
                break
            if message[0] == "ops":
                zone.follow(message[1], message[2], message[3])
                send_stats()  # at once, so that readiness after the first snapshot is not a second late
            elif message[0] == "stop":
                break
    finally:
        reporter.cancel()
        stopping.set()


async def _follower_main(fd: int) -> int:
    from dnsd import log
    from dnsd.app import App

    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=fd))
    start = await read_frame(reader)
    if start is None or start[0] != "start":
        return 1
    config: Config = start[1]
    log.setup(config.log_level, config.log_format)
    logging.getLogger("dnsd").debug("worker %d following the watching process", start[2])
    return await App(config, link=(reader, writer)).run()


def main() -> int:
    """Entry point of a follower: `python -m dnsd.workers FD` (started by WorkerPool, never by hand)."""
    # Ctrl-C or a SIGTERM to the whole process group: the watching process decides when we stop
    # (after its lame duck), and if it dies the link closes and we stop anyway.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    fd = int(sys.argv[1])
    os.set_inheritable(fd, False)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_follower_main(fd))
    return int(uvloop.run(_follower_main(fd)))


if __name__ == "__main__":
    sys.exit(main())
