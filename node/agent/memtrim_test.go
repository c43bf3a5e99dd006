package agent

import (
	"testing"
	"time"
)

func TestTrimmer(t *testing.T) {
	const mib = 1 << 20
	type step struct {
		total uint64 // cumulative data-plane bytes at this observation
		want  bool
	}
	tests := []struct {
		name  string
		steps []step // one per trimInterval
	}{
		{"idle agent never trims", []step{{0, false}, {1000, false}, {2000, false}, {3000, false}, {4000, false}}},
		{"burst then quiet trims once", []step{{0, false}, {100 * mib, false}, {100 * mib, false}, {100 * mib, false}, {100 * mib, true}, {100 * mib, false}, {100 * mib, false}}},
		{"never while traffic flows", []step{{0, false}, {100 * mib, false}, {200 * mib, false}, {300 * mib, false}, {400 * mib, false}}},
		{"a trickle is quiet", []step{{0, false}, {50 * mib, false}, {50*mib + 1000, false}, {50*mib + 2000, false}, {50*mib + 3000, true}}},
		{"traffic restarts the quiet stretch", []step{{0, false}, {50 * mib, false}, {50 * mib, false}, {60 * mib, false}, {60 * mib, false}, {60 * mib, false}, {60 * mib, true}}},
		{"small steady traffic is not a burst", []step{{0, false}, {mib, false}, {2 * mib, false}, {2 * mib, false}, {2 * mib, false}, {2 * mib, false}}},
		{"counter reset is not traffic", []step{{0, false}, {50 * mib, false}, {0, false}, {0, false}, {0, true}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var tr trimmer
			now := time.Unix(1000, 0)
			for i, s := range tc.steps {
				if got := tr.observe(s.total, now); got != s.want {
					t.Fatalf("step %d (total %d): got trim %v, want %v", i, s.total, got, s.want)
				}
				now = now.Add(trimInterval)
			}
		})
	}
}
