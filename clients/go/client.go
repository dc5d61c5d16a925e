// Package pidmap is a Go client of the pidmap node agent, which answers
// "which container and which pod is PID N in?" over gRPC on a Unix socket.
//
// It connects the way every pidmap tool does (the socket $PIDMAP_SOCKET
// names, else DefaultSocket), offers the agent's calls ([Client]), and keeps
// a local copy of the agent's map fed by its Watch stream ([Cache]) for
// programs that look up pids per event, such as profilers: a cached lookup
// is a map read under a read lock, no socket round trip.
//
// The package lives in the pidmap repository at clients/go; its import
// path is "pidmap/clients/go" (the directory's name is a Go keyword, so
// import it under a name, e.g. pidmap). The generated messages and gRPC
// client are in the subpackage pidmap/clients/go/pidmapv1.
//
//	client, err := pidmap.Dial("")
//	if err != nil { ... }
//	defer client.Close()
//	record, err := client.Resolve(ctx, 4711)
//
//	cache := pidmap.NewCache(client, pidmap.CacheOptions{})
//	defer cache.Close()
//	entry, err := cache.Lookup(ctx, 4711)
package pidmap

import (
	"context"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"pidmap/clients/go/pidmapv1"
)

const (
	// DefaultSocket is where the agent serves by default.
	DefaultSocket = "/run/pidmap/pidmap.sock"
	// SocketEnv names the environment variable that, when set, names the
	// agent's socket.
	SocketEnv = "PIDMAP_SOCKET"
	// MaxSocketPath is the longest Unix socket path (sun_path holds 108
	// bytes with the NUL).
	MaxSocketPath = 107
	// DefaultTimeout bounds a call whose context has no deadline (a Watch
	// stream is not bounded).
	DefaultTimeout = 30 * time.Second
	// maxResponseBytes is the largest response accepted: the agent's own
	// limit for what it sends (a full ResolveBatch or ListProcesses of a
	// busy node is larger than gRPC's 4 MiB default).
	maxResponseBytes = 64 << 20
)

// reconnect is how the connection is re-established after it broke (the
// agent restarted): from 100 ms to 5 s between attempts, 5 s at most per
// attempt, as pidmap-client does; gRPC's default backs off up to 2 min.
var reconnect = grpc.ConnectParams{
	Backoff: backoff.Config{
		BaseDelay:  100 * time.Millisecond,
		Multiplier: 2,
		Jitter:     0.2,
		MaxDelay:   5 * time.Second,
	},
	MinConnectTimeout: 5 * time.Second,
}

// SocketFromEnv returns the socket $PIDMAP_SOCKET names, else
// DefaultSocket: the discovery every pidmap tool uses.
func SocketFromEnv() string {
	if s := os.Getenv(SocketEnv); s != "" {
		return s
	}
	return DefaultSocket
}

// Client is a connection to the agent and its calls. It is safe for
// concurrent use; calls share one HTTP/2 connection.
type Client struct {
	conn   *grpc.ClientConn
	rpc    pidmapv1.PidmapClient
	socket string
}

// Dial returns a client of the agent at socket ("" means SocketFromEnv).
// Like grpc.Dial it does not wait for the connection: an agent that is not
// there shows in the first call's error (codes.Unavailable), and the
// connection is re-established by itself after the agent restarts. opts
// are added to the client's own: an insecure Unix socket connection with
// the authority localhost, responses up to 64 MiB, and reconnects backing
// off from 100 ms to 5 s.
func Dial(socket string, opts ...grpc.DialOption) (*Client, error) {
	if socket == "" {
		socket = SocketFromEnv()
	}
	if len(socket) > MaxSocketPath {
		return nil, fmt.Errorf("pidmap: the socket path %s is %d bytes; a Unix socket path is at most %d bytes",
			socket, len(socket), MaxSocketPath)
	}
	// "unix:PATH" takes absolute and relative paths in every grpc-go
	// version, which sends the authority localhost for it.
	all := append([]grpc.DialOption{
		grpc.WithInsecure(),
		grpc.WithConnectParams(reconnect),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxResponseBytes)),
	}, opts...)
	conn, err := grpc.Dial("unix:"+socket, all...)
	if err != nil {
		return nil, fmt.Errorf("pidmap: cannot connect to the agent at %s: %w", socket, err)
	}
	return &Client{conn: conn, rpc: pidmapv1.NewPidmapClient(conn), socket: socket}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Socket is the socket this client connects to.
func (c *Client) Socket() string { return c.socket }

// Conn is the gRPC connection, for the agent's other services (gRPC health,
// reflection).
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// RPC is the generated client, for what the methods here do not cover.
func (c *Client) RPC() pidmapv1.PidmapClient { return c.rpc }

// bounded gives ctx DefaultTimeout unless it has a deadline already.
func bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, DefaultTimeout)
}

// Resolve answers one process. An unknown pid is not an error: it is a
// record in state PROCESS_STATE_UNKNOWN. pid 0, negative or above 4194304
// is codes.InvalidArgument.
func (c *Client) Resolve(ctx context.Context, pid int64) (*pidmapv1.ProcessRecord, error) {
	return c.resolve(ctx, &pidmapv1.ResolveRequest{Pid: pid})
}

// ResolveExact answers only the process pid that started at startTime
// (clock ticks since boot, field 22 of /proc/PID/stat), which guards
// against pid reuse: another process on that pid answers
// PROCESS_STATE_UNKNOWN.
func (c *Client) ResolveExact(ctx context.Context, pid int64, startTime uint64) (*pidmapv1.ProcessRecord, error) {
	return c.resolve(ctx, &pidmapv1.ResolveRequest{Pid: pid, StartTime: &startTime})
}

func (c *Client) resolve(ctx context.Context, req *pidmapv1.ResolveRequest) (*pidmapv1.ProcessRecord, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	return c.rpc.Resolve(ctx, req)
}

// ResolveBatch answers many processes in one call, in request order (at
// most the agent's batch limit, 4096 by default).
func (c *Client) ResolveBatch(ctx context.Context, requests []*pidmapv1.ResolveRequest) ([]*pidmapv1.ProcessRecord, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := c.rpc.ResolveBatch(ctx, &pidmapv1.ResolveBatchRequest{Requests: requests})
	return resp.GetRecords(), err
}

// ListContainers lists the containers filter matches (every field of it is
// optional; nil lists all but the deleted ones).
func (c *Client) ListContainers(ctx context.Context, filter *pidmapv1.ListContainersRequest) ([]*pidmapv1.Container, error) {
	if filter == nil {
		filter = &pidmapv1.ListContainersRequest{}
	}
	ctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := c.rpc.ListContainers(ctx, filter)
	return resp.GetContainers(), err
}

// ListProcesses lists the live processes of one container; namespace (the
// runtime namespace) is needed only when the id exists in several, "" for
// any.
func (c *Client) ListProcesses(ctx context.Context, containerID, namespace string) ([]*pidmapv1.ProcessRecord, error) {
	req := &pidmapv1.ListProcessesRequest{ContainerId: containerID}
	if namespace != "" {
		req.RuntimeNamespace = &namespace
	}
	ctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := c.rpc.ListProcesses(ctx, req)
	return resp.GetProcesses(), err
}

// Watch streams a snapshot of every container and live process (ended by
// an event with SnapshotDone), then changes as they happen, until ctx ends
// or the agent ends the stream. Cache keeps a map from it.
func (c *Client) Watch(ctx context.Context) (pidmapv1.Pidmap_WatchClient, error) {
	return c.rpc.Watch(ctx, &pidmapv1.WatchRequest{})
}

// WhoAmI answers the calling process's own record (from the socket's peer
// credentials).
func (c *Client) WhoAmI(ctx context.Context) (*pidmapv1.ProcessRecord, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	return c.rpc.WhoAmI(ctx, &pidmapv1.WhoAmIRequest{})
}

// Status answers the agent's readiness and counters.
func (c *Client) Status(ctx context.Context) (*pidmapv1.StatusResponse, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	return c.rpc.Status(ctx, &pidmapv1.StatusRequest{})
}
