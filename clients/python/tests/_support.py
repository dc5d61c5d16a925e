"""What the tests share: the package on sys.path, the agent's socket, and
facts read from /proc to compare the agent's answers with."""

import os
import sys
import time
import unittest
from typing import Callable, Optional

# `python3 -m unittest discover -s clients/python/tests` puts this directory
# on sys.path, not the package's: add it (first, so this checkout's package
# is the one tested even when another is installed).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: The socket of the agent the tests ask; unset, they are skipped.
SOCKET: Optional[str] = os.environ.get("PIDMAP_SOCKET") or None

#: How long anything the agent must notice may take.
EVENTUALLY = 15.0

needs_agent = unittest.skipUnless(
    SOCKET,
    "PIDMAP_SOCKET is not set: these tests ask a running pidmap agent "
    "(run one as root with `pidmap agent --socket PATH`, then set PIDMAP_SOCKET=PATH)",
)


def proc_stat(pid: int) -> "tuple[str, int, int]":
    """(comm, ppid, start time in clock ticks) of ``pid``, from /proc."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    comm = stat[stat.index(b"(") + 1 : stat.rindex(b")")].decode()
    fields = stat[stat.rindex(b")") + 2 :].split()
    return comm, int(fields[1]), int(fields[19])


def unused_pid() -> int:
    """A pid no process has: pid_max itself (pids stay below it)."""
    with open("/proc/sys/kernel/pid_max") as f:
        pid = int(f.read())
    assert not os.path.exists(f"/proc/{pid}")
    return pid


def wait_until(condition: Callable[[], bool], timeout: float = EVENTUALLY) -> bool:
    """Polls ``condition`` every 10 ms until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
