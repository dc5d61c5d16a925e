"""pidmap.Client against a real agent (PIDMAP_SOCKET)."""

import os
import unittest

from _support import SOCKET, needs_agent, proc_stat, unused_pid

import pidmap

#: The keys of every record (`pidmap resolve -o json`).
RECORD_KEYS = {
    "pid", "start_time", "state", "source", "container_id", "runtime_namespace", "image",
    "pod_name", "pod_namespace", "pod_uid", "container_name", "cgroup_id",
    "cgroup_hierarchy", "cgroup_path", "ppid", "comm", "exit_status", "labels",
}


@needs_agent
class ClientTest(unittest.TestCase):
    def setUp(self) -> None:
        self.client = pidmap.Client(SOCKET)
        self.addCleanup(self.client.close)

    def test_the_socket_comes_from_the_environment(self) -> None:
        self.assertEqual(pidmap.Client().socket_path, SOCKET)
        self.assertEqual(pidmap.DEFAULT_SOCKET, "/run/pidmap/pidmap.sock")

    def test_status_says_ready(self) -> None:
        status = self.client.status()
        self.assertIs(status["ready"], True)
        self.assertGreater(status["processes"], 0)
        self.assertIsInstance(status["version"], str)

    def test_this_process_is_running_as_proc_says(self) -> None:
        comm, ppid, start = proc_stat(os.getpid())
        me = self.client.process(os.getpid())
        self.assertEqual(set(me), RECORD_KEYS)
        self.assertEqual(me["state"], "running")
        self.assertEqual((me["pid"], me["comm"], me["ppid"], me["start_time"]),
                         (os.getpid(), comm, ppid, start))
        exact = self.client.process(os.getpid(), start)
        self.assertEqual((exact["state"], exact["start_time"]), ("running", start))
        otel = self.client.process(os.getpid(), otel=True)
        self.assertEqual(otel["process.pid"], os.getpid())
        self.assertEqual(otel["process.executable.name"], comm)

    def test_an_unknown_pid_is_a_record_in_state_unknown(self) -> None:
        pid = unused_pid()
        record = self.client.process(pid)
        self.assertEqual((record["pid"], record["state"]), (pid, "unknown"))
        self.assertIsNone(record["start_time"])
        # A live pid with another start time is another process: unknown.
        _, _, start = proc_stat(os.getpid())
        self.assertEqual(self.client.process(os.getpid(), start + 1)["state"], "unknown")

    def test_a_batch_answers_in_request_order(self) -> None:
        _, _, start = proc_stat(os.getpid())
        pid = unused_pid()
        records = self.client.processes([os.getpid(), 1, (os.getpid(), start), pid])
        self.assertEqual([r["pid"] for r in records], [os.getpid(), 1, os.getpid(), pid])
        self.assertEqual([r["state"] for r in records], ["running", "running", "running", "unknown"])

    def test_whoami_is_this_process(self) -> None:
        me = self.client.whoami()
        self.assertEqual((me["pid"], me["state"]), (os.getpid(), "running"))

    def test_containers_are_listed_and_filtered(self) -> None:
        self.assertIsInstance(self.client.containers(all=True), list)
        nobody = self.client.containers(labels={"pidmap.test/none": "x"}, namespace="k8s.io")
        self.assertEqual(nobody, [])

    def test_malformed_requests_raise_the_agents_error(self) -> None:
        cases = [
            (lambda: self.client.process(0), 400, "InvalidArgument"),
            (lambda: self.client.process(4194305), 400, "InvalidArgument"),
            (lambda: self.client.processes([]), 400, "InvalidArgument"),
            (lambda: self.client.processes(range(1, 4100)), 413, "InvalidArgument"),
            (lambda: self.client.container_processes("no/such container"), 404, "NotFound"),
            (lambda: self.client._get("/v1/status", {"verbose": 1}, False), 400, "InvalidArgument"),
            (lambda: self.client._get("/v1/nothing", {}, False), 404, "NotFound"),
        ]
        for call, status, code in cases:
            with self.assertRaises(pidmap.PidmapError) as caught:
                call()
            e = caught.exception
            self.assertEqual((e.status, e.code), (status, code), e)
            self.assertTrue(e.message)
        # The connection stays usable after errors.
        self.assertTrue(self.client.status()["ready"])

    def test_one_connection_serves_many_requests(self) -> None:
        self.client.status()
        conn = self.client._conn
        for _ in range(20):
            self.client.process(os.getpid())
        self.assertIs(self.client._conn, conn)

    def test_watch_gives_the_snapshot_then_snapshot_done(self) -> None:
        seen = set()
        with self.client.watch() as stream:
            for event in stream:
                if event["event"] == "snapshot_done":
                    break
                self.assertIn(event["event"], ("process", "container"))
                if event["event"] == "process":
                    self.assertEqual(set(event["record"]), RECORD_KEYS)
                    seen.add(event["record"]["pid"])
        self.assertIn(os.getpid(), seen)
        self.assertIn(1, seen)

    def test_an_absent_socket_raises_oserror(self) -> None:
        with self.assertRaises(OSError):
            pidmap.Client("/nonexistent/pidmap.sock").status()


if __name__ == "__main__":
    unittest.main()
