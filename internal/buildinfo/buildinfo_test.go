package buildinfo

import (
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

func TestRead(t *testing.T) {
	bi := func(version string, settings ...debug.BuildSetting) func() (*debug.BuildInfo, bool) {
		return func() (*debug.BuildInfo, bool) {
			return &debug.BuildInfo{Main: debug.Module{Version: version}, Settings: settings}, true
		}
	}
	rev := debug.BuildSetting{Key: "vcs.revision", Value: "0123456789abcdef0123"}
	dirty := debug.BuildSetting{Key: "vcs.modified", Value: "true"}
	none := func() (*debug.BuildInfo, bool) { return nil, false }
	for _, tc := range []struct {
		name, stamped string
		rbi           func() (*debug.BuildInfo, bool)
		want          string // String() up to the Go version
	}{
		{"stamped wins", "v0.9.0", bi("v0.1.0", rev), "v0.9.0 (commit 0123456789ab, "},
		{"module version", "", bi("v0.2.0", rev), "v0.2.0 (commit 0123456789ab, "},
		{"a checkout: devel", "", bi("(devel)", rev, dirty), "dev (commit 0123456789ab+dirty, "},
		{"nothing known", "", none, "dev (commit unknown, "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := read(tc.stamped, tc.rbi).String()
			if !strings.HasPrefix(got, tc.want) || !strings.HasSuffix(got, runtime.Version()+", "+runtime.GOOS+"/"+runtime.GOARCH+")") {
				t.Errorf("got %q, want %q...%s, %s/%s)", got, tc.want, runtime.Version(), runtime.GOOS, runtime.GOARCH)
			}
		})
	}
}
