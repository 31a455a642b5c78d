package proxy

import (
	"testing"

	"github.com/pqtunnel/pqtunnel/transport"
)

// liveSession is a session that never ends; pick reads only Done.
type liveSession struct{ transport.Session }

func (liveSession) Done() <-chan struct{} { return nil }

// endedSession is a session that has ended.
type endedSession struct{ transport.Session }

func (endedSession) Done() <-chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

// pick spreads sequential connections evenly over the equally loaded
// tunnels a route allows, wherever they sit in the pool, and never picks a
// loaded, disallowed or ended one while an idle allowed one is up.
func TestPickSpreadsTiesEvenly(t *testing.T) {
	mk := func(id uint64, peer string, s transport.Session) *tunnel {
		return &tunnel{s: s, id: id, peer: peer}
	}
	a1, a2, a3 := mk(1, "a", liveSession{}), mk(2, "a", liveSession{}), mk(3, "a", liveSession{})
	b1, b2 := mk(4, "b", liveSession{}), mk(5, "b", liveSession{})
	dead := mk(6, "b", endedSession{})
	var ts tunnelSet
	ts.init()
	ts.list = []*tunnel{a1, a2, a3, dead, b1, b2}

	tests := []struct {
		name  string
		route Route
		want  []*tunnel
	}{
		{"every peer", Route{Name: "all"}, []*tunnel{a1, a2, a3, b1, b2}},
		{"b only, after a's tunnels and an ended one", Route{Name: "b", Allow: []string{"b"}}, []*tunnel{b1, b2}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const rounds = 20
			got := map[uint64]int{}
			for range rounds * len(tt.want) {
				p := ts.pick(tt.route)
				if p == nil {
					t.Fatal("pick found no tunnel")
				}
				got[p.id]++
			}
			for _, w := range tt.want {
				if got[w.id] != rounds {
					t.Errorf("tunnel %d (peer %s) picked %d times of %d, want %d: %v", w.id, w.peer, got[w.id], rounds*len(tt.want), rounds, got)
				}
			}
			if len(got) != len(tt.want) {
				t.Errorf("picked tunnels %v, want only %d of them", got, len(tt.want))
			}
		})
	}

	b1.active.Add(1)
	for range 10 {
		if p := ts.pick(Route{Name: "b", Allow: []string{"b"}}); p != b2 {
			t.Fatalf("picked tunnel %d while tunnel %d is idle and %d carries a stream", p.id, b2.id, b1.id)
		}
	}
	if p := ts.pick(Route{Name: "c", Allow: []string{"c"}}); p != nil {
		t.Errorf("picked tunnel %d of peer %s for a route only c may use", p.id, p.peer)
	}
}
