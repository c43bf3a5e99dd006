package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestApplyConfigFile(t *testing.T) {
	type state struct {
		name   string
		routes []string
		mtu    int
		dns    bool
	}
	tests := []struct {
		name    string
		args    []string // command line
		file    string
		want    state
		changed []string // flags marked given afterwards
		err     string   // substring; the flags keep the command line's values
	}{
		{name: "all kinds", file: "name: edge-1\nadvertise-routes: [10.42.3.0/24, 10.42.4.0/24]\nmtu: 1380\ndns: true\n",
			want: state{"edge-1", []string{"10.42.3.0/24", "10.42.4.0/24"}, 1380, true}, changed: []string{"name", "advertise-routes", "mtu", "dns"}},
		{name: "json", file: `{"name": "edge-2", "advertise-routes": []}`,
			want: state{name: "edge-2", routes: []string{}, mtu: 1420}, changed: []string{"name", "advertise-routes"}},
		{name: "command line wins", args: []string{"--name", "cli", "--mtu", "1300"}, file: "name: file\nmtu: 1400\nadvertise-routes: [10.1.0.0/16]\n",
			want: state{"cli", []string{"10.1.0.0/16"}, 1300, false}, changed: []string{"name", "mtu", "advertise-routes"}},
		{name: "empty file", file: "", want: state{mtu: 1420}},
		{name: "unknown key", file: "name: x\nadvertise-route: [10.0.0.0/8]\n", err: `unknown key "advertise-route"`, want: state{mtu: 1420}},
		{name: "config in config", file: "config: other.yaml\n", err: `unknown key "config"`, want: state{mtu: 1420}},
		{name: "list for one value", file: "name: [a, b]\n", err: "name: want one value", want: state{mtu: 1420}},
		{name: "mapping", file: "name: {a: b}\n", err: "name: want a string", want: state{mtu: 1420}},
		{name: "bad value undoes the rest", file: "name: x\nadvertise-routes: [10.0.0.0/8]\nmtu: lots\n", err: "mtu", want: state{mtu: 1420}},
		{name: "not YAML", file: "name: [\n", err: "--config", want: state{mtu: 1420}},
		{name: "null", file: "name:\n", err: "name: no value", want: state{mtu: 1420}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fs := pflag.NewFlagSet("run", pflag.ContinueOnError)
			var st state
			fs.StringVar(&st.name, "name", "", "")
			fs.StringSliceVar(&st.routes, "advertise-routes", nil, "")
			fs.IntVar(&st.mtu, "mtu", 1420, "")
			fs.BoolVar(&st.dns, "dns", false, "")
			fs.String("config", "", "")
			if err := fs.Parse(tt.args); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(t.TempDir(), "agent.yaml")
			if err := os.WriteFile(path, []byte(tt.file), 0o600); err != nil {
				t.Fatal(err)
			}
			err := applyConfigFile(fs, path)
			if tt.err == "" && err != nil || tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)) {
				t.Fatalf("applyConfigFile: %v, want error containing %q", err, tt.err)
			}
			if st.name != tt.want.name || !slices.Equal(st.routes, tt.want.routes) || st.mtu != tt.want.mtu || st.dns != tt.want.dns {
				t.Errorf("flags %+v, want %+v", st, tt.want)
			}
			var changed []string
			fs.VisitAll(func(f *pflag.Flag) {
				if fs.Changed(f.Name) {
					changed = append(changed, f.Name)
				}
			})
			slices.Sort(changed)
			want := slices.Clone(tt.changed)
			if tt.err != "" {
				want = nil
				for _, a := range tt.args {
					if strings.HasPrefix(a, "--") {
						want = append(want, a[2:])
					}
				}
			}
			slices.Sort(want)
			if !slices.Equal(changed, want) {
				t.Errorf("flags given: %v, want %v", changed, want)
			}
		})
	}
}
