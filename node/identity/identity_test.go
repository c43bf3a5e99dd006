package identity

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/edgewire/edgewire/types/key"
)

func TestTicketFile(t *testing.T) {
	dir := t.TempDir()
	now := time.Unix(1_800_000_000, 0)
	if _, _, ok := LoadTicket(dir, now); ok {
		t.Fatal("LoadTicket without a file: ok, want none")
	}
	tk := []byte("ticket\nbytes\x00with anything")
	if err := SaveTicket(dir, tk, now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(filepath.Join(dir, ticketFile)); st.Mode().Perm() != 0o600 {
		t.Errorf("ticket file mode %v, want 0600", st.Mode().Perm())
	}
	got, exp, ok := LoadTicket(dir, now)
	if !ok || !bytes.Equal(got, tk) || !exp.Equal(now.Add(time.Hour)) {
		t.Errorf("LoadTicket: got %q, %v, %v; want the ticket, %v, true", got, exp, ok, now.Add(time.Hour))
	}
	if _, _, ok := LoadTicket(dir, now.Add(time.Hour)); ok {
		t.Error("LoadTicket at its expiry: ok, want expired")
	}
	for name, content := range map[string]string{
		"empty":        "",
		"short":        "123",
		"no newline":   "1800000000          Xticket",
		"not a number": "soon                \nticket",
		"no ticket":    "1900000000          \n",
	} {
		os.WriteFile(filepath.Join(dir, ticketFile), []byte(content), 0o600)
		if _, _, ok := LoadTicket(dir, now); ok {
			t.Errorf("%s: LoadTicket ok, want refused", name)
		}
	}
}

func TestEnrolment(t *testing.T) {
	dir := t.TempDir()
	if _, err := LoadEnrolment(dir); err != ErrNotEnrolled {
		t.Fatalf("LoadEnrolment of an empty dir: %v, want ErrNotEnrolled", err)
	}
	// Advertised: nil (not known, an older enrolment), none, some.
	for _, adv := range [][]string{nil, {}, {"10.42.3.0/24"}} {
		e := Enrolment{Coordinator: "c:8443", ServerName: "edgewire-coordinator", CAPEM: "pem", Name: "n1", Advertised: adv}
		if err := SaveEnrolment(dir, e); err != nil {
			t.Fatal(err)
		}
		got, err := LoadEnrolment(dir)
		e.Version = enrolmentV1
		if err != nil || !reflect.DeepEqual(got, e) {
			t.Errorf("round trip: got %+v, %v; want %+v", got, err, e)
		}
	}
	os.WriteFile(filepath.Join(dir, enrolmentFile), []byte(`{"v":2,"coordinator":"c","ca_pem":"p"}`), 0o600)
	if _, err := LoadEnrolment(dir); err == nil {
		t.Error("a newer enrolment version: got nil error")
	}
}

func TestLastDirectFile(t *testing.T) {
	dir := t.TempDir()
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	kA, kB, kC := key.Public{1}, key.Public{2}, key.Public{3}
	eps := map[key.Public]LastDirect{
		kA: {netip.MustParseAddrPort("203.0.113.7:51820"), now.Add(-time.Minute)},
		kB: {netip.MustParseAddrPort("[2001:db8::7]:4000"), now.Add(-2 * time.Hour)},
		kC: {netip.MustParseAddrPort("198.51.100.1:1"), now.Add(-49 * time.Hour)}, // too old
	}
	if got, err := LoadLastDirect(dir, now, 48*time.Hour); err != nil || len(got) != 0 {
		t.Fatalf("no file: got %v, %v; want nothing and no error", got, err)
	}
	if err := SaveLastDirect(dir, eps); err != nil {
		t.Fatal(err)
	}
	got, err := LoadLastDirect(dir, now, 48*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[kA].Endpoint != eps[kA].Endpoint || !got[kA].At.Equal(eps[kA].At) || got[kB].Endpoint != eps[kB].Endpoint {
		t.Errorf("got %v", got)
	}
	// A damaged file is an error and no entries, never a panic.
	for _, bad := range []string{"{", `{"v":2,"peers":{}}`, `{"v":1,"peers":{"nokey":{"endpoint":"1.2.3.4:5","at":"2026-12-06T11:00:00Z"}}}`} {
		if err := os.WriteFile(filepath.Join(dir, lastDirectFile), []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := LoadLastDirect(dir, now, 48*time.Hour)
		if len(got) != 0 {
			t.Errorf("%q: got %v", bad, got)
		}
		if bad != `{"v":1,"peers":{"nokey":{"endpoint":"1.2.3.4:5","at":"2026-12-06T11:00:00Z"}}}` && err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}
