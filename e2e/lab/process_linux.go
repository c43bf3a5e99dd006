package lab

import (
	"errors"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// Process is a long-lived command started by Host.Start.
type Process struct {
	name    string
	cmd     *exec.Cmd
	logPath string

	done    chan struct{} // closed once the process is reaped
	waitErr error         // written before done is closed

	stopOnce sync.Once
}

// Stop sends SIGTERM to the process group, waits up to timeout, then
// SIGKILLs the group. It returns the exit error (nil on a clean exit 0) and
// is idempotent.
func (p *Process) Stop(timeout time.Duration) error {
	p.stopOnce.Do(func() {
		p.signal(syscall.SIGTERM)
		t := time.NewTimer(timeout)
		defer t.Stop()
		select {
		case <-p.done:
		case <-t.C:
		}
		p.signal(syscall.SIGKILL) // also takes stragglers in the group
		<-p.done
	})
	<-p.done
	return p.waitErr
}

// Kill SIGKILLs the process group and waits for the process.
func (p *Process) Kill() {
	p.stopOnce.Do(func() {
		p.signal(syscall.SIGKILL)
		<-p.done
	})
	<-p.done
}

// signal signals the process group. The leader's pid stays reserved while
// any group member lives, so the group id cannot name another process.
func (p *Process) signal(sig syscall.Signal) {
	if p.cmd.Process == nil {
		return
	}
	syscall.Kill(-p.cmd.Process.Pid, sig)
}

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ExitErr returns the exit error once the process has exited, else nil.
func (p *Process) ExitErr() error {
	if !p.Exited() {
		return nil
	}
	return p.waitErr
}

// Pid returns the process id (the command itself: `ip netns exec` execs
// it), or 0 when it never started. Benchmarks read /proc/<pid> with it.
func (p *Process) Pid() int {
	if p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// LogPath returns the path of the process log.
func (p *Process) LogPath() string { return p.logPath }

// Log returns the whole log so far.
func (p *Process) Log() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return "(read log: " + err.Error() + ")"
	}
	return string(b)
}
