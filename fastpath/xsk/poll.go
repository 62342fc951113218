package xsk

import (
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// Poller waits on many sockets with one poll(2) call, for a worker that
// serves several ports: after a round in which no socket had frames, the
// worker calls Wait instead of spinning.
//
// A Poller is not safe for concurrent use; it belongs to the worker that
// owns its sockets.
type Poller struct {
	socks []*Socket
	fds   []unix.PollFd
}

// NewPoller returns a Poller for the given sockets.
func NewPoller(socks ...*Socket) *Poller {
	return &Poller{socks: append([]*Socket(nil), socks...), fds: make([]unix.PollFd, len(socks))}
}

// Wait blocks until a socket has received frames, a socket that still has
// frames waiting in its TX ring can take more (POLLOUT; in copy mode the
// kernel transmits them inside poll), or timeout passes (a negative timeout
// waits forever). It returns the number of ready sockets; an interrupted
// wait (EINTR, frequent under the Go runtime's preemption signals) returns
// 0 and no error. It does not allocate.
func (p *Poller) Wait(timeout time.Duration) (int, error) {
	for i, s := range p.socks {
		ev := int16(unix.POLLIN)
		if s.NeedsKick() {
			ev |= unix.POLLOUT
		}
		p.fds[i] = unix.PollFd{Fd: int32(s.FD()), Events: ev}
	}
	ms := -1
	if timeout >= 0 {
		ms = int((timeout + time.Millisecond - 1) / time.Millisecond) // round up
	}
	n, err := unix.Poll(p.fds, ms)
	if err == unix.EINTR {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("poll xsks: %w", err)
	}
	return n, nil
}

// Ready reports whether socket i (in NewPoller order) was readable or
// writable after the last Wait.
func (p *Poller) Ready(i int) bool {
	if i < 0 || i >= len(p.fds) {
		return false
	}
	return p.fds[i].Revents&(unix.POLLIN|unix.POLLOUT) != 0
}
