// Package buildinfo tells which build of edgewire is running: the
// version the Makefile stamps in (-X .../buildinfo.Version=...), else
// the Go module's, and the VCS revision and Go version the toolchain
// records. Every binary prints it (`version`, `--version`) and every
// daemon exports it as edgewire_build_info.
package buildinfo

import (
	"encoding/json"
	"fmt"
	"runtime"
	"runtime/debug"
	"sync"

	"github.com/spf13/cobra"
)

// Set at link time by the Makefile: the version (git describe), the
// commit and "true" for a tree with uncommitted changes. Builds that set
// none fall back to what the Go toolchain recorded, if anything (it
// records no VCS state with -buildvcs=false).
var (
	Version  string
	Revision string
	Dirty    string
)

// Info describes the running build.
type Info struct {
	Version   string `json:"version"`    // "dev" when unknown
	Revision  string `json:"revision"`   // VCS commit, "" when unknown
	Modified  bool   `json:"modified"`   // built from a tree with uncommitted changes
	GoVersion string `json:"go_version"` // the toolchain's
	Platform  string `json:"platform"`   // GOOS/GOARCH
}

var get = sync.OnceValue(func() Info {
	in := read(Version, debug.ReadBuildInfo)
	if Revision != "" {
		in.Revision, in.Modified = Revision, Dirty == "true"
	}
	return in
})

// Get returns the running build's Info.
func Get() Info { return get() }

// read builds Info from the stamped version and the toolchain's record.
func read(stamped string, rbi func() (*debug.BuildInfo, bool)) Info {
	in := Info{Version: stamped, GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi, ok := rbi(); ok {
		if in.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			in.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				in.Revision = s.Value
			case "vcs.modified":
				in.Modified = s.Value == "true"
			}
		}
	}
	if in.Version == "" {
		in.Version = "dev"
	}
	return in
}

// String is the one-line form binaries print: version, short revision
// (with "+dirty" for a modified tree), Go version and platform.
func (in Info) String() string {
	rev := in.Revision
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if rev == "" {
		rev = "unknown"
	}
	if in.Modified {
		rev += "+dirty"
	}
	return fmt.Sprintf("%s (commit %s, %s, %s)", in.Version, rev, in.GoVersion, in.Platform)
}

// Command is the `version` subcommand of binary: the one-line form, or
// the Info as JSON with -o json.
func Command(binary string) *cobra.Command {
	var output string
	c := &cobra.Command{
		Use:   "version",
		Short: "Print the version of " + binary,
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			switch output {
			case "text":
				_, err := fmt.Fprintln(c.OutOrStdout(), binary, Get())
				return err
			case "json":
				e := json.NewEncoder(c.OutOrStdout())
				e.SetIndent("", "  ")
				return e.Encode(Get())
			default:
				return fmt.Errorf("-o %q: want text or json", output)
			}
		},
	}
	c.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	return c
}

// SetVersion gives root a --version flag printing the one-line form.
func SetVersion(root *cobra.Command, binary string) {
	root.Version = Get().String()
	root.SetVersionTemplate(binary + " {{.Version}}\n")
}
