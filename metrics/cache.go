// Package metrics exposes lifeboat's Prometheus metrics.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
)

// CacheStats is what the cache collector reads; *cache.Store provides it.
type CacheStats interface {
	// Usage reports the bytes of cached blobs and the size budget.
	Usage() (used, budget int64)
	// Evictions is the number of blobs evicted since the cache was opened.
	Evictions() int64
}

// cacheCollector reads the cache's figures at scrape time, so they are never stale and cost
// nothing between scrapes.
type cacheCollector struct {
	stats     CacheStats
	used      *prometheus.Desc
	budget    *prometheus.Desc
	evictions *prometheus.Desc
}

// NewCacheCollector returns a collector of the cache's size, budget and evictions.
func NewCacheCollector(stats CacheStats) prometheus.Collector {
	return &cacheCollector{
		stats:     stats,
		used:      prometheus.NewDesc("lifeboat_cache_bytes", "Bytes of blob content in the cache.", nil, nil),
		budget:    prometheus.NewDesc("lifeboat_cache_budget_bytes", "Size budget of the cache.", nil, nil),
		evictions: prometheus.NewDesc("lifeboat_cache_evicted_blobs_total", "Blobs removed by the evictor.", nil, nil),
	}
}

func (c *cacheCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.used
	ch <- c.budget
	ch <- c.evictions
}

func (c *cacheCollector) Collect(ch chan<- prometheus.Metric) {
	used, budget := c.stats.Usage()
	ch <- prometheus.MustNewConstMetric(c.used, prometheus.GaugeValue, float64(used))
	ch <- prometheus.MustNewConstMetric(c.budget, prometheus.GaugeValue, float64(budget))
	ch <- prometheus.MustNewConstMetric(c.evictions, prometheus.CounterValue, float64(c.stats.Evictions()))
}
