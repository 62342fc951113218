package hostile

import (
	"net"
	"strings"
	"testing"
	"time"
)

// TestBugFlowFollowersUnbounded — BUG (unauthenticated client can crash
// the agent), fails until fixed.
//
// /flows?follow=true subscribes the connection to the flow log with a
// 256-record channel (fastpath/flowlog.go, FlowLog.subscribe), about 78 KB
// of heap per follower, and neither the handler nor the metrics server
// (cmd/podgate/agent.go: http.Server with ReadHeaderTimeout only) limits
// followers or connections. In the DaemonSet the server listens on the
// node's IP (deploy/daemonset.yaml, --metrics-addr=[$(POD_IP)]:9402), so
// any pod or host that reaches it can open followers until the agent hits
// its 512 MiB memory limit — about 6,000 of them — and is OOM-killed, which
// cuts off every pod of the node until it restarts (fail-closed), and again
// after each restart.
//
// Fix proposed: cap the followers (e.g. 16, answering 503 beyond), give
// each a small channel (records are dropped for slow followers anyway),
// and limit the server's connections (netutil.LimitListener) and idle
// time.
func TestBugFlowFollowersUnbounded(t *testing.T) {
	const followers = 2000
	n := newNode(t)
	before := n.metrics()
	addr := strings.TrimPrefix(n.l.AgentURL(), "http://")
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	err := n.l.Node().NS.Do(func() error {
		for range followers {
			c, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				return err
			}
			conns = append(conns, c)
			if _, err := c.Write([]byte("GET /flows?follow=true HTTP/1.1\r\nHost: podgate\r\n\r\n")); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Logf("after %d connections: %v", len(conns), err)
	}
	time.Sleep(2 * time.Second)
	n.checkHealthy("with the followers connected")
	after := n.metrics()
	heap := after.Get("go_memstats_heap_inuse_bytes") - before.Get("go_memstats_heap_inuse_bytes")
	t.Logf("%d /flows followers: goroutines %v -> %v, open fds %v -> %v, heap in use +%.1f MiB (%.1f KiB each), RSS %.1f -> %.1f MiB",
		len(conns), before.Get("go_goroutines"), after.Get("go_goroutines"), before.Get("process_open_fds"), after.Get("process_open_fds"),
		heap/(1<<20), heap/float64(len(conns))/1024, before.Get("process_resident_memory_bytes")/(1<<20), after.Get("process_resident_memory_bytes")/(1<<20))
	if heap > 32<<20 {
		t.Errorf("unauthenticated /flows followers took %.0f MiB of the agent's heap (%.0f KiB each): at the DaemonSet's 512 MiB limit about %.0f of them OOM-kill the agent",
			heap/(1<<20), heap/float64(len(conns))/1024, 512*(1<<20)/(heap/float64(len(conns))))
	}
}
