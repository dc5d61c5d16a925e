"""A local copy of the agent's map, kept current by ``/v1/watch``.

Like the Rust client's ``Cache`` (and a Kubernetes informer): list (the
snapshot), then watch (the changes), and on any break list again. A lookup
is a ``dict`` read in the calling thread: no socket, no lock. One background
thread follows the stream and is the only one that changes the map (a
second one drops expired entries, under the same writer lock); each entry is
replaced whole, never changed in place, so a reader sees an old record or a
new one, never half of each.

Processes are kept by (pid, start time), as the agent keeps them: an exited
process stays for ``exited_grace`` seconds (the agent's default grace, 30 s)
beside a new process that reuses its pid. After a reconnect the new snapshot
replaces the copy at once, when it is complete: live processes it does not
list are dropped; exits seen before are kept for their grace window, since
the snapshot lists live processes only.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any, Deque, Dict, Optional, Set, Tuple

from .client import Client, PidmapError, Record, Watch

log = logging.getLogger("pidmap")
# A library: its warnings (the stream breaking) show only where the
# application configured logging.
log.addHandler(logging.NullHandler())

#: First wait before reconnecting, in seconds; doubles up to ``max_backoff``.
FIRST_BACKOFF = 0.1
#: Seconds between drops of exited processes past their grace window.
EXPIRY_TICK = 1.0

ContainerKey = Tuple[str, str]  # (runtime namespace, container id)
ProcessKey = Tuple[int, int]  # (pid, start time)

#: The keys of a record that describe its container.
_CONTAINER_KEYS = ("image", "pod_name", "pod_namespace", "container_name", "labels")


def _is_live(record: Record) -> bool:
    return bool(record["state"] != "exited")


def _container_key(record: Record) -> Optional[ContainerKey]:
    """The key of a record's container, when the agent sent one (a
    container known from the cgroup path alone has no runtime namespace in
    the record, as in the Rust client)."""
    namespace = record.get("runtime_namespace")
    container_id = record.get("container_id")
    if namespace is None or container_id is None:
        return None
    return (namespace, container_id)


def _with_container(record: Record, container: Record) -> Record:
    """A copy of ``record`` with ``container``'s description, as the agent
    would give it now."""
    merged = dict(record)
    for key in _CONTAINER_KEYS:
        merged[key] = container.get(key)
    if container.get("pod_uid") is not None:
        merged["pod_uid"] = container["pod_uid"]
    return merged


class _View:
    """What the cache knows. ``best`` answers a pid without start time (its
    live process, else the one that exited last); ``procs`` holds every
    process of a pid by start time."""

    __slots__ = ("best", "procs", "containers", "members")

    def __init__(self) -> None:
        self.best: Dict[int, Record] = {}
        self.procs: Dict[int, Dict[int, Record]] = {}
        self.containers: Dict[ContainerKey, Record] = {}
        # The processes cached per container, to follow its changes.
        self.members: Dict[ContainerKey, Set[ProcessKey]] = {}

    def put_process(self, record: Record) -> None:
        pid, start = record["pid"], record["start_time"]
        slot = self.procs.setdefault(pid, {})
        if _is_live(record):
            # One pid, one live process: another live one exited unseen.
            for other in [s for s, r in slot.items() if s != start and _is_live(r)]:
                self._unlink(pid, other, slot.pop(other))
        old = slot.get(start)
        if old is not None:
            self._unlink(pid, start, old)
        key = _container_key(record)
        if key is not None:
            self.members.setdefault(key, set()).add((pid, start))
        slot[start] = record
        self._refresh(pid)

    def drop_process(self, pid: int, start: int) -> None:
        slot = self.procs.get(pid, {})
        record = slot.pop(start, None)
        if record is not None:
            self._unlink(pid, start, record)
            self._refresh(pid)

    def put_container(self, container: Record, deleted: bool) -> ContainerKey:
        key = (container["runtime_namespace"], container["container_id"])
        container = dict(container, deleted=deleted)
        self.containers[key] = container
        for pid, start in list(self.members.get(key, ())):
            slot = self.procs.get(pid, {})
            record = slot.get(start)
            if record is not None:
                merged = _with_container(record, container)
                slot[start] = merged
                if self.best.get(pid) is record:
                    self.best[pid] = merged
        return key

    def _unlink(self, pid: int, start: int, record: Record) -> None:
        key = _container_key(record)
        members = self.members.get(key) if key is not None else None
        if members is not None:
            members.discard((pid, start))
            if not members:
                del self.members[key]  # type: ignore[arg-type]

    def _refresh(self, pid: int) -> None:
        slot = self.procs.get(pid)
        if not slot:
            self.best.pop(pid, None)
            self.procs.pop(pid, None)
            return
        live = [r for r in slot.values() if _is_live(r)]
        self.best[pid] = live[0] if live else max(slot.values(), key=lambda r: r["start_time"])


class _Expiry:
    """What must be forgotten later, oldest first: exited processes and
    deleted containers, with the monotonic time the cache learned of them."""

    __slots__ = ("exited", "deleted")

    def __init__(self) -> None:
        self.exited: Deque[Tuple[float, int, int]] = collections.deque()
        self.deleted: Deque[Tuple[float, ContainerKey]] = collections.deque()


def _apply(view: _View, expiry: _Expiry, event: Record, now: float) -> None:
    """Applies one ``/v1/watch`` event to ``view``."""
    kind = event.get("event")
    if kind in ("process", "process_changed"):
        record = event["record"]
        # A record without a start time (state "unknown") is the agent
        # saying it no longer knows the process: what is cached expires on
        # its own.
        if record.get("start_time") is None or record.get("state") == "unknown":
            return
        view.put_process(record)
        if not _is_live(record):
            expiry.exited.append((now, record["pid"], record["start_time"]))
    elif kind in ("container", "container_changed"):
        view.put_container(event["container"], deleted=False)
    elif kind == "container_deleted":
        key = view.put_container(event["container"], deleted=True)
        expiry.deleted.append((now, key))


def _carry_over(old: _View, new: _View, expiry: _Expiry) -> _Expiry:
    """Keeps in ``new`` (a snapshot) the exited processes and deleted
    containers ``old`` still holds; returns what must expire of them."""
    carried = _Expiry()
    for at, pid, start in expiry.exited:
        record = old.procs.get(pid, {}).get(start)
        if record is None or _is_live(record) or start in new.procs.get(pid, {}):
            continue
        new.put_process(record)
        carried.exited.append((at, pid, start))
    for at, key in expiry.deleted:
        container = old.containers.get(key)
        if container is not None and key not in new.containers:
            new.containers[key] = container
            carried.deleted.append((at, key))
    return carried


def _expire(view: _View, expiry: _Expiry, grace: float, most: int, now: float) -> None:
    """Drops exited processes and deleted containers past the grace window,
    and the oldest beyond ``most``."""
    exited, deleted = expiry.exited, expiry.deleted
    while exited and (now - exited[0][0] >= grace or len(exited) > most):
        _, pid, start = exited.popleft()
        record = view.procs.get(pid, {}).get(start)
        if record is not None and not _is_live(record):
            view.drop_process(pid, start)
    while deleted and (now - deleted[0][0] >= grace or len(deleted) > most):
        _, key = deleted.popleft()
        container = view.containers.get(key)
        if container is not None and container["deleted"]:
            del view.containers[key]


class Cache:
    """A local copy of the agent's map, fed by ``/v1/watch`` on a daemon
    thread that starts at once (see the module docs).

    ``socket_path`` as for :class:`~pidmap.Client` (or pass ``client``);
    ``exited_grace`` is how long, in seconds, an exited process (and a
    deleted container) stays after the cache learned of it; ``max_exited``
    the most kept at once; ``max_backoff`` the longest wait between
    reconnects. Records are shared: treat them as read-only.
    """

    def __init__(
        self,
        socket_path: Optional[str] = None,
        *,
        client: Optional[Client] = None,
        exited_grace: float = 30.0,
        max_exited: int = 65_536,
        max_backoff: float = 5.0,
    ) -> None:
        #: The client misses are asked with (also usable for other calls).
        self.client = client if client is not None else Client(socket_path)
        self.exited_grace = exited_grace
        self.max_exited = max_exited
        self.max_backoff = max_backoff
        self._view = _View()
        self._expiry = _Expiry()
        self._lock = threading.Lock()  # taken by writers only
        self._synced = threading.Event()
        self._stop = threading.Event()
        self._stream: Optional[Watch] = None
        self._stream_lock = threading.Lock()
        self._snapshots = 0
        self._events = 0
        self._fallbacks = 0
        self._threads = [
            threading.Thread(target=self._follow, name="pidmap-cache", daemon=True),
            threading.Thread(target=self._tick, name="pidmap-cache-expiry", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    # -- lookups -------------------------------------------------------

    def get(self, pid: int, start_time: Optional[int] = None) -> Optional[Record]:
        """The cached record of ``pid`` (with ``start_time``, of that process
        only; without, the live process, else the one that exited last), or
        ``None`` when the cache does not know it. Never asks the agent."""
        view = self._view
        if start_time is None:
            return view.best.get(pid)
        slot = view.procs.get(pid)
        return None if slot is None else slot.get(start_time)

    def lookup(self, pid: int, start_time: Optional[int] = None) -> Record:
        """As :meth:`get`, but a miss (a process newer than the stream has
        delivered, one the cache never knew, or any pid before the first
        snapshot) is asked of the agent: one ``/v1/processes/{pid}`` request.
        The answer is the agent's (``state`` ``"unknown"`` for no such
        process); it is not cached. Raises as :class:`~pidmap.Client` does
        when the agent cannot answer."""
        view = self._view
        if start_time is None:
            record = view.best.get(pid)
        else:
            slot = view.procs.get(pid)
            record = None if slot is None else slot.get(start_time)
        if record is not None:
            return record
        self._fallbacks += 1
        return self.client.process(pid, start_time)

    def container(self, namespace: str, container_id: str) -> Optional[Record]:
        """The cached container (its ``/v1/containers`` keys, plus
        ``deleted``), also one deleted within the grace window."""
        return self._view.containers.get((namespace, container_id))

    # -- state ---------------------------------------------------------

    @property
    def is_synced(self) -> bool:
        """Whether the cache follows the agent right now: a snapshot is in
        and its stream is open. While it is not, lookups answer what the
        cache held (misses still ask the agent)."""
        return self._synced.is_set()

    def wait_synced(self, timeout: Optional[float] = None) -> bool:
        """Waits until the cache is synced; returns whether it is."""
        return self._synced.wait(timeout)

    def stats(self) -> Dict[str, Any]:
        """Counters: processes and containers held (exited and deleted ones
        included), snapshots applied, events received, misses asked of the
        agent (approximate under concurrent lookups)."""
        with self._lock:
            view = self._view
            return {
                "processes": sum(len(slot) for slot in view.procs.values()),
                "containers": len(view.containers),
                "snapshots": self._snapshots,
                "events": self._events,
                "fallbacks": self._fallbacks,
                "synced": self.is_synced,
            }

    def close(self) -> None:
        """Stops following the agent (the threads end) and closes the
        client. Lookups still answer what was cached."""
        self._stop.set()
        with self._stream_lock:
            if self._stream is not None:
                self._stream.close()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=5.0)
        self._synced.clear()
        self.client.close()

    def __enter__(self) -> "Cache":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the background threads ----------------------------------------

    def _follow(self) -> None:
        """Sessions, one per connection, with backoff between them."""
        backoff = FIRST_BACKOFF
        while not self._stop.is_set():
            synced = self._session()
            self._synced.clear()
            if synced:
                backoff = FIRST_BACKOFF
            if self._stop.wait(backoff):
                return
            backoff = min(backoff * 2, max(self.max_backoff, FIRST_BACKOFF))

    def _session(self) -> bool:
        """One stream: the snapshot, built aside and swapped in whole, then
        the changes. Returns whether the snapshot was applied."""
        try:
            stream = self.client.watch()
        except (OSError, PidmapError) as e:
            log.debug("pidmap cache: cannot watch %s (%s); retrying", self.client.socket_path, e)
            return False
        with self._stream_lock:
            if self._stop.is_set():
                stream.close()
                return False
            self._stream = stream
        fresh: Optional[_View] = _View()
        fresh_expiry = _Expiry()
        try:
            for event in stream:
                self._events += 1
                now = time.monotonic()
                if fresh is None:
                    with self._lock:
                        _apply(self._view, self._expiry, event, now)
                        _expire(self._view, self._expiry, self.exited_grace, self.max_exited, now)
                elif event.get("event") == "snapshot_done":
                    with self._lock:
                        expiry = _carry_over(self._view, fresh, self._expiry)
                        # What the snapshot brought is newer than what was
                        # carried over.
                        expiry.exited.extend(fresh_expiry.exited)
                        expiry.deleted.extend(fresh_expiry.deleted)
                        _expire(fresh, expiry, self.exited_grace, self.max_exited, now)
                        self._view, self._expiry = fresh, expiry
                    fresh = None
                    self._snapshots += 1
                    self._synced.set()
                else:
                    _apply(fresh, fresh_expiry, event, now)
            if not self._stop.is_set():
                log.warning("pidmap cache: the agent ended the watch stream; re-syncing")
        except (OSError, PidmapError, ValueError) as e:
            if not self._stop.is_set():
                log.warning("pidmap cache: watch stream broken (%s); re-syncing", e)
        except Exception:  # a bug: say so, and keep following
            log.exception("pidmap cache: unexpected error; re-syncing")
        finally:
            with self._stream_lock:
                self._stream = None
            stream.close()
        return fresh is None

    def _tick(self) -> None:
        """Drops expired entries when no change arrives to do it."""
        while not self._stop.wait(EXPIRY_TICK):
            with self._lock:
                _expire(self._view, self._expiry, self.exited_grace, self.max_exited, time.monotonic())

    def _drop_stream(self) -> None:
        """Ends the current stream as a broken connection would (for tests:
        the cache re-syncs)."""
        with self._stream_lock:
            if self._stream is not None:
                self._stream.close()
