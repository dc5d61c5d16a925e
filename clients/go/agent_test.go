package pidmap_test

// Against a real agent, whose socket PIDMAP_SOCKET names (the tests skip
// without it). pidmap's test suite (tests/tests/clients.rs) runs them.

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pidmap "pidmap/clients/go"
	"pidmap/clients/go/pidmapv1"
)

// eventually bounds every wait for the agent or the cache.
const eventually = 15 * time.Second

// neverPid is the largest pid the agent accepts, which no process can have
// (Linux hands out pids below pid_max, at most 4194304).
const neverPid = 4194304

const (
	stateRunning = pidmapv1.ProcessState_PROCESS_STATE_RUNNING
	stateExited  = pidmapv1.ProcessState_PROCESS_STATE_EXITED
	stateUnknown = pidmapv1.ProcessState_PROCESS_STATE_UNKNOWN
)

// dial connects to the agent PIDMAP_SOCKET names, or skips the test.
func dial(t *testing.T) *pidmap.Client {
	t.Helper()
	if os.Getenv(pidmap.SocketEnv) == "" {
		t.Skip("PIDMAP_SOCKET is not set: no agent to test against")
	}
	client, err := pidmap.Dial("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return client
}

func timeout(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), eventually)
	t.Cleanup(cancel)
	return ctx
}

// waitFor polls cond every 10 ms until it holds, failing the test after
// eventually.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(eventually)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, eventually)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// procComm is /proc/PID/comm without its newline.
func procComm(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSuffix(string(b), "\n")
}

// procStartTime is field 22 of /proc/PID/stat.
func procStartTime(t *testing.T, pid int) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	// Fields from the state on (field 3): after the comm's closing paren.
	fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	start, err := strconv.ParseUint(fields[22-3], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return start
}

func TestResolveAnswersThisProcess(t *testing.T) {
	client, ctx := dial(t), timeout(t)
	me := os.Getpid()
	start := procStartTime(t, me)
	r, err := client.Resolve(ctx, int64(me))
	if err != nil {
		t.Fatal(err)
	}
	if r.Pid != uint32(me) || r.State != stateRunning || r.GetComm() != procComm(t, me) || r.GetStartTime() != start {
		t.Errorf("pid %d (comm %q, start %d): %v", me, procComm(t, me), start, r)
	}
	r, err = client.ResolveExact(ctx, int64(me), start)
	if err != nil || r.State != stateRunning {
		t.Errorf("with its start time: %v %v", r, err)
	}
	r, err = client.ResolveExact(ctx, int64(me), start+1)
	if err != nil || r.State != stateUnknown {
		t.Errorf("with another start time: %v %v", r, err)
	}
	who, err := client.WhoAmI(ctx)
	if err != nil || who.Pid != uint32(me) {
		t.Errorf("WhoAmI: %v %v", who, err)
	}
}

func TestAnUnknownPidIsARecordNotAnError(t *testing.T) {
	client, ctx := dial(t), timeout(t)
	r, err := client.Resolve(ctx, neverPid)
	if err != nil || r.Pid != neverPid || r.State != stateUnknown {
		t.Errorf("pid %d: %v %v", neverPid, r, err)
	}
	for _, bad := range []int64{0, -1, neverPid + 1} {
		if _, err := client.Resolve(ctx, bad); status.Code(err) != codes.InvalidArgument {
			t.Errorf("pid %d: %v, want InvalidArgument", bad, err)
		}
	}
	records, err := client.ResolveBatch(ctx, []*pidmapv1.ResolveRequest{{Pid: 1}, {Pid: int64(os.Getpid())}, {Pid: neverPid}})
	if err != nil || len(records) != 3 || records[0].Pid != 1 || records[1].Pid != uint32(os.Getpid()) ||
		records[2].State != stateUnknown {
		t.Errorf("batch: %v %v", records, err)
	}
}

func TestStatus(t *testing.T) {
	client, ctx := dial(t), timeout(t)
	s, err := client.Status(ctx)
	if err != nil || !s.Ready || s.Version == "" || s.Processes == 0 {
		t.Errorf("Status: %v %v", s, err)
	}
	if _, err := client.ListContainers(ctx, nil); err != nil {
		t.Errorf("ListContainers: %v", err)
	}
}

func TestTheCacheFollowsAChildFromStartToExit(t *testing.T) {
	client, ctx := dial(t), timeout(t)
	cache := pidmap.NewCache(client, pidmap.CacheOptions{MaxBackoff: 200 * time.Millisecond, Logf: t.Logf})
	defer cache.Close()
	if err := cache.WaitSynced(ctx); err != nil {
		t.Fatalf("the cache did not sync: %v", err)
	}
	me := os.Getpid()
	if e, ok := cache.Get(uint32(me)); !ok || !e.Cached || e.Process.State != stateRunning ||
		e.Process.GetComm() != procComm(t, me) {
		t.Errorf("this process, from the snapshot: %v %v", e.Process, ok)
	}

	child := exec.Command("sh", "-c", "echo ready; read -r _")
	stdin, err := child.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer child.Process.Kill()
	if _, err := bufio.NewReader(stdout).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	pid := child.Process.Pid
	start := procStartTime(t, pid)
	waitFor(t, "the child reached the cache", func() bool {
		e, ok := cache.GetExact(uint32(pid), start)
		return ok && e.Process.State == stateRunning && e.Process.GetComm() == "sh"
	})
	stdin.Close()
	child.Wait()
	waitFor(t, "the child's exit reached the cache", func() bool {
		e, ok := cache.GetExact(uint32(pid), start)
		return ok && e.Process.State == stateExited
	})
	if e, err := cache.Lookup(ctx, uint32(pid)); err != nil || !e.Cached || e.Process.State != stateExited {
		t.Errorf("the exited child, within the grace: %v %v %v", e.Process, e.Cached, err)
	}

	e, err := cache.Lookup(ctx, neverPid)
	if err != nil || e.Cached || e.Process.State != stateUnknown {
		t.Errorf("a miss asks the agent: %v %v %v", e.Process, e.Cached, err)
	}
	if s := cache.Stats(); s.Snapshots == 0 || s.Processes == 0 || s.Events == 0 || !cache.Synced() {
		t.Errorf("stats %+v, synced %v", s, cache.Synced())
	}
}
