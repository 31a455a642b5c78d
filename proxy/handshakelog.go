package proxy

import (
	"context"
	"log/slog"
	"net"
	"sort"
	"sync"
	"time"
)

// HandshakeLog is a slog.Handler for the lines about failed and refused
// tunnel handshakes, which anyone who can reach the tunnel port can cause
// at will: per interval it passes the first line for each message, reason
// and source host, and at most handshakeLinesPerInterval in all for each
// message; the rest it counts, passes on at DEBUG (so that
// PQT_LOG_LEVEL=debug still shows each one), and Summarize logs one line
// per message and reason with the count. Metrics are not its business:
// they count every failure. Give the same HandshakeLog to hybridtls (Policy.Logger) and to
// the engine (Config.HandshakeLog), whose Run calls Summarize.
type HandshakeLog struct {
	inner    slog.Handler
	interval time.Duration
	state    *handshakeLogState
}

// handshakeLinesPerInterval bounds the lines per message and interval, so
// that a flood from spoofed or many sources is bounded too.
const handshakeLinesPerInterval = 16

// maxHandshakeSources bounds the sources remembered per interval; past it
// every new source's line is counted, not logged.
const maxHandshakeSources = 4096

type handshakeLogState struct {
	mu      sync.Mutex
	start   time.Time                 // of the current interval
	sources map[handshakeKey]struct{} // logged this interval
	lines   map[string]int            // logged this interval, by message
	dropped map[handshakeKey]int      // by message and reason (source empty)
	hosts   map[handshakeKey]struct{} // distinct sources dropped, by message, reason and source
}

type handshakeKey struct{ msg, reason, source string }

// NewHandshakeLog limits the handshake lines going to inner; interval zero
// means 10 s.
func NewHandshakeLog(inner slog.Handler, interval time.Duration) *HandshakeLog {
	if interval <= 0 {
		interval = 10 * time.Second
	}
	return &HandshakeLog{inner: inner, interval: interval, state: &handshakeLogState{
		start: time.Now(), sources: map[handshakeKey]struct{}{}, lines: map[string]int{},
		dropped: map[handshakeKey]int{}, hosts: map[handshakeKey]struct{}{},
	}}
}

// Enabled implements slog.Handler.
func (h *HandshakeLog) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

// WithAttrs implements slog.Handler; the limit stays shared.
func (h *HandshakeLog) WithAttrs(as []slog.Attr) slog.Handler {
	return &HandshakeLog{inner: h.inner.WithAttrs(as), interval: h.interval, state: h.state}
}

// WithGroup implements slog.Handler; the limit stays shared.
func (h *HandshakeLog) WithGroup(name string) slog.Handler {
	return &HandshakeLog{inner: h.inner.WithGroup(name), interval: h.interval, state: h.state}
}

// Handle implements slog.Handler: the line is passed on or counted. The
// source is the host of the "remote" attribute, the reason the "reason".
func (h *HandshakeLog) Handle(ctx context.Context, r slog.Record) error {
	k := handshakeKey{msg: r.Message}
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "remote":
			k.source = a.Value.String()
			if host, _, err := net.SplitHostPort(k.source); err == nil {
				k.source = host
			}
		case "reason":
			k.reason = a.Value.String()
		}
		return true
	})
	now := r.Time
	if now.IsZero() {
		now = time.Now()
	}
	if !h.state.allow(k, now, h.interval) {
		if !h.inner.Enabled(ctx, slog.LevelDebug) {
			return nil
		}
		r.Level = min(r.Level, slog.LevelDebug)
	}
	return h.inner.Handle(ctx, r)
}

func (s *handshakeLogState) allow(k handshakeKey, now time.Time, interval time.Duration) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if now.Sub(s.start) >= interval {
		s.start = now
		clear(s.sources)
		clear(s.lines)
	}
	_, seen := s.sources[k]
	if !seen && s.lines[k.msg] < handshakeLinesPerInterval && len(s.sources) < maxHandshakeSources {
		s.sources[k] = struct{}{}
		s.lines[k.msg]++
		return true
	}
	s.dropped[handshakeKey{msg: k.msg, reason: k.reason}]++
	if len(s.hosts) < maxHandshakeSources {
		s.hosts[k] = struct{}{}
	}
	return false
}

// Summarize logs, for each message and reason with lines counted rather
// than logged since the last call, one line saying how many and from how
// many sources, and starts counting afresh.
func (h *HandshakeLog) Summarize() {
	s := h.state
	s.mu.Lock()
	dropped := s.dropped
	sources := map[handshakeKey]int{}
	for k := range s.hosts {
		sources[handshakeKey{msg: k.msg, reason: k.reason}]++
	}
	s.dropped = map[handshakeKey]int{}
	clear(s.hosts)
	s.mu.Unlock()
	keys := make([]handshakeKey, 0, len(dropped))
	for k := range dropped {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		return keys[i].msg < keys[j].msg || keys[i].msg == keys[j].msg && keys[i].reason < keys[j].reason
	})
	for _, k := range keys {
		r := slog.NewRecord(time.Now(), slog.LevelWarn, "tunnel handshake lines not logged", 0)
		r.AddAttrs(slog.String("about", k.msg), slog.String("reason", k.reason), slog.Int("count", dropped[k]),
			slog.Int("sources", sources[k]), slog.Duration("interval", h.interval))
		_ = h.inner.Handle(context.Background(), r) // a failing log handler has nowhere to report to
	}
}

// routineSummarizeHandshakes logs the handshake summaries every interval
// until ctx ends, and once more then.
func (e *Engine) routineSummarizeHandshakes(ctx context.Context) {
	defer e.loops.Done()
	t := time.NewTicker(e.hslog.interval)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			e.hslog.Summarize()
		case <-ctx.Done():
			e.hslog.Summarize()
			return
		}
	}
}
