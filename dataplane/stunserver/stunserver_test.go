package stunserver

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/pion/stun/v4"
)

func TestServerAnswersBindingRequests(t *testing.T) {
	s, err := Listen("127.0.0.1:0", nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	defer func() {
		s.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	req := stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint)
	if _, err := c.WriteTo(req.Raw, s.Addr()); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 1500)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	resp := &stun.Message{Raw: buf[:n]}
	if err := resp.Decode(); err != nil {
		t.Fatal(err)
	}
	if resp.Type != stun.BindingSuccess || resp.TransactionID != req.TransactionID {
		t.Fatalf("got %v txid %x, want binding success for %x", resp.Type, resp.TransactionID, req.TransactionID)
	}
	var xor stun.XORMappedAddress
	if err := xor.GetFrom(resp); err != nil {
		t.Fatal(err)
	}
	if got, want := (&net.UDPAddr{IP: xor.IP, Port: xor.Port}).String(), c.LocalAddr().String(); got != want {
		t.Errorf("mapped address: got %s, want %s", got, want)
	}
	if s.C.Requests.Load() != 1 {
		t.Errorf("requests: got %d, want 1", s.C.Requests.Load())
	}
}

func TestAnswerRejects(t *testing.T) {
	src := netip.MustParseAddrPort("192.0.2.1:1234")
	resp := stun.MustBuild(stun.TransactionID, stun.BindingSuccess)
	for name, b := range map[string][]byte{
		"empty":     nil,
		"junk":      []byte("definitely not stun at all"),
		"response":  resp.Raw,
		"truncated": stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint).Raw[:22],
	} {
		if _, ok := Answer(b, src, new(stun.Message)); ok {
			t.Errorf("%s: answered, want dropped", name)
		}
	}
}

func FuzzAnswer(f *testing.F) {
	f.Add(stun.MustBuild(stun.TransactionID, stun.BindingRequest, stun.Fingerprint).Raw)
	f.Add([]byte{0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42})
	src := netip.MustParseAddrPort("[2001:db8::1]:5")
	f.Fuzz(func(t *testing.T, b []byte) {
		out := new(stun.Message)
		if raw, ok := Answer(b, src, out); ok {
			m := &stun.Message{Raw: raw}
			if err := m.Decode(); err != nil || m.Type != stun.BindingSuccess {
				t.Fatalf("answer does not decode as binding success: %v", err)
			}
		}
	})
}

func TestAltListen(t *testing.T) {
	for _, tc := range []struct {
		main, alt, want, wantErr string
	}{
		{":3478", AltAuto, ":3479", ""},
		{"192.0.2.1:3478", AltAuto, "192.0.2.1:3479", ""},
		{"[2001:db8::1]:3478", AltAuto, "[2001:db8::1]:3479", ""},
		{"127.0.0.1:0", AltAuto, "127.0.0.1:0", ""},
		{":3478", "", "", ""},
		{"", AltAuto, "", ""},
		{":3478", ":5000", ":5000", ""},
		{":3478", ":3478", "", "same address"},
		{":65535", AltAuto, "", "no port above it"},
		{":stun", AltAuto, "", "not a number"},
		{"3478", AltAuto, "", "--stun-listen"},
	} {
		got, err := AltListen(tc.main, tc.alt)
		switch {
		case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
			t.Errorf("AltListen(%q, %q): got error %v, want one containing %q", tc.main, tc.alt, err, tc.wantErr)
		case tc.wantErr == "" && (err != nil || got != tc.want):
			t.Errorf("AltListen(%q, %q): got %q, %v; want %q", tc.main, tc.alt, got, err, tc.want)
		}
	}
}
