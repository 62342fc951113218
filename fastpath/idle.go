package fastpath

import (
	"context"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podgate/podgate/fastpath/xsk"
)

// waiter sleeps until a port may have work, a command waits ([waker]),
// or the timeout passes.
type waiter interface {
	wait(timeout time.Duration)
}

// pollWaiter waits on AF_XDP sockets and the waker's eventfd with one
// poll(2).
type pollWaiter struct {
	p *xsk.Poller
	w *waker
}

func (w pollWaiter) wait(timeout time.Duration) {
	_, _ = w.p.Wait(timeout)
	if w.p.Woken() {
		w.w.drain()
	}
}

// sleepWaiter serves ports that are not sockets (tests).
type sleepWaiter struct {
	t *time.Timer
	w *waker
}

func (w sleepWaiter) wait(timeout time.Duration) {
	w.t.Reset(timeout)
	select {
	case <-w.t.C:
	case <-w.w.ch:
		w.t.Stop()
	}
}

func newWaiter(ports []*port, wk *waker) waiter {
	socks := make([]*xsk.Socket, 0, len(ports))
	for _, p := range ports {
		s, ok := p.Port.(*xsk.Socket)
		if !ok {
			t := time.NewTimer(time.Hour)
			t.Stop()
			return sleepWaiter{t, wk}
		}
		socks = append(socks, s)
	}
	p := xsk.NewPoller(socks...)
	if wk.fd >= 0 {
		p.WakeOn(wk.fd)
	}
	return pollWaiter{p, wk}
}

// waker ends the worker's idle wait when another goroutine hands it a
// command, so that the wait can be long (little CPU when idle) without
// delaying commands: an eventfd for a poll(2) on sockets, a channel for
// the sleep of ports that are not sockets.
type waker struct {
	mu sync.RWMutex // guards fd against close while another goroutine writes
	fd int          // eventfd, or -1 if it could not be made or is closed
	ch chan struct{}
}

func newWaker() *waker {
	fd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		fd = -1 // commands then wait for the idle timeout
	}
	return &waker{fd: fd, ch: make(chan struct{}, 1)}
}

// wake is safe to call from any goroutine.
func (w *waker) wake() {
	select {
	case w.ch <- struct{}{}:
	default:
	}
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.fd >= 0 {
		one := [8]byte{1}
		_, _ = unix.Write(w.fd, one[:])
	}
}

// drain empties the eventfd; only the worker calls it.
func (w *waker) drain() {
	if w.fd >= 0 {
		var b [8]byte
		_, _ = unix.Read(w.fd, b[:])
	}
}

// close releases the eventfd; a later wake only signals the channel.
func (w *waker) close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fd >= 0 {
		_ = unix.Close(w.fd)
		w.fd = -1
	}
}

// idle waits for frames, a command or the end of ctx, at most IdleWait.
func (e *Engine) idle(ctx context.Context) {
	if len(e.rxPorts) == 0 {
		select {
		case <-ctx.Done():
		case c := <-e.cmds:
			c.reply <- c.fn(e)
		}
		return
	}
	if e.waiter == nil {
		e.waiter = newWaiter(e.rxPorts, e.wake)
	}
	e.waiter.wait(e.cfg.IdleWait)
}
