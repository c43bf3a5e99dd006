package identity

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// lockFile is the state dir's lock: held (flock) by the one agent that
// uses the dir, with its pid inside for the message a second one gets.
const lockFile = "agent.lock"

// ErrStateDirInUse: another process holds the state dir.
var ErrStateDirInUse = errors.New("state dir in use")

// Lock is a held state-dir lock; Close releases it (so does the
// process's exit, however it ends).
type Lock struct{ f *os.File }

// LockStateDir takes dir's lock, creating dir (0700) if needed. Two
// agents on one state dir share a node key: the second takes over the
// first's coordinator stream and relay session and leaves wrong
// endpoints behind, and a join would spend a token for nothing. So the
// second gets ErrStateDirInUse, naming the holder's pid, before it does
// anything.
func LockStateDir(dir string) (*Lock, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	path := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("state dir lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		b, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			holder := "another process"
			if pid, perr := strconv.Atoi(strings.TrimSpace(string(b))); perr == nil && pid > 0 {
				holder = "pid " + strconv.Itoa(pid)
			}
			return nil, fmt.Errorf("%w by %s: %s belongs to another edgewire-agent; stop it, or give this one its own --state-dir", ErrStateDirInUse, holder, dir)
		}
		return nil, fmt.Errorf("state dir lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &Lock{f: f}, nil
}

// Close releases the lock.
func (l *Lock) Close() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}
