package conntrack

import (
	"syscall"
	"unsafe"
)

// mapMemory maps size bytes of zeroed anonymous memory, aligned to 2 MiB
// and advised to use transparent huge pages (best effort: with THP
// disabled it is ordinary memory). whole is the mapping to unmap later.
func mapMemory(size int) (mem, whole []byte, ok bool) {
	const huge = 2 << 20
	whole, err := syscall.Mmap(-1, 0, size+huge, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANONYMOUS)
	if err != nil {
		return nil, nil, false
	}
	off := (huge - int(uintptr(unsafe.Pointer(unsafe.SliceData(whole)))%huge)) % huge
	mem = whole[off : off+size : off+size]
	_ = syscall.Madvise(mem, syscall.MADV_HUGEPAGE)
	return mem, whole, true
}

func unmapMemory(maps [][]byte) {
	for _, m := range maps {
		_ = syscall.Munmap(m)
	}
}
