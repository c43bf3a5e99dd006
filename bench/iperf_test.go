//go:build bench

package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/edgewire/edgewire/e2e/lab"
)

const iperfPort = 5201

// flow is one iperf3 test shape.
type flow struct {
	name    string
	streams int
	udp     bool
}

var flows = []flow{
	{"TCP, 1 stream", 1, false},
	{"TCP, 4 streams", 4, false},
	{"UDP, unlimited rate, 1300 B datagrams", 1, true},
}

// iperfServer keeps an iperf3 server running on a host, restarting it if
// a failed client left it busy.
type iperfServer struct {
	host *lab.Host
	proc *lab.Process
	n    int
}

func startIperfServer(h *lab.Host) (*iperfServer, error) {
	s := &iperfServer{host: h}
	return s, s.restart()
}

func (s *iperfServer) restart() error {
	if s.proc != nil {
		s.proc.Stop(time.Second)
	}
	s.n++
	p, err := s.host.Start(fmt.Sprintf("iperf3-server-%d", s.n), nil, "iperf3", "-s", "-p", strconv.Itoa(iperfPort))
	if err != nil {
		return err
	}
	s.proc = p
	time.Sleep(300 * time.Millisecond)
	return nil
}

// iperf runs an iperf3 client on h against target and returns the
// receiver's rate in Gbit/s (for UDP: the rate that arrived, lost
// datagrams excluded).
func iperf(h *lab.Host, target string, f flow, d time.Duration) (float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d+30*time.Second)
	defer cancel()
	argv := []string{"iperf3", "-c", target, "-p", strconv.Itoa(iperfPort), "-t", strconv.Itoa(int(d.Seconds())),
		"-P", strconv.Itoa(f.streams), "-J", "--connect-timeout", "3000"}
	if f.udp {
		argv = append(argv, "-u", "-b", "0", "-l", "1300")
	}
	out, err := h.Exec(ctx, argv...)
	var res struct {
		End struct {
			SumReceived *struct {
				BPS float64 `json:"bits_per_second"`
			} `json:"sum_received"`
			Sum *struct {
				BPS  float64 `json:"bits_per_second"`
				Lost float64 `json:"lost_percent"`
			} `json:"sum"`
		} `json:"end"`
		Error string `json:"error"`
	}
	// With an error, out holds iperf3's JSON plus the runner's message.
	js := out
	if i := strings.LastIndex(js, "\n}"); i >= 0 {
		js = js[:i+2]
	}
	if jerr := json.Unmarshal([]byte(js), &res); jerr != nil {
		if err == nil {
			err = jerr
		}
		return 0, fmt.Errorf("iperf3 to %s: %w", target, err)
	}
	if res.Error != "" {
		return 0, fmt.Errorf("iperf3 to %s: %s", target, res.Error)
	}
	if !f.udp && res.End.SumReceived != nil && res.End.SumReceived.BPS == 0 {
		return 0, fmt.Errorf("iperf3 to %s: nothing received: %.2000s", target, out)
	}
	switch {
	case f.udp && res.End.Sum != nil:
		return res.End.Sum.BPS * (1 - res.End.Sum.Lost/100) / 1e9, nil
	case res.End.SumReceived != nil:
		return res.End.SumReceived.BPS / 1e9, nil
	}
	return 0, fmt.Errorf("iperf3 to %s: no result in output", target)
}

var rttLine = regexp.MustCompile(`time=([\d.]+) ms`)

// pingRTTs sends count pings at interval from h to addr and returns the
// RTTs in ms and the number lost.
func pingRTTs(h *lab.Host, addr string, count int, interval time.Duration) ([]float64, int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(count)*interval+20*time.Second)
	defer cancel()
	out, err := h.Exec(ctx, "ping", "-n", "-c", strconv.Itoa(count), "-i", strconv.FormatFloat(interval.Seconds(), 'f', 3, 64), "-W", "1", addr)
	var rtts []float64
	for _, m := range rttLine.FindAllStringSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(m[1], 64)
		rtts = append(rtts, v)
	}
	if len(rtts) == 0 {
		return nil, count, fmt.Errorf("ping %s: no replies: %v", addr, err)
	}
	return rtts, count - len(rtts), nil
}

func medianOf(xs []float64) float64 { return median(slices.Clone(xs)) }

// dpCounters are a host's kernel counters that show whether a flow through
// a WireGuard tunnel moved in batches (UDP GSO on the sender, GRO on the
// receiver) and where it lost packets.
type dpCounters struct {
	TCPOutSegs   float64 // TCP segments sent (TSO super-packets count their segments)
	UDPOut       float64 // UDP datagrams sent: a GSO send counts once
	UDPIn        float64 // UDP datagrams received: a GRO-coalesced one counts once
	UDPRcvbufErr float64 // UDP datagrams dropped for a full socket buffer
	TUNTxDropped float64 // packets the TUN dropped because WireGuard had not read them yet
}

// readCounters reads h's /proc/net/snmp and the TX drops of interface tun.
func readCounters(h *lab.Host, tun string) (dpCounters, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := h.Exec(ctx, "sh", "-c", "cat /proc/net/snmp /sys/class/net/"+tun+"/statistics/tx_dropped")
	if err != nil {
		return dpCounters{}, err
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	var c dpCounters
	if len(lines) == 0 {
		return c, fmt.Errorf("counters of %s: empty output", h.Name())
	}
	c.TUNTxDropped, _ = strconv.ParseFloat(strings.TrimSpace(lines[len(lines)-1]), 64)
	want := map[string]*float64{"Tcp.OutSegs": &c.TCPOutSegs, "Udp.OutDatagrams": &c.UDPOut,
		"Udp.InDatagrams": &c.UDPIn, "Udp.RcvbufErrors": &c.UDPRcvbufErr}
	for i := 0; i+1 < len(lines); i += 2 {
		names, vals := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(names) != len(vals) || len(names) == 0 || names[0] != vals[0] {
			continue
		}
		proto := strings.TrimSuffix(names[0], ":")
		for j := 1; j < len(names); j++ {
			if p := want[proto+"."+names[j]]; p != nil {
				*p, _ = strconv.ParseFloat(vals[j], 64)
			}
		}
	}
	return c, nil
}

func (c dpCounters) sub(d dpCounters) dpCounters {
	return dpCounters{c.TCPOutSegs - d.TCPOutSegs, c.UDPOut - d.UDPOut, c.UDPIn - d.UDPIn,
		c.UDPRcvbufErr - d.UDPRcvbufErr, c.TUNTxDropped - d.TUNTxDropped}
}

// flowCounters are the counter changes of one iperf3 run through a tunnel.
type flowCounters struct {
	Sender, Receiver dpCounters
	// SegsPerDatagram is the sender's TCP segments per UDP datagram sent:
	// about 1 without UDP GSO, up to 64 with it.
	SegsPerDatagram float64 `json:",omitempty"`
	// DatagramsArrived is the receiver's UDP datagrams per datagram the
	// sender sent: 1 when GSO datagrams reach the receiving socket whole
	// (through the NATs too), more when something on the way segments them.
	DatagramsArrived float64 `json:",omitempty"`
}

// measureFlow wraps run with counter snapshots on sender a (TUN tunA) and
// receiver b (TUN tunB). Counter errors are logged, never fatal.
func measureFlow(a, b *lab.Host, tunA, tunB string, run func()) (flowCounters, error) {
	a0, err := readCounters(a, tunA)
	if err != nil {
		return flowCounters{}, err
	}
	b0, err := readCounters(b, tunB)
	if err != nil {
		return flowCounters{}, err
	}
	run()
	a1, err := readCounters(a, tunA)
	if err != nil {
		return flowCounters{}, err
	}
	b1, err := readCounters(b, tunB)
	if err != nil {
		return flowCounters{}, err
	}
	fc := flowCounters{Sender: a1.sub(a0), Receiver: b1.sub(b0)}
	if fc.Sender.UDPOut > 0 {
		fc.SegsPerDatagram = fc.Sender.TCPOutSegs / fc.Sender.UDPOut
		fc.DatagramsArrived = fc.Receiver.UDPIn / fc.Sender.UDPOut
	}
	return fc, nil
}

// sumEach adds xs and ys element by element (as far as both go).
func sumEach(xs, ys []float64) []float64 {
	var s []float64
	for i := range min(len(xs), len(ys)) {
		s = append(s, xs[i]+ys[i])
	}
	return s
}

// counterNote summarises flow counters per flow and tunnel: segments per
// UDP datagram and datagrams arriving per datagram sent for TCP, sender
// TUN drops and receiver socket-buffer drops for UDP.
func counterNote(c map[string]map[string][]flowCounters) string {
	var parts []string
	for _, f := range flows {
		for _, target := range []string{"direct", "plain"} {
			runs := c[f.name][target]
			if len(runs) == 0 {
				continue
			}
			pick := func(get func(flowCounters) float64) float64 {
				var v []float64
				for _, r := range runs {
					v = append(v, get(r))
				}
				return medianOf(v)
			}
			if f.udp {
				parts = append(parts, fmt.Sprintf("%s %s: %.0f packets dropped at the sender's TUN, %.0f datagrams at the receiver's full socket buffers",
					f.name, target, pick(func(r flowCounters) float64 { return r.Sender.TUNTxDropped }),
					pick(func(r flowCounters) float64 { return r.Receiver.UDPRcvbufErr })))
				continue
			}
			parts = append(parts, fmt.Sprintf("%s %s: %.1f TCP segments per UDP datagram sent (UDP GSO), %.2f datagrams received per datagram sent",
				f.name, target, pick(func(r flowCounters) float64 { return r.SegsPerDatagram }),
				pick(func(r flowCounters) float64 { return r.DatagramsArrived })))
		}
	}
	return strings.Join(parts, "; ")
}
