// Package logging builds the slog logger every edgewire binary uses from
// its --log-level and --log-format flags, and says what a good log line
// is: values a person can read and a machine can parse the same way in
// text and JSON (see docs/logging.md), checked by CheckLine.
//
// Our own types render themselves (slog.LogValuer: key.Public prints its
// short form, key.Named a peer's {name, key}); ReplaceAttr renders the
// standard library's types whose default JSON is unreadable.
package logging

import (
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"reflect"
	"strings"
)

// New returns a logger writing to w. level is debug, info, warn or error;
// format is text or json.
func New(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	h, err := NewHandler(w, format, l)
	if err != nil {
		return nil, err
	}
	return slog.New(h), nil
}

// NewHandler returns the handler New uses: format is text or json, and
// records below level are dropped.
func NewHandler(w io.Writer, format string, level slog.Leveler) (slog.Handler, error) {
	opts := &slog.HandlerOptions{Level: level, ReplaceAttr: ReplaceAttr}
	switch strings.ToLower(format) {
	case "text", "":
		return slog.NewTextHandler(w, opts), nil
	case "json":
		return slog.NewJSONHandler(w, opts), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

// ReplaceAttr renders values whose slog defaults differ between text and
// JSON or are unreadable in one of them:
//   - time.Duration: its String ("1.5s"); JSON would print nanoseconds.
//   - net.Addr (*net.UDPAddr, *net.TCPAddr, ...): its String ("1.2.3.4:5");
//     JSON would print a struct {"IP":...,"Port":...,"Zone":...}.
//   - []byte and byte arrays: lower-case hex; JSON would print base64 or
//     an array of numbers, text a quoted string or [1 2 3].
//
// netip.Addr, AddrPort and Prefix need nothing: they are text marshalers,
// which both handlers use. time.Time stays as the handlers print it,
// RFC 3339 in both.
func ReplaceAttr(_ []string, a slog.Attr) slog.Attr {
	switch a.Value.Kind() {
	case slog.KindDuration:
		a.Value = slog.StringValue(a.Value.Duration().String())
	case slog.KindAny:
		if v, ok := render(a.Value.Any()); ok {
			a.Value = v
		}
	}
	return a
}

func render(v any) (slog.Value, bool) {
	switch x := v.(type) {
	case nil:
		return slog.Value{}, false
	case net.Addr:
		if rv := reflect.ValueOf(x); rv.Kind() == reflect.Pointer && rv.IsNil() {
			return slog.StringValue(""), true
		}
		return slog.StringValue(x.String()), true
	case []byte:
		return slog.StringValue(hex.EncodeToString(x)), true
	}
	// Byte arrays ([32]byte and named kinds of it) that are not text
	// marshalers (key.Public is a LogValuer and never gets here).
	rv := reflect.ValueOf(v)
	if rv.Kind() == reflect.Array && rv.Type().Elem().Kind() == reflect.Uint8 {
		if _, ok := v.(interface{ MarshalText() ([]byte, error) }); ok {
			return slog.Value{}, false
		}
		b := make([]byte, rv.Len())
		reflect.Copy(reflect.ValueOf(b), rv)
		return slog.StringValue(hex.EncodeToString(b)), true
	}
	return slog.Value{}, false
}
