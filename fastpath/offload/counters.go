package offload

import (
	"fmt"
	"os"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// counterSize is the size of struct counter, the stride of the counters
// map (array values are laid out 8-byte aligned; 24 already is).
const counterSize = 24

// counterMem is the counters map mapped into this process (BPF_F_MMAPABLE),
// read and written with atomic operations on the same memory the programs
// update with atomic adds.
//
// cilium/ebpf's Map.Memory maps it too, but offers only copying
// ReadAt/WriteAt (no atomic read-and-zero, which Take needs) and unmaps
// only when the garbage collector finds the mapping unreachable, which
// keeps an unpinned map alive in the kernel until then. Hence this small
// mapping of our own, unmapped by Close.
type counterMem struct {
	b     []byte
	slots uint32
}

func mapCounters(m *ebpf.Map, slots int) (counterMem, error) {
	size := 2 * slots * counterSize
	if int(m.MaxEntries())*counterSize != size || m.ValueSize() != counterSize {
		return counterMem{}, fmt.Errorf("counters map has %d values of %d bytes, want %d of %d", m.MaxEntries(), m.ValueSize(), 2*slots, counterSize)
	}
	page := os.Getpagesize()
	b, err := unix.Mmap(m.FD(), 0, (size+page-1)/page*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return counterMem{}, fmt.Errorf("mmap counters: %w", err)
	}
	return counterMem{b: b[:size], slots: uint32(slots)}, nil
}

func (c *counterMem) unmap() error {
	if c.b == nil {
		return nil
	}
	b := c.b[:cap(c.b)]
	c.b = nil
	if err := unix.Munmap(b); err != nil {
		return fmt.Errorf("munmap counters: %w", err)
	}
	return nil
}

// field returns the 8-byte field at offset field (0 packets, 8 bytes, 16
// last_seen_ns) of the counter of slot and direction d. The offset is a
// multiple of 8 in a page-aligned mapping, so the field is aligned.
func (c *counterMem) field(slot uint32, d Dir, field int) *uint64 {
	off := (int(slot)*2+int(d))*counterSize + field
	return (*uint64)(unsafe.Pointer(&c.b[off]))
}

const (
	fieldPackets  = 0
	fieldBytes    = 8
	fieldLastSeen = 16
)

// Counters returns the counters of a flow's direction since its slot was
// last reset: atomic loads from the counters map's memory, no syscall, no
// allocation. The three fields are not one snapshot (a packet may be in
// Packets and not yet in Bytes). A slot out of range, or an Offload after
// Close, reads as zero.
func (o *Offload) Counters(slot uint32, dir Dir) Counter {
	c := &o.counters
	if c.b == nil || slot >= c.slots || dir > DirBA {
		return Counter{}
	}
	return Counter{
		Packets:    atomic.LoadUint64(c.field(slot, dir, fieldPackets)),
		Bytes:      atomic.LoadUint64(c.field(slot, dir, fieldBytes)),
		LastSeenNS: atomic.LoadUint64(c.field(slot, dir, fieldLastSeen)),
	}
}

// Take returns, for both directions of a slot (indexed by [Dir]), the
// packets and bytes counted since the last Take or ResetCounters, and
// zeroes them with atomic swaps: a packet counted concurrently is in this
// Take or the next, never lost or counted twice (its packet and its bytes
// may land in different Takes). LastSeenNS is the direction's last-seen
// time, which Take does not reset. No syscall, no allocation.
func (o *Offload) Take(slot uint32) [2]Counter {
	var r [2]Counter
	c := &o.counters
	if c.b == nil || slot >= c.slots {
		return r
	}
	for d := DirAB; d <= DirBA; d++ {
		r[d] = Counter{
			Packets:    takeUint64(c.field(slot, d, fieldPackets)),
			Bytes:      takeUint64(c.field(slot, d, fieldBytes)),
			LastSeenNS: atomic.LoadUint64(c.field(slot, d, fieldLastSeen)),
		}
	}
	return r
}

// takeUint64 swaps *p with 0 and returns the old value; a counter that is
// 0 is only read, so that sweeping idle flows writes nothing (an atomic
// swap costs a locked instruction and dirties the cache line).
func takeUint64(p *uint64) uint64 {
	if atomic.LoadUint64(p) == 0 {
		return 0
	}
	return atomic.SwapUint64(p, 0)
}

// ResetCounters zeroes both directions' counters of a slot, last-seen
// times included, without a syscall. Do it before installing a flow that
// reuses the slot.
func (o *Offload) ResetCounters(slot uint32) {
	c := &o.counters
	if c.b == nil || slot >= c.slots {
		return
	}
	for d := DirAB; d <= DirBA; d++ {
		for _, f := range []int{fieldPackets, fieldBytes, fieldLastSeen} {
			atomic.StoreUint64(c.field(slot, d, f), 0)
		}
	}
}
