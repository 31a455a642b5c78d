package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/internal/logtest"
)

// atLevel passes on what its level enables, as a real handler does.
type atLevel struct {
	slog.Handler
	level slog.Level
}

func (h atLevel) Enabled(_ context.Context, l slog.Level) bool { return l >= h.level }

func (h atLevel) WithAttrs(as []slog.Attr) slog.Handler {
	return atLevel{h.Handler.WithAttrs(as), h.level}
}

func (h atLevel) Handle(ctx context.Context, r slog.Record) error {
	if r.Level < h.level {
		return nil
	}
	return h.Handler.Handle(ctx, r)
}

func hsRecord(at time.Time, msg, remote, reason string) slog.Record {
	r := slog.NewRecord(at, slog.LevelWarn, msg, 0)
	r.AddAttrs(slog.String("remote", remote), slog.String("reason", reason))
	return r
}

// A flood from one source gives one line per interval; a flood from many
// sources at most handshakeLinesPerInterval; Summarize reports the rest
// with their count and sources, once.
func TestHandshakeLogBoundsLines(t *testing.T) {
	var rec logtest.Recorder
	h := NewHandshakeLog(atLevel{&rec, slog.LevelInfo}, time.Minute)
	ctx := context.Background()
	t0 := time.Now()
	for i := range 500 {
		if err := h.Handle(ctx, hsRecord(t0, "tunnel handshake refused", fmt.Sprintf("192.0.2.1:%d", 1000+i), "not_post_quantum")); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(rec.All()); n != 1 {
		t.Fatalf("500 refusals from one source gave %d lines, want 1", n)
	}
	// Another reason from the same source is another line.
	_ = h.Handle(ctx, hsRecord(t0, "tunnel handshake refused", "192.0.2.1:9", "peer_not_allowed"))
	for i := range 200 {
		_ = h.Handle(ctx, hsRecord(t0, "tunnel handshake refused", fmt.Sprintf("198.51.100.%d:443", i), "not_post_quantum"))
	}
	if n := len(rec.All()); n != handshakeLinesPerInterval {
		t.Fatalf("after 200 more sources: %d lines, want the bound %d", n, handshakeLinesPerInterval)
	}
	// Another message has its own bound.
	_ = h.Handle(ctx, hsRecord(t0, "tunnel handshake failed", "192.0.2.1:1", "timeout"))
	if n := len(rec.All()); n != handshakeLinesPerInterval+1 {
		t.Fatalf("a line of another message was held back: %d lines", n)
	}
	h.Summarize()
	lines := rec.All()[handshakeLinesPerInterval+1:]
	// 499 from 192.0.2.1 plus 186 of the 200 others.
	want := "tunnel handshake lines not logged about=tunnel handshake refused reason=not_post_quantum count=685 sources=187"
	if len(lines) != 1 || !strings.HasPrefix(lines[0], want) {
		t.Errorf("summary %q, want one line starting %q", lines, want)
	}
	h.Summarize()
	if n := len(rec.All()); n != handshakeLinesPerInterval+2 {
		t.Errorf("a second summary with nothing new logged %d lines", n-handshakeLinesPerInterval-2)
	}
	// The next interval logs the source again.
	_ = h.Handle(ctx, hsRecord(t0.Add(time.Minute), "tunnel handshake refused", "192.0.2.1:2", "not_post_quantum"))
	if !strings.HasPrefix(rec.All()[len(rec.All())-1], "tunnel handshake refused remote=192.0.2.1:2") {
		t.Errorf("the source's first line of the next interval was not logged: %q", rec.All())
	}
}

// Attributes added with With keep the shared limit.
func TestHandshakeLogWithSharesLimit(t *testing.T) {
	var rec logtest.Recorder
	h := NewHandshakeLog(atLevel{&rec, slog.LevelInfo}, time.Minute)
	a, b := slog.New(h).With("transport", "quic"), slog.New(h).With("transport", "tcp")
	a.Warn("tunnel handshake refused", "remote", "192.0.2.1:1", "reason", "x")
	b.Warn("tunnel handshake refused", "remote", "192.0.2.1:2", "reason", "x")
	if n := len(rec.All()); n != 1 {
		t.Errorf("two loggers from one HandshakeLog logged %d lines for one source, want 1", n)
	}
}

// With DEBUG enabled every line is logged, those past the limit at DEBUG.
func TestHandshakeLogDebugShowsEveryLine(t *testing.T) {
	var levels []slog.Level
	h := NewHandshakeLog(levelRecorder{&levels}, time.Minute)
	for i := range 5 {
		_ = h.Handle(context.Background(), hsRecord(time.Now(), "tunnel handshake failed", fmt.Sprintf("192.0.2.1:%d", i), "timeout"))
	}
	want := []slog.Level{slog.LevelWarn, slog.LevelDebug, slog.LevelDebug, slog.LevelDebug, slog.LevelDebug}
	if fmt.Sprint(levels) != fmt.Sprint(want) {
		t.Errorf("levels %v, want %v", levels, want)
	}
}

type levelRecorder struct{ levels *[]slog.Level }

func (r levelRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (r levelRecorder) Handle(_ context.Context, rec slog.Record) error {
	*r.levels = append(*r.levels, rec.Level)
	return nil
}
func (r levelRecorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r levelRecorder) WithGroup(string) slog.Handler      { return r }
