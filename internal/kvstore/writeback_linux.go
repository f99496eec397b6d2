package kvstore

import "syscall"

// startWriteBack asks the kernel to start writing n bytes at off of the file to disk,
// after the write-back already started of that range is done (sync_file_range with
// WAIT_BEFORE | WRITE, as pebble does). It is not a sync.
func startWriteBack(fd uintptr, off, n int64) error {
	const waitBefore, write = 0x1, 0x2
	return syscall.SyncFileRange(int(fd), off, n, waitBefore|write)
}
