package logging

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
)

// TestGRPCLogger: gRPC's errors are error lines, its info and warnings
// debug lines (gRPC shows only errors by default), all marked src=grpc.
func TestGRPCLogger(t *testing.T) {
	for _, tc := range []struct {
		name  string
		level string
		log   func(grpcLogger)
		want  string // the line's msg and level; "" for no line
	}{
		{"error at info", "info", func(g grpcLogger) { g.Errorf("serve: %v", "boom") }, `"level":"ERROR","msg":"serve: boom","src":"grpc"`},
		{"errorln", "info", func(g grpcLogger) { g.Errorln("a", "b") }, `"msg":"a b"`},
		{"warning at info", "info", func(g grpcLogger) { g.Warning("closing") }, ""},
		{"info at info", "info", func(g grpcLogger) { g.Infof("state %d", 1) }, ""},
		{"warning at debug", "debug", func(g grpcLogger) { g.Warningf("closing %s", "x") }, `"level":"DEBUG","msg":"closing x"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b bytes.Buffer
			l, err := New(&b, tc.level, "json")
			if err != nil {
				t.Fatal(err)
			}
			tc.log(grpcLogger{l.With("src", "grpc")})
			switch {
			case tc.want == "" && b.Len() > 0:
				t.Errorf("got %q, want no line", b.String())
			case tc.want != "" && !strings.Contains(b.String(), tc.want):
				t.Errorf("got %q, want a line with %s", b.String(), tc.want)
			}
			if b.Len() > 0 {
				if err := CheckLine(bytes.TrimSpace(b.Bytes())); err != nil {
					t.Errorf("CheckLine: %v", err)
				}
			}
		})
	}
	l := slog.New(slog.DiscardHandler)
	if (grpcLogger{l}).V(2) {
		t.Error("V(2): got true, want gRPC's verbose logging off")
	}
}
