package kube

import (
	"fmt"
	"os/exec"
	"syscall"
	"time"
)

// hostRun is the default Runner: the process runs on the host in its own
// process group, and stop sends the group SIGTERM, then SIGKILL if it
// is still running after stopTimeout, and waits.
func hostRun(name string, argv ...string) (func(), error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	pgid := cmd.Process.Pid
	return func() {
		select {
		case <-done:
			return // reaped: the group id may name another group by now
		default:
		}
		syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(stopTimeout):
			syscall.Kill(-pgid, syscall.SIGKILL)
			<-done
		}
	}, nil
}
