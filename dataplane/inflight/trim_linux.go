package inflight

import (
	"os"

	"golang.org/x/sys/unix"
)

var pageSize = os.Getpagesize()

// release gives the whole pages inside b back to the kernel
// (MADV_DONTNEED: they read as zeros when next touched) and returns how
// many bytes that was. b stays valid.
func release(b []byte) int {
	if len(b) == 0 {
		return 0
	}
	start := (addr(b) + uintptr(pageSize) - 1) &^ uintptr(pageSize-1)
	end := (addr(b) + uintptr(len(b))) &^ uintptr(pageSize-1)
	if end <= start {
		return 0
	}
	off := int(start - addr(b))
	n := int(end - start)
	if unix.Madvise(b[off:off+n], unix.MADV_DONTNEED) != nil {
		return 0
	}
	return n
}
