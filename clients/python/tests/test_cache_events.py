"""pidmap.Cache fed scripted /v1/watch streams (no agent needed): the
snapshot built aside, changes, pid reuse, containers, re-syncs, expiry."""

import queue
import unittest
from typing import Any, Dict, List, Optional

from _support import wait_until

import pidmap


def record(pid: int, start: Optional[int], state: str = "running", container: Optional[Dict[str, Any]] = None,
           comm: str = "app") -> Dict[str, Any]:
    """A record as the agent sends it: every key, null when not known."""
    c = container or {}
    return {
        "pid": pid, "start_time": start, "state": state,
        "source": "containerd" if container else "host",
        "container_id": c.get("container_id"), "runtime_namespace": c.get("runtime_namespace"),
        "image": c.get("image"), "pod_name": c.get("pod_name"),
        "pod_namespace": c.get("pod_namespace"), "pod_uid": c.get("pod_uid"),
        "container_name": c.get("container_name"), "cgroup_id": 7, "cgroup_hierarchy": "unified",
        "cgroup_path": "/x", "ppid": 1, "comm": comm, "labels": c.get("labels", {}),
    }


def container(cid: str, image: str, pod: str = "web-0") -> Dict[str, Any]:
    return {
        "container_id": cid, "runtime_namespace": "k8s.io", "image": image, "status": "running",
        "task_pid": 10, "exit_code": None, "pod_name": pod, "pod_namespace": "shop",
        "pod_uid": "u1", "container_name": "app", "sandbox_id": None, "is_sandbox": False,
        "cgroup_id": 7, "cgroup_hierarchy": "unified", "cgroup_path": "/x", "runtime": "runc",
        "source": "containerd", "labels": {"app": "web"},
    }


def ev(kind: str, **body: Any) -> Dict[str, Any]:
    return dict(event=kind, **body)


DONE = ev("snapshot_done")


class FakeStream:
    """A watch stream the test writes events into; None ends it."""

    def __init__(self) -> None:
        self.events: "queue.Queue[Optional[Dict[str, Any]]]" = queue.Queue()

    def __iter__(self) -> "FakeStream":
        return self

    def __next__(self) -> Dict[str, Any]:
        event = self.events.get()
        if event is None:
            raise StopIteration
        return event

    def send(self, *events: Dict[str, Any]) -> None:
        for event in events:
            self.events.put(event)

    def close(self) -> None:
        self.events.put(None)


class FakeClient(pidmap.Client):
    """Hands out the streams queued in ``streams``; no stream queued is an
    agent that is down. Records the misses asked."""

    def __init__(self) -> None:
        super().__init__("/nonexistent/pidmap.sock")
        self.streams: "queue.Queue[FakeStream]" = queue.Queue()
        self.asked: List[int] = []

    def watch(self) -> Any:
        try:
            return self.streams.get(timeout=0.02)
        except queue.Empty:
            raise ConnectionRefusedError("no agent") from None

    def process(self, pid: int, start_time: Optional[int] = None, *, otel: bool = False) -> Dict[str, Any]:
        self.asked.append(pid)
        return record(pid, None, state="unknown")


class CacheEventsTest(unittest.TestCase):
    def start(self, **settings: Any) -> "tuple[pidmap.Cache, FakeClient]":
        client = FakeClient()
        cache = pidmap.Cache(client=client, max_backoff=0.05, **settings)
        self.addCleanup(cache.close)
        return cache, client

    def connect(self, cache: pidmap.Cache, client: FakeClient, *events: Dict[str, Any]) -> FakeStream:
        """A new stream, taken by the cache, with ``events`` applied."""
        stream = FakeStream()
        client.streams.put(stream)
        self.send(cache, stream, *events)
        return stream

    def send(self, cache: pidmap.Cache, stream: FakeStream, *events: Dict[str, Any]) -> None:
        """Sends ``events`` and waits until the cache took them."""
        until = cache.stats()["events"] + len(events)
        stream.send(*events)
        self.assertTrue(wait_until(lambda: cache.stats()["events"] >= until, timeout=5), "events taken")

    def test_the_snapshot_counts_once_complete(self) -> None:
        cache, client = self.start()
        stream = self.connect(cache, client, ev("process", record=record(10, 100)))
        self.assertFalse(cache.is_synced)
        self.assertIsNone(cache.get(10), "the snapshot is built aside")
        self.send(cache, stream, DONE)
        self.assertTrue(cache.wait_synced(5))
        self.assertEqual(cache.get(10, 100), record(10, 100))

    def test_changes_and_pid_reuse(self) -> None:
        cache, client = self.start()
        stream = self.connect(cache, client, ev("process", record=record(11, 50)), DONE)
        self.send(cache, stream, ev("process_changed", record=record(11, 50, "exited")))
        self.assertEqual(cache.get(11)["state"], "exited")
        # pid 11 reused: the live process answers the bare pid, the exited
        # one stays for its start time.
        self.send(cache, stream, ev("process_changed", record=record(11, 70, "pending")))
        self.send(cache, stream, ev("process_changed", record=record(11, 70, comm="new")))
        self.assertEqual((cache.get(11)["start_time"], cache.get(11)["comm"]), (70, "new"))
        self.assertEqual(cache.get(11, 50)["state"], "exited")
        # A live process replaces a live one on its pid (its exit was not seen).
        self.send(cache, stream, ev("process_changed", record=record(11, 90)))
        self.assertIsNone(cache.get(11, 70))
        self.assertEqual(cache.get(11)["start_time"], 90)
        # "unknown" records change nothing.
        self.send(cache, stream, ev("process_changed", record=record(11, None, "unknown")))
        self.assertEqual(cache.get(11)["start_time"], 90)

    def test_records_follow_their_containers(self) -> None:
        cache, client = self.start()
        c1 = container("c1", "img:1")
        stream = self.connect(cache, client, ev("container", container=c1),
                              ev("process", record=record(7, 1, container=c1)), DONE)
        self.assertEqual(cache.get(7)["image"], "img:1")
        self.send(cache, stream, ev("container_changed", container=container("c1", "img:2", pod="web-1")))
        self.assertEqual((cache.get(7)["image"], cache.get(7, 1)["pod_name"]), ("img:2", "web-1"))
        self.assertIs(cache.container("k8s.io", "c1")["deleted"], False)
        self.send(cache, stream, ev("process_changed", record=record(7, 1, "exited", container=c1)),
                  ev("container_deleted", container=container("c1", "img:3")))
        self.assertIs(cache.container("k8s.io", "c1")["deleted"], True)
        self.assertEqual((cache.get(7)["state"], cache.get(7)["image"]), ("exited", "img:3"))

    def test_a_resync_drops_what_the_new_snapshot_lacks_and_keeps_exits(self) -> None:
        cache, client = self.start()
        gone = container("gone", "img")
        stream = self.connect(cache, client, ev("process", record=record(1, 1)),
                              ev("process", record=record(2, 1)), DONE)
        self.send(cache, stream, ev("process_changed", record=record(3, 1, "exited")),
                  ev("container_deleted", container=gone))
        stream.close()
        self.assertTrue(wait_until(lambda: not cache.is_synced, timeout=5), "the break is noticed")
        self.assertIsNotNone(cache.get(2), "answers stay meanwhile")
        # The new snapshot: pid 1 still runs, pid 2 vanished while the
        # stream was down, pid 4 is new.
        self.connect(cache, client, ev("process", record=record(1, 1)),
                     ev("process", record=record(4, 1)), DONE)
        self.assertTrue(cache.wait_synced(5))
        self.assertEqual(cache.stats()["snapshots"], 2)
        self.assertIsNotNone(cache.get(1))
        self.assertIsNone(cache.get(2), "a live process the snapshot lacks is dropped")
        self.assertEqual(cache.get(3)["state"], "exited", "an exit seen before stays for its grace")
        self.assertIsNotNone(cache.get(4))
        self.assertIs(cache.container("k8s.io", "gone")["deleted"], True)

    def test_a_broken_stream_is_retried(self) -> None:
        cache, client = self.start()

        class Broken(FakeStream):
            def __next__(self) -> Dict[str, Any]:
                event = super().__next__()
                if event.get("event") == "boom":
                    raise ConnectionError("the watch stream broke")
                return event

        broken = Broken()
        client.streams.put(broken)
        broken.send(ev("process", record=record(1, 1)), DONE, ev("boom"))
        self.assertTrue(wait_until(lambda: cache.stats()["snapshots"] == 1, timeout=5))
        self.assertTrue(wait_until(lambda: not cache.is_synced, timeout=5), "the break is noticed")
        self.connect(cache, client, ev("process", record=record(1, 1)), DONE)
        self.assertTrue(cache.wait_synced(5))

    def test_exits_expire_after_the_grace_and_beyond_the_bound(self) -> None:
        cache, client = self.start(exited_grace=0.3, max_exited=2)
        stream = self.connect(cache, client, ev("process", record=record(1, 1)), DONE)
        self.send(cache, stream, *[ev("process_changed", record=record(p, 1, "exited")) for p in (2, 3, 4)])
        self.assertIsNone(cache.get(2), "the oldest beyond max_exited")
        self.assertTrue(wait_until(lambda: cache.stats()["processes"] == 1, timeout=5), cache.stats())
        self.assertIsNotNone(cache.get(1), "the live one stays")

    def test_lookup_asks_the_agent_on_a_miss_only(self) -> None:
        cache, client = self.start()
        self.connect(cache, client, ev("process", record=record(5, 9)), DONE)
        self.assertEqual(cache.lookup(5)["state"], "running")
        self.assertEqual(cache.lookup(5, 9)["state"], "running")
        self.assertEqual(client.asked, [])
        self.assertEqual(cache.lookup(6)["state"], "unknown")
        self.assertEqual(cache.lookup(5, 8)["state"], "unknown")
        self.assertEqual(client.asked, [6, 5])


if __name__ == "__main__":
    unittest.main()
