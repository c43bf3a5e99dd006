// Package logging builds the slog logger every edgewire binary uses from
// its --log-level and --log-format flags, and says what a good log line
// is: values a person can read and a machine can parse the same way in
// text and JSON (see docs/logging.md), checked by CheckLine.
//
// Our own types render themselves (slog.LogValuer: key.Public prints its
// short form, key.Named a peer's {name, key}); ReplaceAttr renders the
// standard library's types whose default JSON is unreadable; Install
// routes the libraries that log on their own (net/http, gRPC) through
// the daemon's logger. logtest checks every line in-process tests log.
package logging

import (
	"encoding"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"reflect"
	"strings"
	"time"
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
//   - Any other fmt.Stringer that is not a text or JSON marshaler (enums,
//     small structs): its String, which text prints already; JSON would
//     print the number or the struct's fields.
//   - Slices and arrays of the above, and of LogValuers (a []key.Public):
//     a list of the elements' forms; JSON would print full keys, structs.
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
			a.Value = slog.AnyValue(v)
		}
	}
	return a
}

// render returns the form of v that ReplaceAttr logs, and false to leave
// v to the handler.
func render(v any) (any, bool) {
	if v == nil {
		return nil, false
	}
	rv := reflect.ValueOf(v)
	if rv.Kind() == reflect.Pointer && rv.IsNil() {
		return nil, false // null in JSON, <nil> in text; String could panic
	}
	switch x := v.(type) {
	case net.Addr:
		return x.String(), true
	case []byte:
		return hex.EncodeToString(x), true
	case time.Duration: // an element of a list; top level is KindDuration
		return x.String(), true
	case slog.LogValuer: // an element of a list; top level is resolved
		if lv := x.LogValue().Resolve(); lv.Kind() != slog.KindGroup {
			return lv.Any(), true
		}
		return nil, false
	case encoding.TextMarshaler, json.Marshaler, error:
		return nil, false
	case fmt.Stringer:
		return x.String(), true
	}
	switch rv.Kind() {
	case reflect.Array:
		if rv.Type().Elem().Kind() == reflect.Uint8 {
			b := make([]byte, rv.Len())
			reflect.Copy(reflect.ValueOf(b), rv)
			return hex.EncodeToString(b), true
		}
		return renderList(rv)
	case reflect.Slice:
		return renderList(rv)
	}
	return nil, false
}

// renderList renders a slice or array whose elements render; false
// leaves it (and elements that do not render) to the handler.
func renderList(rv reflect.Value) (any, bool) {
	if rv.Len() == 0 {
		return nil, false
	}
	out := make([]any, rv.Len())
	for i := range rv.Len() {
		e := rv.Index(i).Interface()
		r, ok := render(e)
		if !ok {
			return nil, false
		}
		out[i] = r
	}
	return out, true
}
