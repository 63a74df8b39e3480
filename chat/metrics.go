package chat

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/throng-ws/throng/internal/metric"

	"github.com/throng-ws/throng/internal/buildinfo"
	"github.com/throng-ws/throng/room"
	"github.com/throng-ws/throng/server"
)

// Collector returns a Prometheus collector for the endpoint's counters and its
// room table's, read at scrape time like the transport's (server.Collector).
// The names are listed in docs/OPERATIONS.md; keep both in step.
func (h *Handler) Collector() prometheus.Collector {
	d := func(name, help string) *prometheus.Desc { return prometheus.NewDesc("throng_"+name, help, nil, nil) }
	return &collector{
		h:           h,
		rateLimited: d("chat_rate_limited_messages_total", "Chat messages refused by the per-connection rate limit, bans included."),
		bans:        d("chat_bans_total", "Rate-limit bans started."),
		rooms:       d("rooms", "Chat rooms with at least one member."),
		members:     d("room_members", "Chat room memberships (a connection in two rooms counts twice)."),
		fanSize:     d("broadcast_recipients", "Members each room broadcast went to."),
		fanTime:     d("broadcast_duration_seconds", "Time from a room broadcast until the last event loop had written it to its members."),
		recoveries:  prometheus.NewDesc("throng_history_recoveries_total", "Joins that asked to recover (since), by result: recovered (every missed message sent) or not.", []string{"result"}, nil),
		replayed:    d("history_replayed_messages_total", "Messages sent from history before a joined (recovered or recent)."),
		pages:       d("history_pages_total", "History requests answered."),
		liveOnly:    d("history_live_only_messages_total", "Messages delivered without the cluster's history (JetStream unreachable or its queue full): no offset, not recoverable."),
		hRooms:      d("history_rooms", "Rooms with a history log on this node."),
		hMessages:   d("history_messages", "Messages kept in the rooms' history on this node."),
		hBytes:      d("history_bytes", "Bytes of the rooms' history on this node: payloads plus a fixed overhead per message."),
		hLimit:      d("history_memory_limit_bytes", "The history's memory budget (--history-memory)."),
		hEvicted:    prometheus.NewDesc("throng_history_evictions_total", "Messages dropped from history, by reason: size (--history-size), ttl (--history-ttl) or memory (--history-memory).", []string{"reason"}, nil),
		hForgot:     d("history_rooms_forgotten_total", "Room logs forgotten (no message, no member, idle for the TTL); such a room starts a new epoch."),
	}
}

type collector struct {
	h                                 *Handler
	rateLimited, bans, rooms, members *prometheus.Desc
	fanSize, fanTime                  *prometheus.Desc
	recoveries, replayed, pages       *prometheus.Desc
	liveOnly                          *prometheus.Desc
	hRooms, hMessages, hBytes, hLimit *prometheus.Desc
	hEvicted, hForgot                 *prometheus.Desc
}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.rateLimited
	ch <- c.bans
	ch <- c.recoveries
	ch <- c.replayed
	ch <- c.pages
	ch <- c.liveOnly
	if c.h.History != nil {
		ch <- c.hRooms
		ch <- c.hMessages
		ch <- c.hBytes
		ch <- c.hLimit
		ch <- c.hEvicted
		ch <- c.hForgot
	}
	if c.h.Rooms != nil {
		ch <- c.rooms
		ch <- c.members
		ch <- c.fanSize
		ch <- c.fanTime
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	st := c.h.Stats()
	metric.Counter(ch, c.rateLimited, st.RateLimited)
	metric.Counter(ch, c.bans, st.Bans)
	ch <- prometheus.MustNewConstMetric(c.recoveries, prometheus.CounterValue, float64(st.Recovered), "recovered")
	ch <- prometheus.MustNewConstMetric(c.recoveries, prometheus.CounterValue, float64(st.Unrecovered), "not_recovered")
	ch <- prometheus.MustNewConstMetric(c.replayed, prometheus.CounterValue, float64(st.Replayed))
	ch <- prometheus.MustNewConstMetric(c.pages, prometheus.CounterValue, float64(st.HistoryPages))
	ch <- prometheus.MustNewConstMetric(c.liveOnly, prometheus.CounterValue, float64(st.LiveOnly))
	if hs := c.h.History; hs != nil {
		hst := hs.Stats()
		ch <- prometheus.MustNewConstMetric(c.hRooms, prometheus.GaugeValue, float64(hst.Rooms))
		ch <- prometheus.MustNewConstMetric(c.hMessages, prometheus.GaugeValue, float64(hst.Messages))
		ch <- prometheus.MustNewConstMetric(c.hBytes, prometheus.GaugeValue, float64(hst.Bytes))
		ch <- prometheus.MustNewConstMetric(c.hLimit, prometheus.GaugeValue, float64(hst.Limit))
		ch <- prometheus.MustNewConstMetric(c.hEvicted, prometheus.CounterValue, float64(hst.EvictedSize), "size")
		ch <- prometheus.MustNewConstMetric(c.hEvicted, prometheus.CounterValue, float64(hst.EvictedTTL), "ttl")
		ch <- prometheus.MustNewConstMetric(c.hEvicted, prometheus.CounterValue, float64(hst.EvictedMemory), "memory")
		ch <- prometheus.MustNewConstMetric(c.hForgot, prometheus.CounterValue, float64(hst.Forgot))
	}
	if t := c.h.Rooms; t != nil {
		rs := t.Stats()
		metric.Gauge(ch, c.rooms, float64(rs.Rooms))
		metric.Gauge(ch, c.members, float64(rs.Members))
		bs := t.BroadcastStats()
		ch <- constHistogram(c.fanSize, bs.Recipients)
		ch <- constHistogram(c.fanTime, bs.Duration)
	}
}

func constHistogram(desc *prometheus.Desc, h room.HistogramSnapshot) prometheus.Metric {
	return prometheus.MustNewConstHistogram(desc, h.Count, h.Sum, h.Cumulative())
}

// Overview is the JSON of /api/stats: the transport's essentials
// (server.Overview, whose fields it carries at the top level) and the chat's.
type Overview struct {
	server.Overview
	// Build is the running binary's version and VCS revision.
	Build buildinfo.Info `json:"build"`

	RateLimited uint64 `json:"rate_limited"`
	Bans        uint64 `json:"bans"`
	Rooms       int    `json:"rooms"`
	RoomMembers int    `json:"room_members"`
	Broadcasts  uint64 `json:"broadcasts"`
	// BroadcastRecipients and BroadcastSeconds are the sums over all broadcasts.
	BroadcastRecipients float64 `json:"broadcast_recipients"`
	BroadcastSeconds    float64 `json:"broadcast_seconds"`
}

// overview gathers the transport's and the chat's essentials.
func (a *API) overview() Overview {
	o := Overview{Overview: a.Server.Overview(), Build: buildinfo.Read()}
	if a.Chat != nil {
		cs := a.Chat.Stats()
		o.RateLimited, o.Bans = cs.RateLimited, cs.Bans
	}
	if a.Rooms != nil {
		rs := a.Rooms.Stats()
		o.Rooms, o.RoomMembers = rs.Rooms, rs.Members
		bs := a.Rooms.BroadcastStats()
		o.Broadcasts, o.BroadcastRecipients, o.BroadcastSeconds = bs.Recipients.Count, bs.Recipients.Sum, bs.Duration.Sum
	}
	return o
}
