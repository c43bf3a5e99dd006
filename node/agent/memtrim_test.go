package agent

import (
	"testing"
	"time"
)

func TestTrimmer(t *testing.T) {
	const mib = 1 << 20
	type step struct {
		total uint64 // cumulative data-plane bytes at this observation
		want  trimKind
		alloc uint64 // cumulative heap allocations (0 in the data-plane cases)
		free  uint64 // free heap pages not returned to the OS, and garbage
	}
	tests := []struct {
		name  string
		steps []step // one per trimInterval
	}{
		{"idle agent never trims", []step{{0, noTrim, 0, 0}, {1000, noTrim, 0, 0}, {2000, noTrim, 0, 0}, {3000, noTrim, 0, 0}, {4000, noTrim, 0, 0}}},
		{"burst then quiet trims once", []step{{0, noTrim, 0, 0}, {100 * mib, noTrim, 0, 0}, {100 * mib, noTrim, 0, 0}, {100 * mib, noTrim, 0, 0}, {100 * mib, trimAfterBurst, 0, 0}, {100 * mib, noTrim, 0, 0}, {100 * mib, noTrim, 0, 0}}},
		{"never while traffic flows", []step{{0, noTrim, 0, 0}, {100 * mib, noTrim, 0, 0}, {200 * mib, noTrim, 0, 0}, {300 * mib, noTrim, 0, 0}, {400 * mib, noTrim, 0, 0}}},
		{"a trickle is quiet", []step{{0, noTrim, 0, 0}, {50 * mib, noTrim, 0, 0}, {50*mib + 1000, noTrim, 0, 0}, {50*mib + 2000, noTrim, 0, 0}, {50*mib + 3000, trimAfterBurst, 0, 0}}},
		{"traffic restarts the quiet stretch", []step{{0, noTrim, 0, 0}, {50 * mib, noTrim, 0, 0}, {50 * mib, noTrim, 0, 0}, {60 * mib, noTrim, 0, 0}, {60 * mib, noTrim, 0, 0}, {60 * mib, noTrim, 0, 0}, {60 * mib, trimAfterBurst, 0, 0}}},
		{"small steady traffic is not a burst", []step{{0, noTrim, 0, 0}, {mib, noTrim, 0, 0}, {2 * mib, noTrim, 0, 0}, {2 * mib, noTrim, 0, 0}, {2 * mib, noTrim, 0, 0}, {2 * mib, noTrim, 0, 0}}},
		{"counter reset is not traffic", []step{{0, noTrim, 0, 0}, {50 * mib, noTrim, 0, 0}, {0, noTrim, 0, 0}, {0, noTrim, 0, 0}, {0, trimAfterBurst, 0, 0}}},
		{"allocation burst then quiet trims once", []step{{0, noTrim, 0, 0}, {0, noTrim, 40 * mib, 0}, {0, noTrim, 41 * mib, 0}, {0, noTrim, 42 * mib, 0}, {0, trimAfterBurst, 43 * mib, 0}, {0, noTrim, 44 * mib, 0}}},
		{"never while the heap churns", []step{{0, noTrim, 0, 0}, {0, noTrim, 40 * mib, 0}, {0, noTrim, 50 * mib, 0}, {0, noTrim, 60 * mib, 0}, {0, noTrim, 70 * mib, 0}}},
		{"free pages while quiet: trim, then not again within trimEvery", func() []step {
			st := []step{{0, noTrim, 0, 0}, {0, noTrim, 0, 9 * mib}, {0, trimReclaim, 0, 9 * mib}}
			for range trimEvery/trimInterval - 1 {
				st = append(st, step{0, noTrim, 0, 9 * mib})
			}
			return append(st, step{0, trimReclaim, 0, 9 * mib})
		}()},
		{"few free pages: no trim", []step{{0, noTrim, 0, 0}, {0, noTrim, 0, mib}, {0, noTrim, 0, mib}, {0, noTrim, 0, mib}, {0, noTrim, 0, mib}}},
		{"garbage growing while quiet: trim once past trimFree", []step{{0, noTrim, 0, 0}, {0, noTrim, 100 << 10, mib}, {0, noTrim, 200 << 10, 2 * mib}, {0, noTrim, 300 << 10, 3 * mib}, {0, trimReclaim, 400 << 10, 4 * mib}, {0, noTrim, 500 << 10, 0}}},
		{"free pages while busy: no trim", []step{{0, noTrim, 0, 0}, {mib, noTrim, 0, 9 * mib}, {2 * mib, noTrim, 0, 9 * mib}, {3 * mib, noTrim, 0, 9 * mib}}},
		{"data-plane burst, then allocations keep it busy", []step{{0, noTrim, 0, 0}, {50 * mib, noTrim, 0, 0}, {50 * mib, noTrim, 10 * mib, 0}, {50 * mib, noTrim, 20 * mib, 0}, {50 * mib, noTrim, 21 * mib, 0}, {50 * mib, noTrim, 22 * mib, 0}, {50 * mib, trimAfterBurst, 23 * mib, 0}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var tr trimmer
			now := time.Unix(1000, 0)
			for i, s := range tc.steps {
				if got := tr.observe(s.total, s.alloc, s.free, now); got != s.want {
					t.Fatalf("step %d (total %d): got trim kind %v, want %v", i, s.total, got, s.want)
				}
				now = now.Add(trimInterval)
			}
		})
	}
}
