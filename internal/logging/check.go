package logging

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
)

// CheckLine reports what is wrong with one line of a JSON log by the
// rules of docs/logging.md; nil if nothing. Tests run it over every line
// that in-process agents and coordinators write (logtest) and over the
// logs of lab runs (e2e).
//
//   - The line is one JSON object with no key twice at any level (a
//     logger's With and a call naming the same key; encoding/json would
//     keep the last one silently).
//   - time (RFC 3339), level and msg are strings.
//   - Keys are snake_case: an upper-case key is a Go struct logged as is
//     (a *net.UDPAddr prints {"IP":...,"Port":...}).
//   - No array of 16 or more numbers: a byte array logged as is.
//   - By name: key is a node key's short form, *_key a key's short or
//     full base64; peer is {name, key}; durations (duration, took, in,
//     rtt, *_for, ...) are strings such as "1.5s"; addresses (addr,
//     listen, remote, endpoint, *_addr) are strings.
func CheckLine(line []byte) error {
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.UseNumber()
	v, err := decode(dec, "")
	if err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("more than one JSON value on the line")
	}
	obj, ok := v.(map[string]any)
	if !ok {
		return errors.New("not a JSON object")
	}
	var errs []error
	for _, k := range []string{"time", "level", "msg"} {
		if s, ok := obj[k].(string); !ok {
			errs = append(errs, fmt.Errorf("%s: missing or not a string", k))
		} else if k == "time" {
			if _, err := time.Parse(time.RFC3339Nano, s); err != nil {
				errs = append(errs, fmt.Errorf("time %q: not RFC 3339", s))
			}
		}
	}
	for k, v := range obj {
		if k == "time" || k == "level" || k == "msg" {
			continue
		}
		errs = append(errs, checkField(k, k, v)...)
	}
	return errors.Join(errs...)
}

// decode reads one JSON value from dec into maps, slices, strings,
// json.Numbers, bools and nils, failing on a key repeated in an object.
// path names the value in errors.
func decode(dec *json.Decoder, path string) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, fmt.Errorf("not JSON: %w", err)
	}
	d, ok := tok.(json.Delim)
	if !ok {
		return tok, nil
	}
	switch d {
	case '{':
		obj := map[string]any{}
		for dec.More() {
			kt, err := dec.Token()
			if err != nil {
				return nil, fmt.Errorf("not JSON: %w", err)
			}
			k := kt.(string) // the decoder only yields strings as object keys
			sub := join(path, k)
			if _, dup := obj[k]; dup {
				return nil, fmt.Errorf("duplicate key %q", sub)
			}
			v, err := decode(dec, sub)
			if err != nil {
				return nil, err
			}
			obj[k] = v
		}
		_, err := dec.Token() // '}'
		return obj, err
	case '[':
		var arr []any
		for i := 0; dec.More(); i++ {
			v, err := decode(dec, fmt.Sprintf("%s[%d]", path, i))
			if err != nil {
				return nil, err
			}
			arr = append(arr, v)
		}
		_, err := dec.Token() // ']'
		return arr, err
	}
	return nil, fmt.Errorf("not JSON: unexpected %v", d)
}

func join(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

// durationNames and durationSuffixes name fields that hold a duration.
var (
	durationNames    = map[string]bool{"duration": true, "took": true, "waited": true, "in": true, "rtt": true, "latency": true, "grace": true, "max_age": true, "timeout": true, "interval": true, "backoff": true, "age": true}
	durationSuffixes = []string{"_duration", "_for", "_rtt", "_latency", "_timeout", "_interval", "_age"}
	addrNames        = map[string]bool{"addr": true, "listen": true, "remote": true, "endpoint": true}
)

func isDuration(name string) bool {
	if durationNames[name] {
		return true
	}
	for _, s := range durationSuffixes {
		if strings.HasSuffix(name, s) {
			return true
		}
	}
	return false
}

// checkField checks the value v of the field called name at path.
func checkField(path, name string, v any) []error {
	bad := func(format string, args ...any) []error {
		return []error{fmt.Errorf("%s: "+format, append([]any{path}, args...)...)}
	}
	if !snakeCase(name) {
		return bad("key %q is not snake_case (a Go struct logged as is?)", name)
	}
	switch {
	case name == "key":
		if s, ok := v.(string); !ok || !shortKey(s) {
			return bad("%s is not a key's short form (8 base64 characters)", show(v))
		}
	case strings.HasSuffix(name, "_key"):
		if s, ok := v.(string); !ok || !(shortKey(s) || fullKey(s)) {
			return bad("%s is not a key in base64", show(v))
		}
	case name == "peer":
		obj, ok := v.(map[string]any)
		if !ok {
			return bad("%s is not a peer {name, key}", show(v))
		}
		if s, ok := obj["name"].(string); !ok || s == "" {
			return bad("peer without a name")
		}
		if _, ok := obj["key"]; !ok {
			return bad("peer without a key")
		}
	case isDuration(name):
		s, ok := v.(string)
		if !ok {
			return bad("duration %s is not a string like \"1.5s\"", show(v))
		}
		if _, err := time.ParseDuration(s); err != nil {
			return bad("duration %q does not parse", s)
		}
	case addrNames[name] || strings.HasSuffix(name, "_addr"):
		if _, ok := v.(string); !ok {
			return bad("address %s is not a string", show(v))
		}
	}
	switch x := v.(type) {
	case map[string]any:
		var errs []error
		for k, sub := range x {
			errs = append(errs, checkField(join(path, k), k, sub)...)
		}
		return errs
	case []any:
		if len(x) >= 16 && allNumbers(x) {
			return bad("an array of %d numbers (a byte array logged as is?)", len(x))
		}
		var errs []error
		for i, sub := range x {
			if m, ok := sub.(map[string]any); ok {
				for k, sub := range m {
					errs = append(errs, checkField(fmt.Sprintf("%s[%d].%s", path, i, k), k, sub)...)
				}
			}
		}
		return errs
	}
	return nil
}

func snakeCase(s string) bool {
	if s == "" || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

func allNumbers(a []any) bool {
	for _, v := range a {
		if _, ok := v.(json.Number); !ok {
			return false
		}
	}
	return true
}

// shortKey reports whether s is key.Public's Short form: 8 characters of
// standard base64.
func shortKey(s string) bool {
	if len(s) != 8 {
		return false
	}
	_, err := base64.StdEncoding.DecodeString(s) // 8 characters: 6 whole bytes, no padding
	return err == nil
}

func fullKey(s string) bool {
	b, err := base64.StdEncoding.Strict().DecodeString(s)
	return err == nil && len(b) == 32
}

func show(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	if len(b) > 80 {
		return string(b[:77]) + "..."
	}
	return string(b)
}
