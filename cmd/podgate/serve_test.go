package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestClientLimitListener: over its per-client budget a client's new
// connection is closed at once; other clients are not affected, and a
// closed connection gives its slot back.
func TestClientLimitListener(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	rejected := prometheus.NewCounter(prometheus.CounterOpts{Name: "rejected"})
	ln := &clientLimitListener{Listener: inner, perClient: 2, rejected: rejected, open: map[netip.Addr]int{}}
	defer ln.Close()
	accepted := make(chan net.Conn, 10)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dial := func(src string) net.Conn {
		t.Helper()
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		c, err := d.Dial("tcp", inner.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	// closedByServer reports whether the server closed c (EOF) rather than
	// keeping it open.
	closedByServer := func(c net.Conn) bool {
		_ = c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		_, err := c.Read(make([]byte, 1))
		return errors.Is(err, io.EOF)
	}
	a1, a2, a3 := dial("127.0.0.1"), dial("127.0.0.1"), dial("127.0.0.1")
	b1 := dial("127.0.0.2")
	var server []net.Conn
	for range 3 {
		select {
		case c := <-accepted:
			server = append(server, c)
		case <-time.After(2 * time.Second):
			t.Fatalf("accepted %d connections, want 3", len(server))
		}
	}
	if closedByServer(a1) || closedByServer(a2) || closedByServer(b1) {
		t.Error("a connection within its client's budget was closed")
	}
	if !closedByServer(a3) {
		t.Error("the third connection of a client with a budget of 2 is open")
	}
	if got := testutil.ToFloat64(rejected); got != 1 {
		t.Errorf("rejected = %v, want 1", got)
	}
	// A closed connection frees its client's slot.
	for _, c := range server {
		if strings.HasPrefix(c.RemoteAddr().String(), "127.0.0.1:") {
			c.Close()
			break
		}
	}
	a4 := dial("127.0.0.1")
	select {
	case <-accepted:
	case <-time.After(2 * time.Second):
		t.Fatal("no slot after a connection of the client closed")
	}
	if closedByServer(a4) {
		t.Error("the connection after a close was closed")
	}
}

// TestStreamWriteDeadline: a streaming handler writing to a client that
// does not read fails after the deadline instead of blocking for ever,
// while the stream itself may last longer than the deadline.
func TestStreamWriteDeadline(t *testing.T) {
	const d = 300 * time.Millisecond
	done := make(chan error, 1)
	h := streamWriteDeadline(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		chunk := []byte(strings.Repeat("x", 64<<10))
		start := time.Now()
		for {
			if _, err := w.Write(chunk); err != nil {
				done <- err
				return
			}
			w.(http.Flusher).Flush()
			if time.Since(start) > time.Minute {
				done <- errors.New("still writing after a minute")
				return
			}
		}
	}), d)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	defer srv.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("GET /flows HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, http.ErrHandlerTimeout) && !strings.Contains(err.Error(), "timeout") {
			t.Errorf("write error %v, want a timeout", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the handler still writes to a client that does not read after 30s")
	}

	// A reading client gets a stream longer than the deadline.
	c2, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if _, err := c2.Write([]byte("GET /flows HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	buf := make([]byte, 64<<10)
	for time.Since(start) < 3*d {
		_ = c2.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c2.Read(buf); err != nil {
			t.Fatalf("reading client after %v: %v", time.Since(start).Round(time.Millisecond), err)
		}
	}
}

// TestPprofServer serves Go's profiles on --pprof-addr only: the metrics
// server has none, and without the flag there is no third listener.
func TestPprofServer(t *testing.T) {
	for _, addr := range []string{"", "127.0.0.1:0"} {
		s, err := newServers(serveConfig{
			MetricsAddr: "127.0.0.1:0", HealthAddr: "127.0.0.1:0", PprofAddr: addr,
			MaxConns: 8, MaxConnsPerClient: 8, Registry: prometheus.NewRegistry(),
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() { done <- s.Serve(ctx) }()
		get := func(ln net.Listener, path string) int {
			t.Helper()
			resp, err := http.Get("http://" + ln.Addr().String() + path)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			return resp.StatusCode
		}
		if code := get(s.metricsLn, "/debug/pprof/heap"); code != http.StatusNotFound {
			t.Errorf("metrics server /debug/pprof/heap: %d, want 404", code)
		}
		if addr == "" {
			if s.pprof != nil || s.pprofLn != nil {
				t.Error("a pprof server without --pprof-addr")
			}
		} else {
			for _, path := range []string{"/debug/pprof/", "/debug/pprof/heap?debug=1", "/debug/pprof/goroutine?debug=1", "/debug/pprof/profile?seconds=1"} {
				if code := get(s.pprofLn, path); code != http.StatusOK {
					t.Errorf("pprof server %s: %d, want 200", path, code)
				}
			}
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}
