//go:build !linux

package kvstore

import "errors"

// startWriteBack is a Linux hint (sync_file_range); elsewhere files are synced whole.
func startWriteBack(uintptr, int64, int64) error { return errors.ErrUnsupported }
