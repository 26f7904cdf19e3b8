"""The manifests source: `--source file:PATH`, a file of Kubernetes objects kept in the zone.

The file holds what `kubectl get svc,endpointslices -A -o yaml` prints (a `kind: List`), or
multi-document YAML of Services, EndpointSlices and Namespaces, or the same as JSON (`-o json`, which
loads a hundred times faster: the form for large clusters); Ingresses, Gateways, HTTPRoutes, GRPCRoutes and
TLSRoutes are read too (served with `--ingress` / `--gateway-api`); other kinds are ignored. It is
re-read when its identity or modification time changes (checked every `POLL_INTERVAL` seconds: a
stat call, cheap, and it also sees a ConfigMap volume's symlink swap), and the new state goes through
`ZoneIndex.replace`, which touches only what differs (a reload through `ZoneIndex.resync_all`, in
steps that yield to the event loop, as the informer's relist does). Reloads are parsed off the event loop: in a
thread for small files, in a short-lived child process for large ones (their parse would otherwise
hold the GIL for seconds and leave its peak memory in the server). A file that cannot be read or parsed logs one
error and leaves the last good data in place; at start-up there is no good data yet, so the first
failure stops dnsd with one line instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import os
import pickle
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import yaml

from dnsd import metrics
from dnsd.errors import SourceError
from dnsd.kube.model import (
    ROUTE_KINDS,
    HostRecord,
    InvalidObject,
    ServiceRecord,
    SliceRecord,
    gateway_from_api,
    ingress_from_api,
    namespace_from_api,
    route_from_api,
    service_from_api,
    slice_from_api,
)
from dnsd.zone import ZoneIndex, release_free_memory

logger = logging.getLogger(__name__)

#: Seconds between checks of the file: answers follow an edit within this delay plus parsing time.
POLL_INTERVAL = 0.25
#: Files larger than this (a few hundred Services) are parsed in a short-lived child process.
CHILD_PARSE_BYTES = 128 * 1024
#: Records per pickled piece of a child's result (see `parse_in_pieces`).
PIECE = 500
#: Files larger than this (about 10,000 Services of YAML) are split into runs of whole objects that
#: children parse at the same time, one per CPU this process may use (at most `MAX_PARSERS`).
PARALLEL_PARSE_BYTES = 4 * 1024 * 1024
MAX_PARSERS = 8
_LIST_KIND = re.compile(r"^kind:[ \t]*List[ \t]*$", re.M)
_LIST_ITEMS = re.compile(r"^items:[ \t]*\n", re.M)
_ITEM_START = re.compile(r"^- ", re.M)
_AFTER_ITEMS = re.compile(r"^(?!- |[ \t#]|$)", re.M)
_DOCUMENT_START = re.compile(r"^---[ \t]*$", re.M)
_TOP_LEVEL_KEY = re.compile(r"[A-Za-z_][\w.-]*:(?:[ \t]|$)", re.M)

#: Services, EndpointSlices, Namespaces, and Ingresses/Gateways/routes (kept whatever the options say:
#: the zone judges `--ingress`, `--gateway-api` and the class filters).
Loaded = tuple[list[ServiceRecord], list[SliceRecord], list[str], list[HostRecord]]


def parse_manifests(text: str, origin: str, fast_yaml: bool = False) -> Loaded:
    """Services, EndpointSlices, Namespaces, Ingresses, Gateways and routes from YAML (or JSON) text;
    raises SourceError if unparsable.

    JSON (`kubectl get ... -o json`) is read with the json module, a hundred times faster than YAML.
    `fast_yaml` picks libyaml's CSafeLoader, several times faster than the pure-Python loader but
    it keeps most of what it parsed alive (1.1 GB after a 100,000-Service file, measured), so it is
    only used in the short-lived child process that parses large files (see `ManifestSource`).
    """
    if text.lstrip()[:1] in ("{", "["):
        try:
            parsed = json.loads(text)
        except ValueError as exc:
            raise SourceError(f"{origin}: invalid JSON: {exc}") from None
        documents = parsed if isinstance(parsed, list) else [parsed]
    else:
        documents = _load_yaml(text, origin, fast_yaml)
    return _from_documents(documents, origin)


def _load_yaml(text: str, origin: str, fast: bool) -> list[Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader) if fast else yaml.SafeLoader
    try:
        return list(yaml.load_all(text, Loader=loader))  # both are safe loaders
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise SourceError(f"{origin}: invalid YAML{where}: {problem}") from None


def _from_documents(documents: list[Any], origin: str) -> Loaded:
    objects: list[dict[str, Any]] = []
    for document in documents:
        if document is None:
            continue
        if not isinstance(document, dict):
            raise SourceError(f"{origin}: a document is not a mapping of a Kubernetes object")
        if document.get("kind") == "List" or (document.get("kind", "").endswith("List")
                                              and isinstance(document.get("items"), list)):
            objects.extend(item for item in document.get("items") or [] if isinstance(item, dict))
        else:
            objects.append(document)
    services: list[ServiceRecord] = []
    slices: list[SliceRecord] = []
    namespaces: list[str] = []
    hosts: list[HostRecord] = []
    for obj in objects:
        kind = obj.get("kind")
        try:
            if kind == "Service":
                services.append(service_from_api(obj))
            elif kind == "EndpointSlice":
                slices.append(slice_from_api(obj))
            elif kind == "Namespace":
                namespaces.append(namespace_from_api(obj))
            elif kind == "Ingress":
                hosts.append(ingress_from_api(obj))
            elif kind == "Gateway":
                hosts.append(gateway_from_api(obj))
            elif kind in ROUTE_KINDS:
                hosts.append(route_from_api(obj))
        except InvalidObject as exc:
            logger.warning("%s: skipped: %s", origin, exc)
    return services, slices, namespaces, hosts


def parse_bytes(raw: bytes, origin: str, fast_yaml: bool) -> Loaded:
    """`parse_manifests` on the file's bytes (module level: a child process runs it for large files)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SourceError(f"{origin}: not UTF-8 text") from None
    return parse_manifests(text, origin, fast_yaml)


def parse_in_pieces(raw: bytes, origin: str) -> list[bytes]:
    """In the child process: `parse_bytes` with libyaml, the result pickled in pieces of `PIECE` records.

    The parent unpickles one piece at a time in its reader thread. One pickle of 100,000 records
    would be unpickled in one C call that holds the GIL (and so the event loop) for tens of
    milliseconds; pieces of a few hundred hold it for well under one.
    """
    services, slices, namespaces, hosts = parse_bytes(raw, origin, True)
    pieces = [pickle.dumps(namespaces)]
    records: list[Any]
    for records in (services, slices, hosts):
        pieces.append(pickle.dumps(len(records) // PIECE + 1))
        pieces.extend(pickle.dumps(records[i : i + PIECE]) for i in range(0, len(records) + 1, PIECE))
    return pieces


def _unpickle_pieces(pieces: list[bytes]) -> Loaded:
    """The inverse of `parse_in_pieces`, one short C call per piece (the GIL is free in between)."""
    # The pickles come from our own child process (the executor itself pickles its results).
    feed = iter(pieces)
    namespaces: list[str] = pickle.loads(next(feed))  # noqa: S301
    out: list[list[Any]] = []
    for _ in range(3):
        records: list[Any] = []
        for _ in range(pickle.loads(next(feed))):  # noqa: S301
            records.extend(pickle.loads(next(feed)))  # noqa: S301
        out.append(records)
    return out[0], out[1], namespaces, out[2]


def split_objects(text: str, parts: int) -> list[str] | None:
    """`text` cut into at most `parts` texts of whole objects, each valid on its own; None if it cannot be.

    Two layouts are cut: kubectl's `kind: List` (items as `- ` at column 0 under `items:`, which no
    line inside an item can start with: an item's own lines are indented) and multi-document YAML
    (`---` lines). Parsed one by one and concatenated, the parts give exactly what the whole gives.
    """
    if parts < 2 or text.startswith("%") or "\n%" in text:  # directives apply to what follows them
        return None
    if _LIST_KIND.search(text):
        items = _LIST_ITEMS.search(text)
        if items is None:
            return None
        after = _AFTER_ITEMS.search(text, items.end())
        if after is not None and not _TOP_LEVEL_KEY.match(text, after.start()):
            return None  # the list does not end in a plain key (a lone "-" item?): do not guess
        body = text[items.end() : after.start() if after else len(text)]
        starts = [m.start() for m in _ITEM_START.finditer(body)]
        if not starts or starts[0] != 0 or len(starts) < parts:
            return None
        per = -(-len(starts) // parts)
        bounds = [*starts[::per], len(body)]
        return [f"kind: List\nitems:\n{body[a:b]}" for a, b in itertools.pairwise(bounds)]
    documents = _DOCUMENT_START.split(text)
    if len(documents) < parts:
        return None
    per = -(-len(documents) // parts)
    return ["\n---\n".join(documents[i : i + per]) for i in range(0, len(documents), per)]


def _parse_in_children(raw: bytes, origin: str) -> Loaded:
    """Parse a large file in short-lived children at a low priority: in parallel when it is big enough."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    parts = None
    if len(raw) > PARALLEL_PARSE_BYTES and min(cpus, MAX_PARSERS) > 1:
        with contextlib.suppress(UnicodeDecodeError):
            parts = split_objects(raw.decode("utf-8"), min(cpus, MAX_PARSERS))
    if parts:
        try:
            results = [_unpickle_pieces(pieces) for pieces in _run_children([part.encode() for part in parts], origin)]
            return ([s for r in results for s in r[0]], [s for r in results for s in r[1]],
                    [n for r in results for n in r[2]], [h for r in results for h in r[3]])
        except SourceError:
            pass  # parse it whole below: the error's line numbers are then the file's own
    return _unpickle_pieces(_run_children([raw], origin)[0])


#: The parsing child: reads the file's bytes on stdin, writes the pickled pieces (or an error) on stdout.
_CHILD = "import sys; from dnsd.kube.manifests import _child_main; _child_main(sys.argv[1])"


def _run_children(inputs: list[bytes], origin: str) -> list[list[bytes]]:
    """Start one child per input, feed each its bytes, and collect what each sends back.

    Started with `subprocess` (vfork and exec), not `multiprocessing`: a plain fork of the server copies
    its page tables and then makes the event loop's thread take a copy-on-write fault on nearly every
    page it writes (reference counts are everywhere), measured at 20 to 40 ms of that thread's CPU per
    reload with 2,000 Services; after vfork the child has exec'd before the parent runs on.
    """
    # the argv is our own interpreter and code; origin (the file's path) is one argument, never a shell's
    children = [subprocess.Popen([sys.executable, "-c", _CHILD, origin], stdin=subprocess.PIPE,  # noqa: S603
                                 stdout=subprocess.PIPE) for _ in inputs]
    outputs: list[bytes] = [b""] * len(children)

    def talk(index: int) -> None:
        outputs[index] = children[index].communicate(inputs[index])[0]

    threads = [threading.Thread(target=talk, args=(i,), daemon=True) for i in range(1, len(children))]
    try:
        for thread in threads:
            thread.start()
        talk(0)
        for thread in threads:
            thread.join()
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    results: list[list[bytes]] = []
    for child, output in zip(children, outputs, strict=True):
        try:
            kind, value = pickle.loads(output)  # noqa: S301  # our own child's output
        except Exception:
            raise SourceError(f"{origin}: the parsing process failed (exit {child.returncode})") from None
        if kind == "error":
            raise SourceError(value)
        results.append(value)
    return results


def _child_main(origin: str) -> None:
    """The parsing child's whole life: lower its priority, parse stdin, pickle the result to stdout."""
    with contextlib.suppress(OSError):
        os.nice(10)  # on a shared core the server comes first
    raw = sys.stdin.buffer.read()
    try:
        result: tuple[str, Any] = ("ok", parse_in_pieces(raw, origin))
    except SourceError as exc:
        result = ("error", str(exc))
    sys.stdout.buffer.write(pickle.dumps(result))
    sys.stdout.buffer.flush()


class ManifestSource:
    """Feeds the zone from a manifests file and follows its changes."""

    def __init__(self, path: Path, zone: ZoneIndex, namespaces: tuple[str, ...] = ()) -> None:
        self.path = path
        self.zone = zone
        self.only_namespaces = set(namespaces)
        self._identity: tuple[int, int, int, int] | None = None
        self._digest = b""

    def _stat(self) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_dev, st.st_mtime_ns, st.st_size)

    def load(self) -> bool:
        """Read and apply the file if it changed; returns True when the zone was updated.

        Raises SourceError when the file cannot be read or parsed (the zone is left untouched).
        """
        return self._apply(self._read())

    def _read(self) -> tuple[bytes, Loaded] | None:
        """Read and parse the file (no zone access: `run` calls it in a thread so that parsing a
        large file never holds up answers); None when its content did not change."""
        identity = self._stat()
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            raise SourceError(f"{self.path}: cannot read: {exc.strerror}") from None
        self._identity = identity
        digest = hashlib.sha256(raw).digest()
        if digest == self._digest:
            return None
        if len(raw) <= CHILD_PARSE_BYTES:
            return digest, parse_bytes(raw, str(self.path), False)
        # A large file: parse it in a child process that exits afterwards, so that neither the
        # parse's peak memory nor its CPU time (it would hold the GIL) is ever the server's.
        # At a lower priority, so that a reload of a big file never takes the server's core from it.
        return digest, _parse_in_children(raw, str(self.path))

    def _apply(self, parsed: tuple[bytes, Loaded] | None) -> bool:
        if parsed is None:
            return False
        digest, (services, slices, namespaces, hosts) = self._filtered(parsed)
        changed = self.zone.replace(services, slices, namespaces, self._version(), hosts)
        self._digest = digest
        self._applied(services, slices, changed)
        return True

    async def _apply_stepped(self, parsed: tuple[bytes, Loaded] | None) -> bool:
        """A reload: the same diff as `_apply`, in steps that yield to the event loop (`ZoneIndex.resync_all`)."""
        if parsed is None:
            return False
        digest, (services, slices, namespaces, hosts) = self._filtered(parsed)
        self._digest = digest  # first: a poll during the steps must not read the same content again
        changed = await self.zone.resync_all(services, slices, namespaces, self._version(), hosts)
        self._applied(services, slices, changed)
        release_free_memory()  # the parse of the whole file is garbage now (the first load: mark_synced)
        return True

    def _version(self) -> int | None:
        """The file's version of the data: its mtime in seconds (the serial design in dnsd.zone)."""
        return self._identity[2] // 1_000_000_000 if self._identity is not None else None

    def _filtered(self, parsed: tuple[bytes, Loaded]) -> tuple[bytes, Loaded]:
        digest, (services, slices, namespaces, hosts) = parsed
        if self.only_namespaces:
            services = [s for s in services if s.namespace in self.only_namespaces]
            slices = [s for s in slices if s.namespace in self.only_namespaces]
            namespaces = [n for n in namespaces if n in self.only_namespaces]
            hosts = [h for h in hosts if h.namespace in self.only_namespaces]
        return digest, (services, slices, namespaces, hosts)

    def _applied(self, services: list[ServiceRecord], slices: list[SliceRecord], changed: int) -> None:
        metrics.SOURCE_EVENTS.labels(kind="file", type="RELOAD").inc()
        metrics.SOURCE_LAST_SYNC.labels(kind="file").set_to_current_time()
        logger.info("loaded %s: %d services, %d endpoint slices, %d changed; serial %d",
                    self.path, len(services), len(slices), changed, self.zone.serial)

    async def run(self) -> None:
        """Follow the file until cancelled; errors after the first load never stop the loop."""
        reported = ""
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            if self._stat() == self._identity:
                continue
            try:
                await self._apply_stepped(await asyncio.to_thread(self._read))
                reported = ""
            except SourceError as exc:
                metrics.SOURCE_ERRORS.labels(source="file").inc()
                if str(exc) != reported:  # one clear line per bad state, not one per poll
                    logger.error("%s; keeping the last good data", exc)
                    reported = str(exc)
