package proxy

import (
	"log/slog"
	"time"
)

// accessRecord is what the access log says about one proxied connection:
// a client on a forward route (direction out) or a stream delivered to a
// target (direction in). A nil record is the access log switched off, and
// every method is then a no-op, so that a side without PQT_ACCESS_LOG pays
// one pointer test per connection.
type accessRecord struct {
	start     time.Time
	direction string // out or in, as in the stream metrics
	route     string
	client    string // the original client's address
	peer      string
	tunnel    uint64
	transport string
	target    string // the origin dialled (direction in)
	up, down  int64
	// end is closed, aborted or refused; reason is the refusal's metric
	// label, err what aborted or refused it.
	end, reason string
	err         error
}

// newAccessRecord starts the record of a connection when the access log is on.
func (e *Engine) newAccessRecord(direction, route, client string, start time.Time) *accessRecord {
	if !e.cfg.AccessLog {
		return nil
	}
	return &accessRecord{start: start, direction: direction, route: route, client: client, end: "closed"}
}

// via names the tunnel connection that carried it.
func (r *accessRecord) via(t *tunnel) {
	if r == nil {
		return
	}
	r.peer, r.tunnel, r.transport = t.peer, t.id, t.s.Info().Transport
}

// delivers names the origin the connection is delivered to.
func (r *accessRecord) delivers(target string) {
	if r != nil {
		r.target = target
	}
}

// refused records a refusal with its metric label.
func (r *accessRecord) refused(reason string, err error) {
	if r == nil {
		return
	}
	r.end, r.reason, r.err = "refused", reason, err
}

// finished records the bytes carried each way and, for a non-nil err, that
// the connection was aborted.
func (r *accessRecord) finished(up, down int64, err error) {
	if r == nil {
		return
	}
	r.up, r.down = up, down
	if err != nil && r.end == "closed" {
		r.end, r.err = "aborted", err
	}
}

// logAccess writes the connection's one access-log line, at INFO, when it
// has ended. This is the one place the line is put together, so that a
// field added for every connection (a route kind's own) is added here.
// The line is not rate-limited: an access log that drops lines cannot be
// audited; the refusal warnings stay rate-limited as before.
func (e *Engine) logAccess(r *accessRecord) {
	if r == nil || !e.log.Enabled(e.ctx, slog.LevelInfo) {
		return
	}
	attrs := make([]slog.Attr, 0, 13)
	attrs = append(attrs,
		slog.String("direction", r.direction),
		slog.String("route", r.route),
		slog.String("client", r.client),
	)
	if r.tunnel != 0 {
		attrs = append(attrs, slog.String("peer", r.peer), slog.Uint64("tunnel", r.tunnel), slog.String("transport", r.transport))
	}
	if r.target != "" {
		attrs = append(attrs, slog.String("target", r.target))
	}
	attrs = append(attrs,
		slog.Int64("bytes_up", r.up),
		slog.Int64("bytes_down", r.down),
		slog.Duration("duration", time.Since(r.start).Round(time.Microsecond)),
		slog.String("end", r.end),
	)
	if r.reason != "" {
		attrs = append(attrs, slog.String("reason", r.reason))
	}
	if r.err != nil {
		attrs = append(attrs, slog.Any("err", r.err))
	}
	e.log.LogAttrs(e.ctx, slog.LevelInfo, "connection", attrs...)
}
