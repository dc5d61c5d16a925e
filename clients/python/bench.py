#!/usr/bin/env python3
"""How fast is a cached lookup, beside what a Python tool reads from /proc
without pidmap?

Run as root with an agent up (``PIDMAP_SOCKET`` names its socket)::

    PIDMAP_SOCKET=/run/pidmap/pidmap.sock python3 clients/python/bench.py

It starts ``--pids`` ``sleep`` children, waits until the cache holds them
all, then times, in interleaved rounds (each a pass over every pid, the
time per pid = the round's time / the pids):

- ``Cache.lookup(pid)``: the record from memory (state, start time, cgroup,
  container and pod metadata, comm, ppid);
- the /proc read: open + read + parse ``/proc/PID/cgroup`` (the cgroup v2
  path, or the v1 memory controller's, and a container id guessed from it)
  and ``/proc/PID/stat`` (comm, ppid, start time) — fewer facts than the
  record (no image, pod or labels; nothing once the process exited);
- the same with ``/proc/PID/cgroup`` alone (what the Rust bench reads);
- an empty pass (the loop and a call, which every figure above includes).

Then ``Client.process(pid)``, one HTTP request on a kept-alive connection,
for scale: what a cache miss costs.
"""

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pidmap  # noqa: E402

CONTAINER_ID = re.compile(rb"[0-9a-f]{64}")


def read_cgroup(pid: int) -> Dict[str, Any]:
    """The cgroup of ``pid`` and a container id guessed from its path."""
    with open(f"/proc/{pid}/cgroup", "rb") as f:
        text = f.read()
    path: Optional[bytes] = None
    for line in text.splitlines():
        _, controllers, cgroup = line.split(b":", 2)
        if not controllers or b"memory" in controllers.split(b","):
            path = cgroup
            if controllers:  # the v1 memory controller names the container
                break
    found = CONTAINER_ID.search(path) if path else None
    return {
        "cgroup_path": path.decode() if path is not None else None,
        "container_id": found.group().decode() if found else None,
    }


def read_proc(pid: int) -> Dict[str, Any]:
    """What a tool reads without pidmap: the cgroup, and comm, ppid and
    start time from /proc/PID/stat."""
    facts = read_cgroup(pid)
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    end = stat.rindex(b")")
    fields = stat[end + 2 :].split()
    facts["pid"] = pid
    facts["comm"] = stat[stat.index(b"(") + 1 : end].decode()
    facts["ppid"] = int(fields[1])
    facts["start_time"] = int(fields[19])
    return facts


def nothing(pid: int) -> None:
    return None


def rounds_of(fn: Callable[[int], Any], pids: List[int]) -> float:
    """One pass over ``pids``: ns per call."""
    began = time.perf_counter_ns()
    for pid in pids:
        fn(pid)
    return (time.perf_counter_ns() - began) / len(pids)


def percentile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def show(name: str, values: List[float]) -> str:
    return (
        f"{name}: p50 {percentile(values, 0.5):,.0f} ns, p99 {percentile(values, 0.99):,.0f} ns, "
        f"mean {statistics.mean(values):,.0f} ns"
    )


def machine() -> str:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"Linux {platform.release()}, {os.cpu_count()} CPUs ({model}), "
        f"{platform.python_implementation()} {platform.python_version()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pids", type=int, default=1000, help="sleep children to look up (1000)")
    parser.add_argument("--rounds", type=int, default=200, help="passes over them, per method (200)")
    parser.add_argument("--requests", type=int, default=2000, help="HTTP requests timed (2000)")
    args = parser.parse_args()

    children = [subprocess.Popen(["sleep", "1000"]) for _ in range(args.pids)]
    try:
        pids = [c.pid for c in children]
        with pidmap.Cache() as cache:
            if not cache.wait_synced(15):
                sys.exit(f"the cache did not sync with the agent at {cache.client.socket_path}")
            deadline = time.monotonic() + 30
            while not all((cache.get(p) or {}).get("comm") == "sleep" for p in pids):
                if time.monotonic() > deadline:
                    sys.exit("the children did not all reach the cache within 30 s")
                time.sleep(0.05)
            # The answers agree on what both know.
            for pid in pids[:10]:
                record, facts = cache.lookup(pid), read_proc(pid)
                assert (record["comm"], record["ppid"], record["start_time"]) == (
                    facts["comm"], facts["ppid"], facts["start_time"]), (record, facts)

            print("# pidmap Python client bench")
            print(f"machine: {machine()}")
            print(f"{len(pids)} live `sleep` pids, {args.rounds} interleaved rounds per method, "
                  "each a pass over every pid; figures are per pid (round time / pids)")
            methods = {
                "Cache.lookup(pid)": cache.lookup,
                "/proc/PID/cgroup + /proc/PID/stat read+parse": read_proc,
                "/proc/PID/cgroup read+parse": read_cgroup,
                "empty pass (loop + a call)": nothing,
            }
            for fn in methods.values():  # warm up
                rounds_of(fn, pids)
            times: Dict[str, List[float]] = {name: [] for name in methods}
            for _ in range(args.rounds):
                for name, fn in methods.items():
                    times[name].append(rounds_of(fn, pids))
            for name in methods:
                print(show(name, times[name]))
            stats = cache.stats()
            assert stats["fallbacks"] == 0, f"the cache missed: {stats}"

            client = cache.client
            single: List[float] = []
            for i in range(args.requests):
                began = time.perf_counter_ns()
                client.process(pids[i % len(pids)])
                single.append(time.perf_counter_ns() - began)
            print(show("Client.process(pid), one HTTP request (kept alive), timed one by one", single))

            cached = times["Cache.lookup(pid)"]
            for name in ("/proc/PID/cgroup + /proc/PID/stat read+parse", "/proc/PID/cgroup read+parse"):
                proc = times[name]
                print(f"cache lookup vs {name}: "
                      f"{percentile(proc, 0.5) / percentile(cached, 0.5):.0f}x faster at p50, "
                      f"{percentile(proc, 0.99) / percentile(cached, 0.99):.0f}x at p99")
    finally:
        for child in children:
            child.kill()
        for child in children:
            child.wait()


if __name__ == "__main__":
    main()
