package xsk

import (
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ring is the index state of one single-producer single-consumer ring
// shared with the kernel. The kernel writes the producer index of the RX
// and completion rings and the consumer index of the fill and TX rings; this
// process writes the other one. Indices run freely and wrap at 2^32; the
// slot of index i is i&mask.
//
// For a ring this process produces into (fill, TX), local is the next index
// to write (published to *producer by publish) and cached is the last kernel
// consumer index read. For a ring it consumes (RX, completion), local is the
// next index to read (published to *consumer) and cached is the last kernel
// producer index read. The shared indices are read and written with atomics
// at most once per batch.
type ring struct {
	producer *uint32
	consumer *uint32
	flags    *uint32
	mask     uint32
	size     uint32
	local    uint32
	cached   uint32
}

// free returns how many slots a producer can fill, reading the kernel's
// consumer index only if the cached one says fewer than want are free.
func (r *ring) free(want uint32) uint32 {
	n := r.size - (r.local - r.cached)
	if n >= want {
		return n
	}
	r.cached = atomic.LoadUint32(r.consumer)
	return r.size - (r.local - r.cached)
}

// available returns how many entries a consumer can read, reading the
// kernel's producer index only if the cached one says fewer than want.
func (r *ring) available(want uint32) uint32 {
	n := r.cached - r.local
	if n >= want {
		return n
	}
	r.cached = atomic.LoadUint32(r.producer)
	return r.cached - r.local
}

// publishProducer makes entries up to local visible to the kernel (a
// store-release: descriptor writes before it are visible first).
func (r *ring) publishProducer() { atomic.StoreUint32(r.producer, r.local) }

// publishConsumer returns the slots before local to the kernel.
func (r *ring) publishConsumer() { atomic.StoreUint32(r.consumer, r.local) }

// needsWakeup reports whether the kernel set XDP_RING_NEED_WAKEUP.
func (r *ring) needsWakeup() bool {
	return atomic.LoadUint32(r.flags)&unix.XDP_RING_NEED_WAKEUP != 0
}

// addrRing is a fill or completion ring of UMEM addresses.
type addrRing struct {
	ring
	descs []uint64
}

// descRing is an RX or TX ring of descriptors.
type descRing struct {
	ring
	descs []unix.XDPDesc
}

// mapRing maps one ring of n entries of entSize bytes at page offset pgoff
// and fills in r's pointers. It returns the mapping for munmap.
func mapRing(fd int, pgoff int64, off unix.XDPRingOffset, n uint32, entSize uintptr, r *ring) ([]byte, unsafe.Pointer, error) {
	length := int(off.Desc) + int(n)*int(entSize)
	mem, err := unix.Mmap(fd, pgoff, length, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, nil, fmt.Errorf("mmap ring at %#x: %w", pgoff, err)
	}
	r.producer = (*uint32)(unsafe.Pointer(&mem[off.Producer]))
	r.consumer = (*uint32)(unsafe.Pointer(&mem[off.Consumer]))
	r.flags = (*uint32)(unsafe.Pointer(&mem[off.Flags]))
	r.size = n
	r.mask = n - 1
	return mem, unsafe.Pointer(&mem[off.Desc]), nil
}
