package pidmap

// The cache's bookkeeping, without an agent (the same cases as the Rust
// client's cache tests).

import (
	"testing"
	"time"

	"pidmap/clients/go/pidmapv1"
)

const (
	running = pidmapv1.ProcessState_PROCESS_STATE_RUNNING
	exitedS = pidmapv1.ProcessState_PROCESS_STATE_EXITED
	pending = pidmapv1.ProcessState_PROCESS_STATE_PENDING
)

func record(pid uint32, start uint64, state pidmapv1.ProcessState) *pidmapv1.ProcessRecord {
	return &pidmapv1.ProcessRecord{Pid: pid, StartTime: &start, State: state}
}

func process(r *pidmapv1.ProcessRecord) *pidmapv1.WatchEvent {
	return &pidmapv1.WatchEvent{Event: &pidmapv1.WatchEvent_Process{Process: r}}
}

func changed(r *pidmapv1.ProcessRecord) *pidmapv1.WatchEvent {
	return &pidmapv1.WatchEvent{Event: &pidmapv1.WatchEvent_ProcessChanged{ProcessChanged: r}}
}

func starts(v *view, pid uint32) []uint64 {
	var out []uint64
	for _, p := range v.processes[pid] {
		out = append(out, p.startTime)
	}
	return out
}

func TestLookupsByPidAndStartTime(t *testing.T) {
	now := time.Now()
	v, exp := newView(), expiry{}
	v.apply(&exp, process(record(10, 100, exitedS)), now)
	v.apply(&exp, process(record(10, 200, running)), now)
	v.apply(&exp, process(record(11, 50, exitedS)), now)
	v.apply(&exp, process(record(11, 40, exitedS)), now)
	if e, ok := v.get(10, nil); !ok || e.Process.GetStartTime() != 200 || !e.Cached {
		t.Errorf("pid 10: the live one, got %v %v", e.Process, ok)
	}
	old := uint64(100)
	if e, ok := v.get(10, &old); !ok || e.Process.State != exitedS {
		t.Errorf("pid 10 started at 100: the exited one, got %v %v", e.Process, ok)
	}
	other := uint64(150)
	if _, ok := v.get(10, &other); ok {
		t.Error("another start time answered")
	}
	if e, ok := v.get(11, nil); !ok || e.Process.GetStartTime() != 50 {
		t.Errorf("no live one: the newest exited, got %v %v", e.Process, ok)
	}
	if _, ok := v.get(12, nil); ok {
		t.Error("an unknown pid answered")
	}
}

func TestContainersAreKeptApartAndFollowTheirChanges(t *testing.T) {
	now := time.Now()
	v, exp := newView(), expiry{}
	r := record(7, 1, running)
	r.Container = &pidmapv1.Container{Id: "c1", RuntimeNamespace: "k8s.io", Image: "img:1"}
	v.apply(&exp, process(r), now)
	v.apply(&exp, &pidmapv1.WatchEvent{Event: &pidmapv1.WatchEvent_ContainerChanged{
		ContainerChanged: &pidmapv1.Container{Id: "c1", RuntimeNamespace: "k8s.io", Image: "img:2"},
	}}, now)
	e, ok := v.get(7, nil)
	if !ok || e.Process.Container != nil || e.Container.GetImage() != "img:2" {
		t.Fatalf("got %v %v %v", e.Process, e.Container, ok)
	}
	v.apply(&exp, &pidmapv1.WatchEvent{Event: &pidmapv1.WatchEvent_ContainerDeleted{
		ContainerDeleted: &pidmapv1.Container{Id: "c1", RuntimeNamespace: "k8s.io", Image: "img:3"},
	}}, now)
	if c := v.containers[containerKey{"k8s.io", "c1"}]; !c.Deleted || c.Image != "img:3" || len(exp.deleted) != 1 {
		t.Errorf("deleted: %v, %d to expire", c, len(exp.deleted))
	}
}

func TestANewLiveProcessReplacesAnOldLiveOneOnItsPid(t *testing.T) {
	now := time.Now()
	v, exp := newView(), expiry{}
	v.apply(&exp, process(record(5, 1, running)), now)
	v.apply(&exp, changed(record(5, 9, pending)), now)
	v.apply(&exp, changed(record(5, 9, running)), now)
	if got := starts(&v, 5); len(got) != 1 || got[0] != 9 || v.processes[5][0].record.State != running {
		t.Errorf("pid 5 holds %v", got)
	}
}

func TestUnknownRecordsChangeNothing(t *testing.T) {
	now := time.Now()
	v, exp := newView(), expiry{}
	v.apply(&exp, process(record(5, 1, running)), now)
	v.apply(&exp, changed(&pidmapv1.ProcessRecord{Pid: 5, State: pidmapv1.ProcessState_PROCESS_STATE_UNKNOWN}), now)
	v.apply(&exp, changed(&pidmapv1.ProcessRecord{Pid: 5, State: exitedS}), now) // no start time
	if got := starts(&v, 5); len(got) != 1 || v.processes[5][0].record.State != running {
		t.Errorf("pid 5 holds %v", v.processes[5])
	}
}

func TestExitedProcessesLeaveAfterTheGraceOrBeyondTheBound(t *testing.T) {
	t0 := time.Now()
	opts := CacheOptions{ExitedGrace: 30 * time.Second, MaxExited: 3}
	v, exp := newView(), expiry{}
	v.apply(&exp, process(record(1, 1, running)), t0)
	for pid := uint32(2); pid <= 5; pid++ {
		v.apply(&exp, changed(record(pid, 1, exitedS)), t0)
	}
	v.expire(&exp, &opts, t0)
	if _, ok := v.processes[2]; ok || len(v.processes) != 4 {
		t.Errorf("the oldest beyond MaxExited must go: %d pids", len(v.processes))
	}
	v.expire(&exp, &opts, t0.Add(29*time.Second))
	if len(v.processes) != 4 {
		t.Errorf("within the grace: %d pids", len(v.processes))
	}
	v.expire(&exp, &opts, t0.Add(30*time.Second))
	if _, ok := v.processes[1]; !ok || len(v.processes) != 1 || len(exp.exited) != 0 {
		t.Errorf("only the live one stays: %d pids, %d to expire", len(v.processes), len(exp.exited))
	}
}

func TestAnExitExpiringSparesALiveProcessOnTheSamePid(t *testing.T) {
	t0 := time.Now()
	v, exp := newView(), expiry{}
	v.apply(&exp, changed(record(3, 1, exitedS)), t0)
	v.apply(&exp, process(record(3, 2, running)), t0)
	v.expire(&exp, &CacheOptions{ExitedGrace: 30 * time.Second, MaxExited: 3}, t0.Add(time.Minute))
	if got := starts(&v, 3); len(got) != 1 || got[0] != 2 {
		t.Errorf("pid 3 holds %v", got)
	}
}

func TestANewSnapshotKeepsExitsSeenBeforeButNotVanishedLiveProcesses(t *testing.T) {
	t0 := time.Now()
	old, exp := newView(), expiry{}
	old.apply(&exp, process(record(1, 1, running)), t0)
	old.apply(&exp, process(record(2, 1, running)), t0)
	old.apply(&exp, changed(record(3, 1, exitedS)), t0)
	old.apply(&exp, &pidmapv1.WatchEvent{Event: &pidmapv1.WatchEvent_ContainerDeleted{
		ContainerDeleted: &pidmapv1.Container{Id: "gone", RuntimeNamespace: "default"},
	}}, t0)
	// The new snapshot: pid 1 still runs, pid 2 vanished while the stream
	// was down.
	fresh, freshExp := newView(), expiry{}
	fresh.apply(&freshExp, process(record(1, 1, running)), t0)
	carried := carryOver(&old, &fresh, &exp)
	if len(fresh.processes) != 2 || fresh.processes[1] == nil || fresh.processes[3] == nil {
		t.Errorf("pids %v", fresh.processes)
	}
	if _, ok := fresh.containers[containerKey{"default", "gone"}]; !ok {
		t.Error("the deleted container was not carried over")
	}
	if len(carried.exited) != 1 || len(carried.deleted) != 1 {
		t.Errorf("carried %d exits, %d deletions", len(carried.exited), len(carried.deleted))
	}
}
