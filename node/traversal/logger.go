package traversal

import (
	"fmt"
	"log/slog"

	"github.com/pion/logging"
)

// pionLogs adapts pion's leveled logging to slog. pion is chatty: its
// info goes to debug, its warnings too (a failed check is normal life
// behind NATs); only its errors are warnings here.
type pionLogs struct{ log *slog.Logger }

func (f pionLogs) NewLogger(scope string) logging.LeveledLogger {
	return pionLogger{f.log.With("src", "pion/"+scope)}
}

type pionLogger struct{ log *slog.Logger }

func (l pionLogger) Trace(string)                      {}
func (l pionLogger) Tracef(string, ...any)             {}
func (l pionLogger) Debug(msg string)                  { l.log.Debug(msg) }
func (l pionLogger) Debugf(format string, args ...any) { l.log.Debug(fmt.Sprintf(format, args...)) }
func (l pionLogger) Info(msg string)                   { l.log.Debug(msg) }
func (l pionLogger) Infof(format string, args ...any)  { l.log.Debug(fmt.Sprintf(format, args...)) }
func (l pionLogger) Warn(msg string)                   { l.log.Debug(msg) }
func (l pionLogger) Warnf(format string, args ...any)  { l.log.Debug(fmt.Sprintf(format, args...)) }
func (l pionLogger) Error(msg string)                  { l.log.Warn(msg) }
func (l pionLogger) Errorf(format string, args ...any) { l.log.Warn(fmt.Sprintf(format, args...)) }
