package fastpath

import (
	"fmt"

	"github.com/podgate/podgate/fastpath/xsk"
)

// memPort is an in-memory Port with the ownership rules of an xsk.Socket:
// every frame is free, with the kernel (queued for receive or transmit) or
// with the worker. Misuse is recorded in err rather than corrupting state.
type memPort struct {
	frameSize int
	umem      []byte
	free      []uint32
	state     []uint8 // frameFree, frameKernel, frameUser
	rxq       []xsk.Frame
	txq       []xsk.Frame
	err       error
	flushes   int
}

const (
	frameFree = iota
	frameKernel
	frameUser
)

func newMemPort(frames, size int) *memPort {
	m := &memPort{frameSize: size, umem: make([]byte, frames*size), state: make([]uint8, frames)}
	for i := frames - 1; i >= 0; i-- {
		m.free = append(m.free, uint32(i))
	}
	return m
}

func (m *memPort) fail(format string, args ...any) {
	if m.err == nil {
		m.err = fmt.Errorf(format, args...)
	}
}

func (m *memPort) index(f xsk.Frame) (int, bool) {
	i := int(f.Addr) / m.frameSize
	if f.Addr%uint64(m.frameSize) != 0 || i >= len(m.state) || int(f.Len) > m.frameSize {
		m.fail("bad frame %+v", f)
		return 0, false
	}
	return i, true
}

// inject queues data as a received frame.
func (m *memPort) inject(data []byte) bool {
	if len(m.free) == 0 || len(data) > m.frameSize {
		return false
	}
	i := m.free[len(m.free)-1]
	m.free = m.free[:len(m.free)-1]
	m.state[i] = frameKernel
	off := int(i) * m.frameSize
	copy(m.umem[off:], data)
	m.rxq = append(m.rxq, xsk.Frame{Addr: uint64(off), Len: uint32(len(data))})
	return true
}

// sent returns copies of the transmitted frames and frees them.
func (m *memPort) sent() [][]byte {
	var out [][]byte
	for _, f := range m.txq {
		i, _ := m.index(f)
		out = append(out, append([]byte(nil), m.umem[f.Addr:f.Addr+uint64(f.Len)]...))
		m.state[i] = frameFree
		m.free = append(m.free, uint32(i))
	}
	m.txq = m.txq[:0]
	return out
}

func (m *memPort) Receive(batch []xsk.Frame) int {
	n := copy(batch, m.rxq)
	for _, f := range batch[:n] {
		i, _ := m.index(f)
		m.state[i] = frameUser
	}
	m.rxq = m.rxq[:copy(m.rxq, m.rxq[n:])]
	return n
}

func (m *memPort) Bytes(f xsk.Frame) []byte {
	i, ok := m.index(f)
	if !ok || m.state[i] != frameUser {
		m.fail("Bytes of frame %+v not owned by the worker", f)
		return nil
	}
	return m.umem[f.Addr : f.Addr+uint64(f.Len)]
}

func (m *memPort) Release(f xsk.Frame) {
	i, ok := m.index(f)
	if !ok || m.state[i] != frameUser {
		m.fail("Release of frame %+v not owned by the worker", f)
		return
	}
	m.state[i] = frameFree
	m.free = append(m.free, uint32(i))
}

func (m *memPort) Alloc() (xsk.Frame, bool) {
	if len(m.free) == 0 {
		return xsk.Frame{}, false
	}
	i := m.free[len(m.free)-1]
	m.free = m.free[:len(m.free)-1]
	m.state[i] = frameUser
	return xsk.Frame{Addr: uint64(i) * uint64(m.frameSize), Len: uint32(m.frameSize)}, true
}

func (m *memPort) Transmit(f xsk.Frame) bool {
	i, ok := m.index(f)
	if !ok || m.state[i] != frameUser {
		m.fail("Transmit of frame %+v not owned by the worker", f)
		return false
	}
	m.state[i] = frameKernel
	m.txq = append(m.txq, f)
	return true
}

func (m *memPort) Flush() error { m.flushes++; return nil }

// leaked counts frames the worker holds (neither free nor queued).
func (m *memPort) leaked() int {
	n := 0
	for _, s := range m.state {
		if s == frameUser {
			n++
		}
	}
	return n
}
