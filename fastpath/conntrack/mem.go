package conntrack

import (
	"runtime"
	"unsafe"
)

// hugeMin is the size from which an array is mapped outside the Go heap.
const hugeMin = 1 << 20

// arena tracks the memory mappings of a table's large arrays.
type arena struct {
	maps [][]byte
}

// makeArray returns a zeroed []T of length n. An array of at least hugeMin
// bytes is mapped outside the Go heap where the platform supports it, with
// transparent huge pages requested (Linux): a flow table is accessed at
// random, and with 4 KiB pages nearly every access to a table of a million
// flows would also miss the TLB, which in a virtual machine costs about as
// much as the cache miss itself. T must not contain pointers: the garbage
// collector does not see that memory.
func makeArray[T any](a *arena, n int) []T {
	var zero T
	size := int(unsafe.Sizeof(zero)) * n
	if size >= hugeMin {
		if mem, whole, ok := mapMemory(size); ok {
			a.maps = append(a.maps, whole)
			return unsafe.Slice((*T)(unsafe.Pointer(unsafe.SliceData(mem))), n)
		}
	}
	return make([]T, n)
}

// releaseWith arranges for a's mappings to be released once owner is
// unreachable.
func (a *arena) releaseWith(owner *Table) {
	if len(a.maps) > 0 {
		runtime.AddCleanup(owner, unmapMemory, a.maps)
	}
}
