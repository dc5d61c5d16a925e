package pidmap_test

// The cache against a scripted agent on a socket of the test's own: the
// stream ends, the cache re-syncs from a new snapshot, and keeps the exit
// it saw before; a miss asks Resolve.

import (
	"context"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"

	pidmap "pidmap/clients/go"
	"pidmap/clients/go/pidmapv1"
)

type scripted struct {
	pidmapv1.UnimplementedPidmapServer
	mu       sync.Mutex
	sessions int
}

func running(pid uint32, start uint64) *pidmapv1.ProcessRecord {
	return &pidmapv1.ProcessRecord{Pid: pid, StartTime: &start, State: pidmapv1.ProcessState_PROCESS_STATE_RUNNING}
}

// Watch: the first stream has pids 10 and 11, then 11 exits and the stream
// ends; later streams have pid 10 only and stay open.
func (s *scripted) Watch(_ *pidmapv1.WatchRequest, stream pidmapv1.Pidmap_WatchServer) error {
	s.mu.Lock()
	s.sessions++
	first := s.sessions == 1
	s.mu.Unlock()
	send := func(e *pidmapv1.WatchEvent) error { return stream.Send(e) }
	if err := send(&pidmapv1.WatchEvent{Event: &pidmapv1.WatchEvent_Process{Process: running(10, 1)}}); err != nil {
		return err
	}
	if first {
		if err := send(&pidmapv1.WatchEvent{Event: &pidmapv1.WatchEvent_Process{Process: running(11, 1)}}); err != nil {
			return err
		}
	}
	if err := send(&pidmapv1.WatchEvent{Event: &pidmapv1.WatchEvent_SnapshotDone{SnapshotDone: true}}); err != nil {
		return err
	}
	if first {
		gone := running(11, 1)
		gone.State = pidmapv1.ProcessState_PROCESS_STATE_EXITED
		return send(&pidmapv1.WatchEvent{Event: &pidmapv1.WatchEvent_ProcessChanged{ProcessChanged: gone}})
	}
	<-stream.Context().Done()
	return nil
}

func (s *scripted) Resolve(_ context.Context, r *pidmapv1.ResolveRequest) (*pidmapv1.ProcessRecord, error) {
	return &pidmapv1.ProcessRecord{Pid: uint32(r.Pid), State: pidmapv1.ProcessState_PROCESS_STATE_UNKNOWN}, nil
}

func TestTheCacheResyncsAfterTheStreamEnds(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "scripted.sock")
	listener, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	server := grpc.NewServer()
	pidmapv1.RegisterPidmapServer(server, &scripted{})
	go server.Serve(listener)
	defer server.Stop()

	client, err := pidmap.Dial(socket)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	cache := pidmap.NewCache(client, pidmap.CacheOptions{MaxBackoff: 100 * time.Millisecond, Logf: t.Logf})
	defer cache.Close()

	ctx, cancel := context.WithTimeout(context.Background(), eventually)
	defer cancel()
	if err := cache.WaitSynced(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a second snapshot", func() bool { return cache.Stats().Snapshots == 2 && cache.Synced() })
	if e, ok := cache.Get(10); !ok || e.Process.State != pidmapv1.ProcessState_PROCESS_STATE_RUNNING {
		t.Errorf("pid 10: %v %v", e.Process, ok)
	}
	if e, ok := cache.Get(11); !ok || e.Process.State != pidmapv1.ProcessState_PROCESS_STATE_EXITED {
		t.Errorf("pid 11, whose exit came before the re-sync: %v %v", e.Process, ok)
	}
	e, err := cache.Lookup(ctx, 99)
	if err != nil || e.Cached || e.Process.State != pidmapv1.ProcessState_PROCESS_STATE_UNKNOWN {
		t.Errorf("a miss asks the agent: %v %v %v", e.Process, e.Cached, err)
	}
	cache.Close()
	if err := cache.WaitSynced(context.Background()); err != nil && err != pidmap.ErrClosed {
		t.Errorf("WaitSynced after Close: %v", err)
	}
}
