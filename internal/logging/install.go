package logging

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"google.golang.org/grpc/grpclog"
)

// Install makes l the logger of the libraries that log on their own
// instead of through a logger we hand them: the standard library's log
// package (and with it net/http servers and slog.Default) and gRPC.
// Without it their lines come out as plain text in the middle of a JSON
// log. A binary calls it once, before it starts anything, with the
// logger from New; tests never do (it sets process-wide state).
func Install(l *slog.Logger) {
	slog.SetDefault(l)
	grpclog.SetLoggerV2(grpcLogger{l.With("src", "grpc")})
}

// grpcLogger is gRPC's logging on slog. gRPC logs only its errors unless
// told otherwise, so its info and warnings are debug lines here.
type grpcLogger struct{ l *slog.Logger }

var _ grpclog.LoggerV2 = grpcLogger{}

func (g grpcLogger) log(level slog.Level, msg func() string) {
	if ctx := context.Background(); g.l.Enabled(ctx, level) {
		g.l.Log(ctx, level, msg())
	}
}

func sprint(args []any) func() string { return func() string { return fmt.Sprint(args...) } }
func sprintln(args []any) func() string {
	return func() string { return strings.TrimSuffix(fmt.Sprintln(args...), "\n") }
}
func sprintf(format string, args []any) func() string {
	return func() string { return fmt.Sprintf(format, args...) }
}

func (g grpcLogger) Info(args ...any)                 { g.log(slog.LevelDebug, sprint(args)) }
func (g grpcLogger) Infoln(args ...any)               { g.log(slog.LevelDebug, sprintln(args)) }
func (g grpcLogger) Infof(format string, args ...any) { g.log(slog.LevelDebug, sprintf(format, args)) }
func (g grpcLogger) Warning(args ...any)              { g.log(slog.LevelDebug, sprint(args)) }
func (g grpcLogger) Warningln(args ...any)            { g.log(slog.LevelDebug, sprintln(args)) }
func (g grpcLogger) Warningf(format string, args ...any) {
	g.log(slog.LevelDebug, sprintf(format, args))
}
func (g grpcLogger) Error(args ...any)                 { g.log(slog.LevelError, sprint(args)) }
func (g grpcLogger) Errorln(args ...any)               { g.log(slog.LevelError, sprintln(args)) }
func (g grpcLogger) Errorf(format string, args ...any) { g.log(slog.LevelError, sprintf(format, args)) }

// Fatal and its kin log and exit, as gRPC's contract says.
func (g grpcLogger) Fatal(args ...any) { g.log(slog.LevelError, sprint(args)); os.Exit(1) }
func (g grpcLogger) Fatalln(args ...any) {
	g.log(slog.LevelError, sprintln(args))
	os.Exit(1)
}
func (g grpcLogger) Fatalf(format string, args ...any) {
	g.log(slog.LevelError, sprintf(format, args))
	os.Exit(1)
}

// V reports whether gRPC's verbose logging (V(2) and up) is on: never;
// level 0 follows debug.
func (g grpcLogger) V(l int) bool {
	return l <= 0 && g.l.Enabled(context.Background(), slog.LevelDebug)
}
