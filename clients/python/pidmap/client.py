"""The thin client: one method per HTTP/JSON endpoint of the agent.

Requests are ``GET`` over HTTP/1.1 on the agent's Unix socket, on one
kept-alive connection per :class:`Client` (reconnected when the agent closed
it). Answers are the agent's JSON, parsed: records and containers are plain
``dict`` objects with exactly the keys of ``pidmap resolve -o json`` and
``pidmap ls -o json`` (every key present, ``None`` when not known).
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union
from urllib.parse import quote, urlencode

#: Where the agent listens unless told otherwise (the agent's ``--socket``
#: default).
DEFAULT_SOCKET = "/run/pidmap/pidmap.sock"

#: The environment variable naming the agent's socket, when set and not empty.
SOCKET_ENV = "PIDMAP_SOCKET"

#: Seconds a request may take (connecting, sending, the whole answer).
DEFAULT_TIMEOUT = 5.0

#: A process record or a container, as the agent sends it.
Record = Dict[str, Any]

#: A pid, or a pid and the start time that names one process on it.
PidSpec = Union[int, Tuple[int, int]]


def default_socket() -> str:
    """The socket ``$PIDMAP_SOCKET`` names, else :data:`DEFAULT_SOCKET`."""
    return os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


class PidmapError(Exception):
    """The agent answered a request with an error.

    ``status`` is the HTTP status (``None`` for an error that ended a
    ``/v1/watch`` stream), ``code`` the gRPC code's name the agent gives
    (``"InvalidArgument"``, ``"NotFound"``, ``"Unavailable"``, …) and
    ``message`` its explanation. An agent that cannot be reached raises
    :class:`OSError` (``FileNotFoundError``, ``ConnectionRefusedError``,
    ``ConnectionError``, ``TimeoutError``) instead.
    """

    def __init__(self, status: Optional[int], code: str, message: str) -> None:
        super().__init__(f"{code}: {message}" if status is None else f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message

    @classmethod
    def from_body(cls, status: Optional[int], body: Any) -> "PidmapError":
        """The error a JSON answer ``{"error": {"code", "message"}}`` gives."""
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            return cls(status, str(error.get("code")), str(error.get("message")))
        return cls(status, "Unknown", f"unexpected answer: {body!r}")


class _UnixConnection(http.client.HTTPConnection):
    """HTTP/1.1 over a Unix socket (the host name is sent, not used)."""

    def __init__(self, path: str, timeout: Optional[float]) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class Watch:
    """A ``/v1/watch`` stream: an iterator of its parsed JSON lines.

    First ``process`` and ``container`` events (the snapshot), then
    ``{"event": "snapshot_done"}``, then ``process_changed``,
    ``container_changed`` and ``container_deleted`` as they happen. A stream
    the agent cuts off (the reader fell behind, the agent is shutting down)
    raises :class:`PidmapError`; one that breaks raises
    :class:`ConnectionError`. :meth:`close` may be called from another
    thread to end a blocked read.
    """

    def __init__(self, conn: _UnixConnection, response: http.client.HTTPResponse) -> None:
        self._conn = conn
        self._response = response
        self._lock = threading.Lock()
        self._reading = False
        self._closed = False

    def __iter__(self) -> "Watch":
        return self

    def __next__(self) -> Record:
        while True:
            with self._lock:
                if self._closed:
                    raise StopIteration
                self._reading = True
            broken: Optional[Exception] = None
            try:
                line = self._response.readline()
            except (http.client.HTTPException, OSError, ValueError) as e:
                line, broken = b"", e
            finally:
                with self._lock:
                    self._reading = False
                    closed = self._closed
            if closed or broken is not None or not line:
                self._conn.close()
                with self._lock:
                    self._closed = True
                if broken is not None and not closed:
                    raise ConnectionError(f"the watch stream broke: {broken!r}") from broken
                raise StopIteration
            if line.strip():
                break
        event: Record = json.loads(line)
        if event.get("event") == "error":
            self.close()
            raise PidmapError.from_body(None, event)
        return event

    def close(self) -> None:
        """Ends the stream. From another thread, a read blocked in
        :meth:`__next__` returns, and the iteration stops."""
        with self._lock:
            self._closed = True
            sock = self._conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            if self._reading:
                return  # the reader closes the connection
        self._conn.close()

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pid_param(spec: PidSpec) -> str:
    if isinstance(spec, tuple):
        pid, start_time = spec
        return f"{int(pid)}:{int(start_time)}"
    return str(int(spec))


def _label_params(labels: Union[Mapping[str, str], Iterable[str], None]) -> List[str]:
    if labels is None:
        return []
    if isinstance(labels, Mapping):
        return [f"{k}={v}" for k, v in labels.items()]
    return list(labels)


class Client:
    """A client of the agent's HTTP/JSON API on its Unix socket.

    ``socket_path`` defaults to :func:`default_socket` (``$PIDMAP_SOCKET``,
    else ``/run/pidmap/pidmap.sock``); ``timeout`` bounds each request in
    seconds. Safe to share between threads (requests take turns on the one
    connection). Methods with ``otel=True`` answer OpenTelemetry resource
    attributes instead of records.
    """

    def __init__(self, socket_path: Optional[str] = None, timeout: Optional[float] = DEFAULT_TIMEOUT) -> None:
        self.socket_path = socket_path or default_socket()
        self.timeout = timeout
        self._lock = threading.Lock()
        self._conn: Optional[_UnixConnection] = None
        self._conn_pid = 0

    # -- the endpoints -------------------------------------------------

    def process(self, pid: int, start_time: Optional[int] = None, *, otel: bool = False) -> Record:
        """``/v1/processes/{pid}``: the record of ``pid`` (with
        ``start_time``, of that process only). An unknown pid is not an
        error: its record has ``state`` ``"unknown"``."""
        params: Dict[str, Any] = {}
        if start_time is not None:
            params["start_time"] = int(start_time)
        record: Record = self._get(f"/v1/processes/{int(pid)}", params, otel)
        return record

    def processes(self, pids: Iterable[PidSpec], *, otel: bool = False) -> List[Record]:
        """``/v1/processes?pid=…``: records in the order asked; each item is
        a pid or a ``(pid, start_time)`` pair. At most the agent's batch
        limit (4,096 by default) at once."""
        records: List[Record] = self._get("/v1/processes", {"pid": [_pid_param(p) for p in pids]}, otel)
        return records

    def containers(
        self,
        *,
        namespace: Optional[str] = None,
        pod: Optional[str] = None,
        pod_namespace: Optional[str] = None,
        labels: Union[Mapping[str, str], Iterable[str], None] = None,
        all: bool = False,
        otel: bool = False,
    ) -> List[Record]:
        """``/v1/containers``: the containers matching every filter given
        (``labels`` as a mapping or ``"key=value"`` strings; ``all`` includes
        deleted ones within their grace window)."""
        params: Dict[str, Any] = {
            "namespace": namespace,
            "pod": pod,
            "pod_namespace": pod_namespace,
            "label": _label_params(labels),
            "all": "true" if all else None,
        }
        containers: List[Record] = self._get("/v1/containers", params, otel)
        return containers

    def container_processes(
        self, container_id: str, *, namespace: Optional[str] = None, otel: bool = False
    ) -> List[Record]:
        """``/v1/containers/{id}/processes``: the live processes of a
        container; an unknown container raises :class:`PidmapError`
        (``NotFound``)."""
        path = f"/v1/containers/{quote(container_id, safe='')}/processes"
        records: List[Record] = self._get(path, {"namespace": namespace}, otel)
        return records

    def whoami(self, *, otel: bool = False) -> Record:
        """``/v1/whoami``: the record of the process that opened this
        client's connection (the agent reads the socket's peer
        credentials)."""
        record: Record = self._get("/v1/whoami", {}, otel)
        return record

    def status(self) -> Record:
        """``/v1/status``: readiness and counters, as ``pidmap status -o
        json``."""
        status: Record = self._get("/v1/status", {}, False)
        return status

    def watch(self) -> Watch:
        """``/v1/watch``, on a connection of its own: see :class:`Watch`."""
        conn = _UnixConnection(self.socket_path, self.timeout)
        try:
            conn.request("GET", "/v1/watch", headers={"Accept": "application/x-ndjson"})
            response = conn.getresponse()
            if response.status != 200:
                raise PidmapError.from_body(response.status, _parse(response.read()))
            # Changes may be minutes apart: reads wait as long as it takes.
            if conn.sock is not None:
                conn.sock.settimeout(None)
            return Watch(conn, response)
        except BaseException:
            conn.close()
            raise

    def close(self) -> None:
        """Closes the kept-alive connection (a later request opens another)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the plumbing --------------------------------------------------

    def _get(self, path: str, params: Mapping[str, Any], otel: bool) -> Any:
        query = {k: v for k, v in params.items() if v is not None and v != []}
        if otel:
            query["format"] = "otel"
        target = f"{path}?{urlencode(query, doseq=True)}" if query else path
        status, body = self._request(target)
        value = _parse(body)
        if 200 <= status < 300:
            return value
        raise PidmapError.from_body(status, value)

    def _request(self, target: str) -> Tuple[int, bytes]:
        """One GET on the kept-alive connection; once more on a new one if
        the agent had closed the old one meanwhile."""
        with self._lock:
            if self._conn is not None and self._conn_pid != os.getpid():
                # Inherited across fork(): the parent's, not ours to use.
                self._conn = None
            for attempt in (1, 2):
                reused = self._conn is not None
                if self._conn is None:
                    self._conn = _UnixConnection(self.socket_path, self.timeout)
                    self._conn_pid = os.getpid()
                conn = self._conn
                try:
                    conn.request("GET", target, headers={"Accept": "application/json"})
                    response = conn.getresponse()
                    body = response.read()
                except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                    conn.close()
                    self._conn = None
                    if reused and attempt == 1:
                        continue
                    raise
                except http.client.HTTPException as e:
                    conn.close()
                    self._conn = None
                    raise ConnectionError(f"bad answer from {self.socket_path}: {e!r}") from e
                except BaseException:
                    conn.close()
                    self._conn = None
                    raise
                if response.will_close:
                    conn.close()
                    self._conn = None
                return response.status, body
        raise AssertionError("unreachable")


def _parse(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")
