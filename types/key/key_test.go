package key

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParsePublic(t *testing.T) {
	var k Public
	for i := range k {
		k[i] = 0xab
	}
	tests := []struct {
		in      string
		want    Public
		wantErr bool
	}{
		{k.String(), k, false},
		{" " + k.String() + "\n", k, false},
		{"", Public{}, true},
		{"not base64!", Public{}, true},
		{"AAAA", Public{}, true},
		{strings.TrimSuffix(k.String(), "=") + "A", Public{}, true}, // not canonical
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParsePublic(tt.in)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Errorf("got %v, %v; want %v, error %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

// TestForms: every log line uses the short form, JSON the full one, and a
// private key never shows.
func TestForms(t *testing.T) {
	priv, err := NewPrivate()
	if err != nil {
		t.Fatal(err)
	}
	pub := priv.Public()
	if got := pub.Short(); len(got) != 8 || !strings.HasPrefix(pub.String(), got) {
		t.Errorf("Short() = %q, want the first 8 characters of %q", got, pub.String())
	}
	var b strings.Builder
	slog.New(slog.NewTextHandler(&b, nil)).Info("x", "peer", pub, "priv", priv)
	if !strings.Contains(b.String(), "peer="+pub.Short()+" ") {
		t.Errorf("log line %q: want peer=%s", b.String(), pub.Short())
	}
	if strings.Contains(b.String(), fmt.Sprintf("%x", priv[:4])) || !strings.Contains(b.String(), "(private key)") {
		t.Errorf("log line %q shows the private key", b.String())
	}
	j, err := json.Marshal(struct{ K Public }{pub})
	if err != nil || string(j) != `{"K":"`+pub.String()+`"}` {
		t.Errorf("JSON: got %s, %v", j, err)
	}
	var back struct{ K Public }
	if err := json.Unmarshal(j, &back); err != nil || back.K != pub {
		t.Errorf("JSON round trip: got %v, %v", back.K, err)
	}
	if fmt.Sprint(priv) != "(private key)" {
		t.Errorf("fmt of a private key: %v", priv)
	}
}

func TestLoadOrCreatePrivateFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "private.key")
	k1, err := LoadOrCreatePrivateFile(path)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := LoadOrCreatePrivateFile(path)
	if err != nil || k1 != k2 {
		t.Fatalf("second load: got a different key or %v", err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", st.Mode().Perm())
	}
	os.Chmod(path, 0o644)
	if _, err := LoadOrCreatePrivateFile(path); err == nil || !strings.Contains(err.Error(), "readable by others") {
		t.Errorf("world-readable key: got %v, want a refusal", err)
	}
	os.WriteFile(path, []byte("garbage"), 0o600)
	if _, err := LoadOrCreatePrivateFile(path); err == nil {
		t.Error("garbage key file: got nil error")
	}
}

// TestNamed: a peer logs as the group {name, key} in both formats, and
// without a name when none is known.
func TestNamed(t *testing.T) {
	priv, err := NewPrivate()
	if err != nil {
		t.Fatal(err)
	}
	pub := priv.Public()
	for _, tc := range []struct {
		name string
		n    Named
		text string
		json string
	}{
		{"named", Named{Name: "n2", Key: pub}, "peer.name=n2 peer.key=" + pub.Short(), `"peer":{"name":"n2","key":"` + pub.Short() + `"}`},
		{"unknown", Named{Key: pub}, "peer.key=" + pub.Short(), `"peer":{"key":"` + pub.Short() + `"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var text, js strings.Builder
			slog.New(slog.NewTextHandler(&text, nil)).Info("x", "peer", tc.n)
			slog.New(slog.NewJSONHandler(&js, nil)).Info("x", "peer", tc.n)
			if !strings.Contains(text.String(), " "+tc.text+"\n") {
				t.Errorf("text: got %q, want it to end in %q", text.String(), tc.text)
			}
			if !strings.Contains(js.String(), ","+tc.json+"}\n") {
				t.Errorf("JSON: got %q, want it to end in %q", js.String(), tc.json)
			}
		})
	}
}
