package fastpath

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/podgate/podgate/fastpath/conntrack"
	"github.com/podgate/podgate/policy/table"
)

// TestCommandEndsIdleWait: with an idle wait of an hour, a command sent to
// an idle worker still runs, and cancelling Run's context still ends it:
// the waker ends the wait. Without it the command would wait out the hour
// and its context would expire.
func TestCommandEndsIdleWait(t *testing.T) {
	e, err := New(Config{
		Store:     &table.Store{},
		Conntrack: conntrack.Config{Capacity: 64, Seed: 1},
		IdleWait:  time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	defer func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Error(err)
			}
		case <-time.After(time.Minute):
			t.Error("Run still sleeps after its context ended")
		}
	}()

	cmdCtx, cmdCancel := context.WithTimeout(ctx, time.Minute)
	defer cmdCancel()
	w := wire("db")
	if err := e.AddPort(cmdCtx, PortSpec{Name: w.name, Kind: PodPort, MAC: w.gwMAC, PeerMAC: w.podMAC, PodIPs: []netip.Addr{w.ip}, Ifindex: 10, Port: newMemPort(16, 2048)}); err != nil {
		t.Fatal(err)
	}
	// The worker now has a port with no frames: it sleeps in idle.
	for i := range 3 {
		time.Sleep(20 * time.Millisecond)
		if err := e.SetNodeAddrs(cmdCtx, []netip.Addr{nodeIP}); err != nil {
			t.Fatalf("command %d on an idle worker: %v", i, err)
		}
	}
}

// TestPublishEndsIdleWait: a table published while the worker sleeps is
// in force before the idle wait (an hour) ends.
func TestPublishEndsIdleWait(t *testing.T) {
	store := &table.Store{}
	e, err := New(Config{
		Store:     store,
		Conntrack: conntrack.Config{Capacity: 64, Seed: 1},
		IdleWait:  time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	defer func() { cancel(); <-done }()
	w := wire("db")
	if err := e.AddPort(ctx, PortSpec{Name: w.name, Kind: PodPort, MAC: w.gwMAC, PeerMAC: w.podMAC, PodIPs: []netip.Addr{w.ip}, Ifindex: 10, Port: newMemPort(16, 2048)}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond) // the worker sleeps
	gen := store.Publish(articleTable(t))
	deadline := time.Now().Add(time.Minute)
	for e.AppliedGeneration() != gen {
		if time.Now().After(deadline) {
			t.Fatalf("worker still on generation %d a minute after generation %d was published", e.AppliedGeneration(), gen)
		}
		time.Sleep(time.Millisecond)
	}
}
