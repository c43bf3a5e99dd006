package wgdev

import (
	"bytes"
	"encoding/hex"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.zx2c4.com/wireguard/conn/bindtest"
	"golang.zx2c4.com/wireguard/tun/tuntest"

	"github.com/edgewire/edgewire/types/key"
)

func hexKey(b byte) string { return hex.EncodeToString(bytes.Repeat([]byte{b}, 32)) }

func keyOf(b byte) key.Public { return key.Public(bytes.Repeat([]byte{b}, 32)) }

// uapiGet is a UAPI get response as wireguard-go writes it: the interface
// section, then one section per peer, each starting with public_key.
var uapiGet = "private_key=" + hexKey(0x11) + "\n" +
	"listen_port=51820\n" +
	"fwmark=0\n" +
	"public_key=" + hexKey(0xaa) + "\n" +
	"preshared_key=0000000000000000000000000000000000000000000000000000000000000000\n" +
	"protocol_version=1\n" +
	"endpoint=192.0.2.7:41641\n" +
	"last_handshake_time_sec=1777636800\n" +
	"last_handshake_time_nsec=123456789\n" +
	"tx_bytes=1234\n" +
	"rx_bytes=98765\n" +
	"persistent_keepalive_interval=25\n" +
	"allowed_ip=100.64.0.2/32\n" +
	"allowed_ip=10.244.2.0/24\n" +
	"public_key=" + hexKey(0xbb) + "\n" +
	"preshared_key=0000000000000000000000000000000000000000000000000000000000000000\n" +
	"protocol_version=1\n" +
	"last_handshake_time_sec=0\n" +
	"last_handshake_time_nsec=0\n" +
	"tx_bytes=0\n" +
	"rx_bytes=0\n" +
	"persistent_keepalive_interval=0\n" +
	"allowed_ip=100.64.0.3/32\n" +
	"errno=0\n" +
	"\n"

func TestParseStats(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want map[key.Public]PeerStats
	}{
		{
			name: "two peers, one never handshaken",
			in:   uapiGet,
			want: map[key.Public]PeerStats{
				keyOf(0xaa): {
					PublicKey:     keyOf(0xaa),
					Endpoint:      netip.MustParseAddrPort("192.0.2.7:41641"),
					LastHandshake: time.Unix(1777636800, 123456789),
					RxBytes:       98765,
					TxBytes:       1234,
				},
				keyOf(0xbb): {PublicKey: keyOf(0xbb)},
			},
		},
		{
			name: "interface only",
			in:   "private_key=" + hexKey(0x11) + "\nlisten_port=51820\n",
			want: map[key.Public]PeerStats{},
		},
		{
			name: "empty",
			in:   "",
			want: map[key.Public]PeerStats{},
		},
		{
			name: "IPv6 endpoint, handshake seconds only",
			in: "public_key=" + hexKey(0xcc) + "\nendpoint=[2001:db8::7]:51820\n" +
				"last_handshake_time_sec=1777636800\nlast_handshake_time_nsec=0\n",
			want: map[key.Public]PeerStats{
				keyOf(0xcc): {
					PublicKey:     keyOf(0xcc),
					Endpoint:      netip.MustParseAddrPort("[2001:db8::7]:51820"),
					LastHandshake: time.Unix(1777636800, 0),
				},
			},
		},
		{
			// A handshake value of one peer must not leak into the next.
			name: "handshake does not carry over",
			in: "public_key=" + hexKey(0xaa) + "\nlast_handshake_time_sec=5\nlast_handshake_time_nsec=6\n" +
				"public_key=" + hexKey(0xbb) + "\n",
			want: map[key.Public]PeerStats{
				keyOf(0xaa): {PublicKey: keyOf(0xaa), LastHandshake: time.Unix(5, 6)},
				keyOf(0xbb): {PublicKey: keyOf(0xbb)},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseStats(tt.in)
			if err != nil {
				t.Fatalf("ParseStats: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseStatsMalformed(t *testing.T) {
	peer := "public_key=" + hexKey(0xaa) + "\n"
	tests := []struct {
		name    string
		in      string
		wantErr string
	}{
		{"non-hex key", "public_key=" + strings.Repeat("zz", 32) + "\n", "public_key="},
		{"short key", "public_key=" + hexKey(0xaa)[:62] + "\n", "key length 31"},
		{"long key", "public_key=" + hexKey(0xaa) + "00\n", "key length 33"},
		{"bad endpoint", peer + "endpoint=192.0.2.7\n", `endpoint="192.0.2.7"`},
		{"non-numeric rx_bytes", peer + "rx_bytes=lots\n", `rx_bytes="lots"`},
		{"negative tx_bytes", peer + "tx_bytes=-1\n", `tx_bytes="-1"`},
		{"overflowing rx_bytes", peer + "rx_bytes=18446744073709551616\n", "rx_bytes="},
		{"bad handshake seconds", peer + "last_handshake_time_sec=1.5\n", "last_handshake_time_sec="},
		{"bad handshake nanoseconds", peer + "last_handshake_time_nsec=x\n", "last_handshake_time_nsec="},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseStats(tt.in)
			if err == nil {
				t.Fatalf("got %+v, want an error", got)
			}
			if got != nil {
				t.Errorf("got stats %+v with an error, want nil", got)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("got error %q, want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

func TestWritePeer(t *testing.T) {
	k := keyOf(0xaa)
	hexKey := strings.Repeat("aa", 32)
	tests := []struct {
		name string
		p    PeerConfig
		want string
	}{
		{"no endpoint: answers only, nothing routed, no keepalive",
			PeerConfig{PublicKey: k, AllowedIPs: []netip.Prefix{netip.MustParsePrefix("100.64.0.3/32")}, Keepalive: 25 * time.Second},
			"public_key=" + hexKey + "\nreplace_allowed_ips=true\npersistent_keepalive_interval=0\n"},
		{"endpoint: full config",
			PeerConfig{PublicKey: k, AllowedIPs: []netip.Prefix{netip.MustParsePrefix("100.64.0.3/32"), netip.MustParsePrefix("10.42.3.0/24")},
				Endpoint: netip.MustParseAddrPort("127.77.0.1:1"), Keepalive: 25 * time.Second},
			"public_key=" + hexKey + "\nreplace_allowed_ips=true\nallowed_ip=100.64.0.3/32\nallowed_ip=10.42.3.0/24\nendpoint=127.77.0.1:1\npersistent_keepalive_interval=25\n"},
	}
	for _, tt := range tests {
		var b strings.Builder
		writePeer(&b, tt.p)
		if b.String() != tt.want {
			t.Errorf("%s:\ngot  %q\nwant %q", tt.name, b.String(), tt.want)
		}
	}
}

// BenchmarkStats reads the stats of a device with 50 peers, as the
// agent's memory trimmer does every 2 s: what it allocates is garbage an
// idle agent holds until its next collection.
func BenchmarkStats(b *testing.B) {
	priv, err := key.NewPrivate()
	if err != nil {
		b.Fatal(err)
	}
	d, err := New(Config{Name: "stats-bench", MTU: 1420, PrivateKey: priv, Bind: bindtest.NewChannelBinds()[0], TUN: tuntest.NewChannelTUN().TUN()})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	var peers []PeerConfig
	for i := range 50 {
		p, err := key.NewPrivate()
		if err != nil {
			b.Fatal(err)
		}
		peers = append(peers, PeerConfig{PublicKey: p.Public(), AllowedIPs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{100, 64, 0, byte(i + 2)}), 32)},
			Endpoint: netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 2)}), 51820), Keepalive: 25 * time.Second})
	}
	if err := d.SetPeers(peers); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := d.Stats(); err != nil {
			b.Fatal(err)
		}
	}
}
