// Package telemetry serves a daemon's Prometheus metrics (from its own
// registry, never the global one) and its /healthz and /readyz probes on
// one HTTP listener, off the public interface by default.
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/edgewire/edgewire/internal/buildinfo"
	"github.com/edgewire/edgewire/internal/httpserve"
)

// Ready reports whether the daemon is ready to serve; nil error is ready.
// A *Degraded error is ready too: /readyz answers 200 and says why it is
// degraded.
type Ready func() error

// Degraded describes a daemon that serves, but not all of its job.
type Degraded struct{ Reason string }

func (d *Degraded) Error() string { return "degraded: " + d.Reason }

// NewRegistry returns a registry with the Go and process collectors.
func NewRegistry() *prometheus.Registry {
	r := prometheus.NewRegistry()
	r.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	bi := buildinfo.Get()
	info := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "edgewire_build_info",
		Help: "The running build: always 1, with the version, VCS revision and Go version as labels.",
		ConstLabels: prometheus.Labels{"version": bi.Version, "revision": bi.Revision,
			"modified": strconv.FormatBool(bi.Modified), "goversion": bi.GoVersion},
	})
	info.Set(1)
	r.MustRegister(info)
	return r
}

// Option adds to what Serve serves.
type Option func(*http.ServeMux)

// Handle serves h on pattern (http.ServeMux syntax) beside the metrics
// and probes: a daemon's own read-only pages, such as the coordinator's
// /topology. pattern must not be one of Serve's own paths.
func Handle(pattern string, h http.Handler) Option {
	return func(mux *http.ServeMux) { mux.Handle(pattern, h) }
}

// Serve serves /metrics, /healthz and /readyz, and what opts add, on addr
// until ctx ends. An empty addr serves nothing.
func Serve(ctx context.Context, addr string, reg prometheus.Gatherer, ready Ready, log *slog.Logger, opts ...Option) error {
	if addr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	for _, o := range opts {
		o(mux)
	}
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if ready != nil {
			var d *Degraded
			if err := ready(); errors.As(err, &d) {
				fmt.Fprintln(w, "ok ("+d.Error()+")")
				return
			} else if err != nil {
				http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		fmt.Fprintln(w, "ok")
	})
	log.Info("metrics listening", "addr", ln.Addr())
	return httpserve.Serve(ctx, ln, mux)
}

// ReadyGauge registers a gauge that is 1 while ready reports the daemon
// ready (nil or a *Degraded error, as /readyz answers 200) and 0 otherwise,
// so alerts can see readiness without probing /readyz. A nil ready is
// always ready.
func ReadyGauge(reg prometheus.Registerer, name, help string, ready Ready) {
	GaugeFunc(reg, name, help, func() float64 {
		if ready == nil {
			return 1
		}
		var d *Degraded
		if err := ready(); err == nil || errors.As(err, &d) {
			return 1
		}
		return 0
	})
}

// CounterFunc registers a counter whose value is read from f at scrape.
func CounterFunc(reg prometheus.Registerer, name, help string, f func() float64) {
	reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f))
}

// GaugeFunc registers a gauge whose value is read from f at scrape.
func GaugeFunc(reg prometheus.Registerer, name, help string, f func() float64) {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
}

// Labelled registers a metric with labels whose samples are produced at
// scrape time by f, which calls emit once per label combination.
func Labelled(reg prometheus.Registerer, name, help string, typ prometheus.ValueType, labels []string, f func(emit func(value float64, labelValues ...string))) {
	reg.MustRegister(&collector{desc: prometheus.NewDesc(name, help, labels, nil), typ: typ, f: f})
}

type collector struct {
	desc *prometheus.Desc
	typ  prometheus.ValueType
	f    func(emit func(value float64, labelValues ...string))
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	c.f(func(v float64, lv ...string) {
		ch <- prometheus.MustNewConstMetric(c.desc, c.typ, v, lv...)
	})
}

// Collector is a collector of several metric families whose
// samples one function produces at scrape time (families that come from
// one expensive computation, done once per scrape).
func Collector(descs []*prometheus.Desc, collect func(ch chan<- prometheus.Metric)) prometheus.Collector {
	return &multiCollector{descs: descs, collect: collect}
}

type multiCollector struct {
	descs   []*prometheus.Desc
	collect func(ch chan<- prometheus.Metric)
}

func (c *multiCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

func (c *multiCollector) Collect(ch chan<- prometheus.Metric) { c.collect(ch) }
