//go:build !linux

package conntrack

func mapMemory(int) (mem, whole []byte, ok bool) { return nil, nil, false }

func unmapMemory([][]byte) {}
