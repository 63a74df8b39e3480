// Package metric builds the constant Prometheus metrics that throng's
// collectors export at scrape time: the hot paths keep plain atomic counters,
// and each collector turns them into metrics only when scraped.
package metric

import "github.com/prometheus/client_golang/prometheus"

// Counter sends a counter of v.
func Counter(ch chan<- prometheus.Metric, d *prometheus.Desc, v uint64, labels ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
}

// Gauge sends a gauge of v.
func Gauge(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, labels ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}

// Bool is a gauge's value for b: 1 or 0.
func Bool(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
