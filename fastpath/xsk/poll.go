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
	wake  int // a file descriptor that also ends a Wait when readable, or -1
}

// NewPoller returns a Poller for the given sockets.
func NewPoller(socks ...*Socket) *Poller {
	return &Poller{socks: append([]*Socket(nil), socks...), fds: make([]unix.PollFd, len(socks), len(socks)+1), wake: -1}
}

// WakeOn makes Wait also return when fd becomes readable (an eventfd that
// another goroutine writes to hand the worker something). Draining it is
// the caller's job.
func (p *Poller) WakeOn(fd int) { p.wake = fd }

// Wait blocks until a socket has received frames, the wake descriptor
// ([Poller.WakeOn]) is readable, a socket that still has
// frames waiting in its TX ring can take more (POLLOUT; in copy mode the
// kernel transmits them inside poll), or timeout passes (a negative timeout
// waits forever). It returns the number of ready sockets; an interrupted
// wait (EINTR, frequent under the Go runtime's preemption signals) returns
// 0 and no error. It does not allocate.
func (p *Poller) Wait(timeout time.Duration) (int, error) {
	p.fds = p.fds[:len(p.socks)]
	for i, s := range p.socks {
		ev := int16(unix.POLLIN)
		if s.NeedsKick() {
			ev |= unix.POLLOUT
		}
		p.fds[i] = unix.PollFd{Fd: int32(s.FD()), Events: ev}
	}
	if p.wake >= 0 {
		p.fds = append(p.fds, unix.PollFd{Fd: int32(p.wake), Events: unix.POLLIN})
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
	if p.Woken() {
		n-- // the wake descriptor is not a socket
	}
	return n, nil
}

// Woken reports whether the wake descriptor was readable after the last
// Wait.
func (p *Poller) Woken() bool {
	return p.wake >= 0 && len(p.fds) > len(p.socks) && p.fds[len(p.socks)].Revents != 0
}

// Ready reports whether socket i (in NewPoller order) was readable or
// writable after the last Wait.
func (p *Poller) Ready(i int) bool {
	if i < 0 || i >= len(p.socks) {
		return false
	}
	return p.fds[i].Revents&(unix.POLLIN|unix.POLLOUT) != 0
}
