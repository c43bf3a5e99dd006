package logging

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/edgewire/edgewire/types/key"
)

// state is an enum as pion's and our own are: an int with a String.
type state int

const stateConnected state = 2

func (s state) String() string { return map[state]string{stateConnected: "connected"}[s] }

// localPort is a small struct with a String, as svcproxy.LocalPort.
type localPort struct {
	Port  int
	Proto string
}

func (p localPort) String() string { return fmt.Sprintf("%d/%s", p.Port, p.Proto) }

func testKey(t *testing.T) key.Public {
	t.Helper()
	k, err := key.ParsePublic("mO1e2Uu2Yc0wqDlvXNo1r2vGBZkZk6Q0x0T9CqJcN3E=")
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// TestRender: each kind of value prints the same readable form in text
// and JSON.
func TestRender(t *testing.T) {
	k := testKey(t)
	for _, tc := range []struct {
		name string
		v    any
		text string // the value as the text handler prints it
		json string // the value as JSON
	}{
		{"duration", 1500 * time.Millisecond, "1.5s", `"1.5s"`},
		{"zero duration", time.Duration(0), "0s", `"0s"`},
		{"netip.Addr", netip.MustParseAddr("100.64.0.7"), "100.64.0.7", `"100.64.0.7"`},
		{"netip.AddrPort", netip.MustParseAddrPort("[2001:db8::1]:51820"), "[2001:db8::1]:51820", `"[2001:db8::1]:51820"`},
		{"netip.Prefix", netip.MustParsePrefix("10.20.0.0/16"), "10.20.0.0/16", `"10.20.0.0/16"`},
		{"*net.UDPAddr", &net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 3478}, "192.0.2.1:3478", `"192.0.2.1:3478"`},
		{"*net.TCPAddr", &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 443}, "192.0.2.1:443", `"192.0.2.1:443"`},
		{"nil *net.UDPAddr", (*net.UDPAddr)(nil), "<nil>", `null`},
		{"[]byte", []byte{0xde, 0xad, 0xbe, 0xef}, "deadbeef", `"deadbeef"`},
		{"[4]byte", [4]byte{1, 2, 3, 255}, "010203ff", `"010203ff"`},
		{"key.Public", k, "mO1e2Uu2", `"mO1e2Uu2"`},
		{"key.Named", key.Named{Name: "db", Key: k}, "", `{"name":"db","key":"mO1e2Uu2"}`},
		{"time", time.Date(2026, 12, 6, 18, 0, 0, 500e6, time.UTC), "2026-12-06T18:00:00.500Z", `"2026-12-06T18:00:00.5Z"`},
		{"enum", stateConnected, "connected", `"connected"`},
		{"Stringer struct", localPort{53, "udp"}, "53/udp", `"53/udp"`},
		{"nil Stringer pointer", (*localPort)(nil), "<nil>", `null`},
		{"[]Stringer", []localPort{{53, "udp"}, {80, "tcp"}}, `"[53/udp 80/tcp]"`, `["53/udp","80/tcp"]`},
		{"[]key.Public", []key.Public{k, k}, `"[mO1e2Uu2 mO1e2Uu2]"`, `["mO1e2Uu2","mO1e2Uu2"]`},
		{"[]time.Duration", []time.Duration{time.Second, time.Millisecond}, `"[1s 1ms]"`, `["1s","1ms"]`},
		{"[]netip.Addr", []netip.Addr{netip.MustParseAddr("100.64.0.7")}, "[100.64.0.7]", `["100.64.0.7"]`},
		{"error", errors.New("boom"), "boom", `"boom"`},
		{"string", "plain", "plain", `"plain"`},
		{"int", 42, "42", `42`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var text, js bytes.Buffer
			lt, err := New(&text, "info", "text")
			if err != nil {
				t.Fatal(err)
			}
			lj, err := New(&js, "info", "json")
			if err != nil {
				t.Fatal(err)
			}
			lt.Info("m", "v", tc.v)
			lj.Info("m", "v", tc.v)
			if tc.text != "" && !strings.HasSuffix(text.String(), " v="+tc.text+"\n") {
				t.Errorf("text: got %q, want v=%s", text.String(), tc.text)
			}
			var line map[string]json.RawMessage
			if err := json.Unmarshal(js.Bytes(), &line); err != nil {
				t.Fatalf("JSON %q: %v", js.String(), err)
			}
			if got := string(line["v"]); got != tc.json {
				t.Errorf("JSON: got v=%s, want %s", got, tc.json)
			}
			if err := CheckLine(js.Bytes()); err != nil {
				t.Errorf("CheckLine(%s): %v", js.String(), err)
			}
		})
	}
}

// TestCheckLine: good lines pass and each rule catches what it is for.
func TestCheckLine(t *testing.T) {
	const head = `{"time":"2026-12-06T18:00:00.5Z","level":"INFO","msg":"m"`
	for _, tc := range []struct {
		name, line string
		want       string // a substring of the error; "" for a good line
	}{
		{"minimal", head + `}`, ""},
		{"good fields", head + `,"peer":{"name":"db","key":"mO1e2Uu2"},"key":"mO1e2Uu2","public_key":"mO1e2Uu2Yc0wqDlvXNo1r2vGBZkZk6Q0x0T9CqJcN3E=","took":"1.5s","unreachable_for":"2m0s","addr":"1.2.3.4:5","err":"x","n":3}`, ""},
		{"not JSON", `time=x level=INFO msg=m`, "not JSON"},
		{"two values", head + `}{}`, "more than one"},
		{"array", `[1]`, "not a JSON object"},
		{"no msg", `{"time":"2026-12-06T18:00:00Z","level":"INFO"}`, "msg: missing"},
		{"bad time", `{"time":"yesterday","level":"INFO","msg":"m"}`, "not RFC 3339"},
		{"duplicate key", head + `,"peer":"a","peer":"b"}`, `duplicate key "peer"`},
		{"duplicate in a group", head + `,"g":{"a":1,"a":2}}`, `duplicate key "g.a"`},
		{"duplicate msg", head + `,"msg":"again"}`, `duplicate key "msg"`},
		{"key as numbers", head + `,"key":[152,237,94,217,75,182,97,205,48,168,57,111,92,218,53,175,107,198,5,153,25,147,164,52,199,68,253,10,162,92,55,113]}`, "not a key's short form"},
		{"full key as key", head + `,"key":"mO1e2Uu2Yc0wqDlvXNo1r2vGBZkZk6Q0x0T9CqJcN3E="}`, "not a key's short form"},
		{"byte array", head + `,"digest":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16]}`, "byte array"},
		{"address object", head + `,"listen":{"IP":"::","Port":7443,"Zone":""}}`, "not a string"},
		{"struct in a list", head + `,"stun":[{"IP":"::","Port":3478}]}`, "not snake_case"},
		{"duration in ns", head + `,"took":1500000000}`, "not a string"},
		{"bad duration", head + `,"grace":"soon"}`, "does not parse"},
		{"peer by key only", head + `,"peer":"mO1e2Uu2"}`, "not a peer"},
		{"peer without name", head + `,"peer":{"key":"mO1e2Uu2"}}`, "peer without a name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckLine([]byte(tc.line))
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("got %v, want no error", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("got %v, want an error with %q", err, tc.want)
			}
		})
	}
}

// TestDefaultsFail: what slog prints without ReplaceAttr breaks the rules
// CheckLine checks, so CheckLine passing on our output means something.
func TestDefaultsFail(t *testing.T) {
	var b bytes.Buffer
	slog.New(slog.NewJSONHandler(&b, nil)).Info("m", "listen", &net.TCPAddr{Port: 7443}, "took", time.Second)
	if err := CheckLine(b.Bytes()); err == nil {
		t.Errorf("CheckLine(%s): got nil, want errors for listen and took", b.String())
	}
}
