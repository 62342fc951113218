package hostile

import (
	"net"
	"strings"
	"testing"
	"time"
)

// TestFlowFollowersBounded: 2,000 unauthenticated /flows?follow=true
// clients cost the agent little heap and leave it healthy. The followers
// are capped (fastpath/flowlog.go) and the metrics server's connections
// are bounded (--metrics-max-conns, --metrics-max-conns-per-client). Before (the bug the hostile tests
// found; see SECURITY.md) each follower held a 256-record channel, about
// 78 KB of heap, and any pod or host that reached the node's metrics port
// could open followers until the agent hit its 512 MiB memory limit and
// was OOM-killed, which cut off every pod of the node.
func TestFlowFollowersBounded(t *testing.T) {
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
