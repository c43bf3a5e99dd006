//go:build !linux

package kube

import "errors"

// hostRun needs process groups as Linux has them; elsewhere pass a Runner.
func hostRun(name string, argv ...string) (func(), error) {
	return nil, errors.New("kube: running processes on the host needs Linux")
}
