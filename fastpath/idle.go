package fastpath

import (
	"context"
	"time"

	"github.com/podgate/podgate/fastpath/xsk"
)

// waiter sleeps until a port may have work or the timeout passes.
type waiter interface {
	wait(timeout time.Duration)
}

// pollWaiter waits on AF_XDP sockets with one poll(2).
type pollWaiter struct{ p *xsk.Poller }

func (w pollWaiter) wait(timeout time.Duration) { _, _ = w.p.Wait(timeout) }

// sleepWaiter serves ports that are not sockets (tests).
type sleepWaiter struct{ t *time.Timer }

func (w sleepWaiter) wait(timeout time.Duration) {
	w.t.Reset(timeout)
	<-w.t.C
}

func newWaiter(ports []*port) waiter {
	socks := make([]*xsk.Socket, 0, len(ports))
	for _, p := range ports {
		s, ok := p.Port.(*xsk.Socket)
		if !ok {
			t := time.NewTimer(time.Hour)
			t.Stop()
			return sleepWaiter{t}
		}
		socks = append(socks, s)
	}
	return pollWaiter{xsk.NewPoller(socks...)}
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
		e.waiter = newWaiter(e.rxPorts)
	}
	e.waiter.wait(e.cfg.IdleWait)
}
