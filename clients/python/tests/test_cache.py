"""pidmap.Cache against a real agent (PIDMAP_SOCKET): the snapshot, a child
process followed from its start to its exit, misses, re-syncs."""

import os
import subprocess
import time
import unittest

from _support import EVENTUALLY, SOCKET, needs_agent, proc_stat, unused_pid, wait_until

import pidmap


def start_child(test: unittest.TestCase) -> "tuple[subprocess.Popen[bytes], int]":
    """A `sh` that waits on its stdin, once it runs (it said so); killed and
    reaped at the end of the test if it still runs. Returns it and its
    start time."""
    child = subprocess.Popen(
        ["sh", "-c", "echo ready; read -r _"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )

    def reap() -> None:
        if child.poll() is None:
            child.kill()
        child.wait()
        for pipe in (child.stdin, child.stdout):
            if pipe is not None and not pipe.closed:
                pipe.close()

    test.addCleanup(reap)
    assert child.stdout is not None
    test.assertEqual(child.stdout.readline(), b"ready\n")
    _, _, start = proc_stat(child.pid)
    return child, start


def end_child(child: "subprocess.Popen[bytes]") -> None:
    """Lets the child exit, and reaps it."""
    assert child.stdin is not None
    child.stdin.close()
    child.wait(timeout=EVENTUALLY)


def field(cache: pidmap.Cache, pid: int, start: int, key: str) -> object:
    record = cache.get(pid, start)
    return None if record is None else record[key]


@needs_agent
class CacheTest(unittest.TestCase):
    def setUp(self) -> None:
        self.cache = pidmap.Cache(SOCKET, max_backoff=0.2)
        self.addCleanup(self.cache.close)
        self.assertTrue(self.cache.wait_synced(EVENTUALLY), "the cache synced")

    def test_this_process_is_answered_from_memory(self) -> None:
        comm, ppid, start = proc_stat(os.getpid())
        record = self.cache.get(os.getpid())
        self.assertIsNotNone(record, "this process is in the snapshot")
        assert record is not None
        self.assertEqual(
            (record["pid"], record["state"], record["comm"], record["ppid"], record["start_time"]),
            (os.getpid(), "running", comm, ppid, start),
        )
        self.assertIs(self.cache.get(os.getpid(), start), record)
        self.assertIs(self.cache.lookup(os.getpid()), record)
        self.assertIs(self.cache.lookup(os.getpid(), start), record)
        self.assertIsNone(self.cache.get(os.getpid(), start + 1), "another process on this pid")
        self.assertEqual(self.cache.stats()["fallbacks"], 0, "no request was made")

    def test_a_child_is_followed_from_its_start_to_its_exit(self) -> None:
        child, start = start_child(self)
        self.assertTrue(
            wait_until(lambda: field(self.cache, child.pid, start, "comm") == "sh"),
            f"the child {child.pid} reached the cache: {self.cache.get(child.pid)}",
        )
        record = self.cache.get(child.pid, start)
        assert record is not None
        self.assertEqual((record["state"], record["ppid"]), ("running", os.getpid()))

        end_child(child)
        self.assertTrue(
            wait_until(lambda: field(self.cache, child.pid, start, "state") == "exited"),
            f"its exit reached the cache: {self.cache.get(child.pid, start)}",
        )
        # The agent says the same, for its grace window.
        self.assertEqual(self.cache.client.process(child.pid, start)["state"], "exited")

    def test_exited_processes_leave_after_the_grace(self) -> None:
        cache = pidmap.Cache(SOCKET, exited_grace=0.5)
        self.addCleanup(cache.close)
        self.assertTrue(cache.wait_synced(EVENTUALLY))
        child, start = start_child(self)
        self.assertTrue(wait_until(lambda: field(cache, child.pid, start, "comm") == "sh"))
        end_child(child)
        self.assertTrue(wait_until(lambda: field(cache, child.pid, start, "state") == "exited"))
        self.assertTrue(
            wait_until(lambda: cache.get(child.pid, start) is None, timeout=5.0),
            "the exit left the cache after its grace",
        )

    def test_a_miss_is_asked_of_the_agent_once(self) -> None:
        pid = unused_pid()
        self.assertIsNone(self.cache.get(pid))
        before = self.cache.stats()["fallbacks"]
        record = self.cache.lookup(pid)
        self.assertEqual((record["pid"], record["state"]), (pid, "unknown"))
        self.assertEqual(self.cache.stats()["fallbacks"], before + 1)
        self.assertIsNone(self.cache.get(pid), "an answer asked for is not cached")

    def test_a_broken_stream_is_followed_by_a_new_snapshot(self) -> None:
        child, start = start_child(self)
        self.assertTrue(wait_until(lambda: field(self.cache, child.pid, start, "comm") == "sh"))
        end_child(child)
        self.assertTrue(wait_until(lambda: field(self.cache, child.pid, start, "state") == "exited"))

        self.cache._drop_stream()
        self.assertTrue(wait_until(lambda: self.cache.stats()["snapshots"] == 2), "re-synced")
        self.assertTrue(self.cache.wait_synced(EVENTUALLY))
        self.assertIsNotNone(self.cache.get(os.getpid()), "this process is in the new snapshot")
        self.assertEqual(
            field(self.cache, child.pid, start, "state"),
            "exited",
            "an exit seen before the re-sync stays for its grace",
        )
        other, other_start = start_child(self)
        self.assertTrue(
            wait_until(lambda: field(self.cache, other.pid, other_start, "comm") == "sh"),
            "changes flow again after the re-sync",
        )

    def test_close_stops_following(self) -> None:
        cache = pidmap.Cache(SOCKET)
        self.assertTrue(cache.wait_synced(EVENTUALLY))
        began = time.monotonic()
        cache.close()
        self.assertLess(time.monotonic() - began, 2.0, "close does not wait for an event")
        self.assertFalse(cache.is_synced)
        self.assertFalse(any(t.is_alive() for t in cache._threads))
        self.assertIsNotNone(cache.get(os.getpid()), "what was cached stays")


class UnreachableTest(unittest.TestCase):
    def test_an_absent_agent_leaves_the_cache_unsynced(self) -> None:
        with pidmap.Cache("/nonexistent/pidmap.sock", max_backoff=0.1) as cache:
            self.assertFalse(cache.wait_synced(0.3))
            self.assertIsNone(cache.get(1))
            with self.assertRaises(OSError):
                cache.lookup(1)


if __name__ == "__main__":
    unittest.main()
