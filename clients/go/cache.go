package pidmap

// Cache: a local copy of the agent's map, kept current by its Watch stream,
// like a Kubernetes informer: list (the snapshot), then watch (the
// changes), and on any break list again. The same design as the Rust
// client's cache (client/src/cache.rs in the pidmap repository).

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"pidmap/clients/go/pidmapv1"
)

const (
	// firstBackoff is the first wait before reconnecting; it doubles up to
	// CacheOptions.MaxBackoff.
	firstBackoff = 100 * time.Millisecond
	// expiryTick is how often exited processes and deleted containers past
	// their grace are dropped when no change arrives.
	expiryTick = time.Second
)

// ErrClosed is what waiting on a closed Cache returns.
var ErrClosed = errors.New("pidmap: cache closed")

// CacheOptions says how much a Cache keeps and how it reconnects. The zero
// value is the defaults.
type CacheOptions struct {
	// ExitedGrace is how long an exited process (and a deleted container)
	// stays in the cache after the cache learned of it. 0 means 30 s, the
	// agent's own default grace window.
	ExitedGrace time.Duration
	// MaxExited is the most exited processes (and deleted containers) kept
	// at once; the oldest go first. 0 means 65536.
	MaxExited int
	// MaxBackoff is the longest wait between reconnect attempts. 0 means
	// 5 s.
	MaxBackoff time.Duration
	// Logf, when set, is told when the stream breaks or cannot be opened.
	Logf func(format string, args ...interface{})
}

// Entry is a cached answer. Its messages are shared with the cache and
// other callers: do not modify them.
type Entry struct {
	// Process is the process's record as the agent last sent it, without
	// its Container (that is Entry.Container, kept current on its own).
	Process *pidmapv1.ProcessRecord
	// Container is the process's container as the agent last described it,
	// nil for a host process. For a container known from its cgroup path
	// only, the record's PathContainerId, PathRuntime and PathPodUid say
	// what the path says.
	Container *pidmapv1.Container
	// Cached says the answer came from the cache; false when Lookup asked
	// the agent.
	Cached bool
}

// CacheStats are a cache's counters.
type CacheStats struct {
	// Processes in the cache, exited ones included.
	Processes int
	// Containers in the cache, deleted ones included.
	Containers int
	// Snapshots applied (the first one, then one per reconnect).
	Snapshots uint64
	// Events is the number of Watch events received.
	Events uint64
}

// Cache is a local copy of the agent's map, fed by its Watch stream in a
// goroutine of its own. Lookups read it under a read lock in the calling
// goroutine. The copy lags the agent by the Watch delivery latency (a
// change is sent as soon as the agent applies it); while the stream is down
// the copy stays as it was and Synced says so. After a reconnect the new
// snapshot replaces the copy at once, when it is complete; exited processes
// seen before are kept for their grace window, since a snapshot holds live
// processes only.
//
// A Cache is safe for concurrent use. Close stops it.
type Cache struct {
	client *Client
	opts   CacheOptions

	mu        sync.RWMutex
	view      view
	expiry    expiry
	synced    chan struct{} // closed while synced
	isSynced  bool
	snapshots uint64
	events    uint64 // atomic

	stop context.CancelFunc
	ctx  context.Context
	wg   sync.WaitGroup
}

// NewCache starts following the agent client talks to; lookups answer from
// memory from the first complete snapshot on (see WaitSynced), and ask the
// agent before that. Close the cache before the client.
func NewCache(client *Client, opts CacheOptions) *Cache {
	if opts.ExitedGrace <= 0 {
		opts.ExitedGrace = 30 * time.Second
	}
	if opts.MaxExited <= 0 {
		opts.MaxExited = 65536
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 5 * time.Second
	}
	ctx, stop := context.WithCancel(context.Background())
	c := &Cache{
		client: client,
		opts:   opts,
		view:   newView(),
		synced: make(chan struct{}),
		stop:   stop,
		ctx:    ctx,
	}
	c.wg.Add(2)
	go c.follow()
	go c.expireEvery(expiryTick)
	return c
}

// Close stops following the agent and waits for the cache's goroutines.
// Lookups still answer from what the cache holds, and still fall back to
// the client while it is open.
func (c *Cache) Close() {
	c.stop()
	c.wg.Wait()
}

// Get answers the process pid from memory: the live one, else the one that
// exited last within the grace window. false when the cache does not know
// pid.
func (c *Cache) Get(pid uint32) (Entry, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.view.get(pid, nil)
}

// GetExact answers from memory only the process pid that started at
// startTime (clock ticks since boot, field 22 of /proc/PID/stat), live or
// exited within the grace window: another process on a reused pid does not
// answer.
func (c *Cache) GetExact(pid uint32, startTime uint64) (Entry, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.view.get(pid, &startTime)
}

// Lookup is Get, and on a miss one Resolve call to the agent (a process
// that started a moment ago may not have reached the cache yet). The
// agent's answer is not added to the cache (the stream brings it); an
// unknown pid answers an Entry in state PROCESS_STATE_UNKNOWN, not an
// error.
func (c *Cache) Lookup(ctx context.Context, pid uint32) (Entry, error) {
	if e, ok := c.Get(pid); ok {
		return e, nil
	}
	return fromAgent(c.client.Resolve(ctx, int64(pid)))
}

// LookupExact is GetExact, and on a miss one ResolveExact call.
func (c *Cache) LookupExact(ctx context.Context, pid uint32, startTime uint64) (Entry, error) {
	if e, ok := c.GetExact(pid, startTime); ok {
		return e, nil
	}
	return fromAgent(c.client.ResolveExact(ctx, int64(pid), startTime))
}

func fromAgent(record *pidmapv1.ProcessRecord, err error) (Entry, error) {
	if err != nil {
		return Entry{}, err
	}
	container := record.Container
	record.Container = nil
	return Entry{Process: record, Container: container}, nil
}

// Container answers the container id in runtime namespace namespace, also
// one deleted within the grace window.
func (c *Cache) Container(namespace, id string) (*pidmapv1.Container, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	container, ok := c.view.containers[containerKey{namespace, id}]
	return container, ok
}

// Synced says whether the cache follows the agent right now: its snapshot
// is in and the stream is open.
func (c *Cache) Synced() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.isSynced
}

// WaitSynced waits until the cache is synced (at once if it is); it returns
// ctx's error if ctx ends first, ErrClosed if the cache is closed.
func (c *Cache) WaitSynced(ctx context.Context) error {
	c.mu.RLock()
	synced := c.synced
	c.mu.RUnlock()
	select {
	case <-synced:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-c.ctx.Done():
		return ErrClosed
	}
}

// Stats returns the cache's counters, for monitoring.
func (c *Cache) Stats() CacheStats {
	c.mu.RLock()
	defer c.mu.RUnlock()
	stats := CacheStats{
		Containers: len(c.view.containers),
		Snapshots:  c.snapshots,
		Events:     atomic.LoadUint64(&c.events),
	}
	for _, slot := range c.view.processes {
		stats.Processes += len(slot)
	}
	return stats
}

// setSynced records whether the cache is synced; c.mu must be held.
func (c *Cache) setSynced(synced bool) {
	if synced == c.isSynced {
		return
	}
	c.isSynced = synced
	if synced {
		close(c.synced)
	} else {
		c.synced = make(chan struct{})
	}
}

func (c *Cache) logf(format string, args ...interface{}) {
	if c.opts.Logf != nil {
		c.opts.Logf(format, args...)
	}
}

// follow follows the agent until Close: a session per stream, with backoff
// between them.
func (c *Cache) follow() {
	defer c.wg.Done()
	backoff := firstBackoff
	for {
		synced := c.session()
		c.mu.Lock()
		c.setSynced(false)
		c.mu.Unlock()
		if synced {
			backoff = firstBackoff
		}
		timer := time.NewTimer(backoff)
		select {
		case <-c.ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
		if backoff *= 2; backoff > c.opts.MaxBackoff {
			backoff = c.opts.MaxBackoff
		}
	}
}

// session is one Watch stream: the snapshot, built aside and swapped in
// whole, then the changes. It returns whether the snapshot was applied.
func (c *Cache) session() bool {
	ctx, cancel := context.WithCancel(c.ctx)
	defer cancel()
	stream, err := c.client.Watch(ctx)
	if err != nil {
		if c.ctx.Err() == nil {
			c.logf("pidmap cache: Watch on %s refused: %v; retrying", c.client.Socket(), err)
		}
		return false
	}
	fresh, freshExpiry := newView(), expiry{}
	building := true
	for {
		event, err := stream.Recv()
		if err != nil {
			if c.ctx.Err() == nil {
				c.logf("pidmap cache: Watch stream from %s ended: %v; re-syncing", c.client.Socket(), err)
			}
			return !building
		}
		atomic.AddUint64(&c.events, 1)
		now := time.Now()
		_, done := event.Event.(*pidmapv1.WatchEvent_SnapshotDone)
		switch {
		case building && done:
			c.mu.Lock()
			carried := carryOver(&c.view, &fresh, &c.expiry)
			// What the snapshot itself brought is newer than what was
			// carried over.
			carried.exited = append(carried.exited, freshExpiry.exited...)
			carried.deleted = append(carried.deleted, freshExpiry.deleted...)
			c.view, c.expiry = fresh, carried
			c.view.expire(&c.expiry, &c.opts, now)
			c.snapshots++
			c.setSynced(true)
			c.mu.Unlock()
			building, fresh = false, view{}
		case building:
			fresh.apply(&freshExpiry, event, now)
		default:
			c.mu.Lock()
			c.view.apply(&c.expiry, event, now)
			c.view.expire(&c.expiry, &c.opts, now)
			c.mu.Unlock()
		}
	}
}

// expireEvery drops what is past its grace every tick, until Close.
func (c *Cache) expireEvery(tick time.Duration) {
	defer c.wg.Done()
	ticker := time.NewTicker(tick)
	defer ticker.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case now := <-ticker.C:
			c.mu.Lock()
			c.view.expire(&c.expiry, &c.opts, now)
			c.mu.Unlock()
		}
	}
}

// containerKey is a container's key: its runtime namespace and id.
type containerKey struct{ namespace, id string }

// cached is one process as cached: its record (container taken out) and
// its container's key.
type cached struct {
	record    *pidmapv1.ProcessRecord
	startTime uint64
	container *containerKey
}

func (p *cached) live() bool {
	return p.record.State != pidmapv1.ProcessState_PROCESS_STATE_EXITED
}

// view is what the cache knows: per pid, the processes that held it (the
// live one, and exited ones within the grace window), and the containers.
type view struct {
	processes  map[uint32][]cached
	containers map[containerKey]*pidmapv1.Container
}

func newView() view {
	return view{
		processes:  make(map[uint32][]cached),
		containers: make(map[containerKey]*pidmapv1.Container),
	}
}

// get: with startTime, only that exact process; without, the live one,
// else the one that exited last.
func (v *view) get(pid uint32, startTime *uint64) (Entry, bool) {
	slot := v.processes[pid]
	found := -1
	for i := range slot {
		p := &slot[i]
		if startTime != nil {
			if p.startTime == *startTime {
				found = i
				break
			}
			continue
		}
		if p.live() {
			found = i
			break
		}
		if found < 0 || p.startTime > slot[found].startTime {
			found = i
		}
	}
	if found < 0 {
		return Entry{}, false
	}
	p := &slot[found]
	e := Entry{Process: p.record, Cached: true}
	if p.container != nil {
		e.Container = v.containers[*p.container]
	}
	return e, true
}

// expiry is what must be forgotten later: exited processes and deleted
// containers, oldest first.
type expiry struct {
	exited  []exited
	deleted []deleted
}

type exited struct {
	at        time.Time
	pid       uint32
	startTime uint64
}

type deleted struct {
	at  time.Time
	key containerKey
}

// apply applies one Watch event.
func (v *view) apply(exp *expiry, event *pidmapv1.WatchEvent, now time.Time) {
	switch e := event.Event.(type) {
	case *pidmapv1.WatchEvent_Process:
		v.insertProcess(exp, e.Process, now)
	case *pidmapv1.WatchEvent_ProcessChanged:
		v.insertProcess(exp, e.ProcessChanged, now)
	case *pidmapv1.WatchEvent_Container:
		v.insertContainer(e.Container)
	case *pidmapv1.WatchEvent_ContainerChanged:
		v.insertContainer(e.ContainerChanged)
	case *pidmapv1.WatchEvent_ContainerDeleted:
		e.ContainerDeleted.Deleted = true
		key := v.insertContainer(e.ContainerDeleted)
		exp.deleted = append(exp.deleted, deleted{now, key})
	}
}

func (v *view) insertContainer(c *pidmapv1.Container) containerKey {
	key := containerKey{c.RuntimeNamespace, c.Id}
	v.containers[key] = c
	return key
}

func (v *view) insertProcess(exp *expiry, record *pidmapv1.ProcessRecord, now time.Time) {
	// A record without a start time is the agent saying it no longer knows
	// the process: what the cache holds expires on its own.
	if record == nil || record.StartTime == nil ||
		record.State == pidmapv1.ProcessState_PROCESS_STATE_UNKNOWN {
		return
	}
	p := cached{record: record, startTime: *record.StartTime}
	if record.Container != nil {
		key := v.insertContainer(record.Container)
		p.container = &key
		record.Container = nil
	}
	pid := record.Pid
	if !p.live() {
		exp.exited = append(exp.exited, exited{now, pid, p.startTime})
	}
	slot := v.processes[pid]
	if p.live() {
		// One pid, one live process: another live one must have exited
		// unseen.
		kept := slot[:0]
		for _, old := range slot {
			if !old.live() || old.startTime == p.startTime {
				kept = append(kept, old)
			}
		}
		slot = kept
	}
	for i := range slot {
		if slot[i].startTime == p.startTime {
			slot[i] = p
			v.processes[pid] = slot
			return
		}
	}
	v.processes[pid] = append(slot, p)
}

// carryOver keeps, in a new snapshot, the exited processes and deleted
// containers the old view still holds (a snapshot lists live ones only);
// it returns what must expire of them.
func carryOver(old, fresh *view, exp *expiry) expiry {
	var carried expiry
	for _, e := range exp.exited {
		var kept *cached
		for i := range old.processes[e.pid] {
			p := &old.processes[e.pid][i]
			if p.startTime == e.startTime && !p.live() {
				kept = p
				break
			}
		}
		if kept == nil {
			continue
		}
		slot := fresh.processes[e.pid]
		present := false
		for _, p := range slot {
			present = present || p.startTime == e.startTime
		}
		if !present {
			fresh.processes[e.pid] = append(slot, *kept)
			carried.exited = append(carried.exited, e)
		}
	}
	for _, d := range exp.deleted {
		c, inOld := old.containers[d.key]
		if _, inFresh := fresh.containers[d.key]; inOld && !inFresh {
			fresh.containers[d.key] = c
			carried.deleted = append(carried.deleted, d)
		}
	}
	return carried
}

// expire drops exited processes and deleted containers past the grace
// window, and the oldest beyond MaxExited.
func (v *view) expire(exp *expiry, opts *CacheOptions, now time.Time) {
	old := func(at time.Time) bool { return now.Sub(at) >= opts.ExitedGrace }
	for len(exp.exited) > 0 {
		e := exp.exited[0]
		if !old(e.at) && len(exp.exited) <= opts.MaxExited {
			break
		}
		exp.exited = exp.exited[1:]
		slot := v.processes[e.pid]
		kept := slot[:0]
		for _, p := range slot {
			if p.startTime != e.startTime || p.live() {
				kept = append(kept, p)
			}
		}
		if len(kept) == 0 {
			delete(v.processes, e.pid)
		} else {
			v.processes[e.pid] = kept
		}
	}
	for len(exp.deleted) > 0 {
		d := exp.deleted[0]
		if !old(d.at) && len(exp.deleted) <= opts.MaxExited {
			break
		}
		exp.deleted = exp.deleted[1:]
		if c, ok := v.containers[d.key]; ok && c.Deleted {
			delete(v.containers, d.key)
		}
	}
}
