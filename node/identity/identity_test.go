package identity

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"time"
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
	e := Enrolment{Coordinator: "c:8443", ServerName: "edgewire-coordinator", CAPEM: "pem", Name: "n1"}
	if err := SaveEnrolment(dir, e); err != nil {
		t.Fatal(err)
	}
	got, err := LoadEnrolment(dir)
	e.Version = enrolmentV1
	if err != nil || got != e {
		t.Errorf("round trip: got %+v, %v; want %+v", got, err, e)
	}
	os.WriteFile(filepath.Join(dir, enrolmentFile), []byte(`{"v":2,"coordinator":"c","ca_pem":"p"}`), 0o600)
	if _, err := LoadEnrolment(dir); err == nil {
		t.Error("a newer enrolment version: got nil error")
	}
}
