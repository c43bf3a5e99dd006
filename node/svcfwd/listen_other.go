//go:build !linux

package svcfwd

import "syscall"

func freebind(_, _ string, _ syscall.RawConn) error { return nil }
