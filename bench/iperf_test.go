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
