package transport_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/transport/quic"
	"github.com/pqtunnel/pqtunnel/transport/tlsmux"
	"github.com/pqtunnel/pqtunnel/transport/transporttest"
)

// A sender pushes into many streams while the receiver first reads fast
// (so that windows grow) and then stops reading: the bytes written and not
// yet read, which is what the receiver's transport holds (flow control
// lets no more leave the sender), stay under MaxConnMemory, and the
// writers block.
func TestReceiveWindowsStayUnderMaxConnMemory(t *testing.T) {
	const (
		bound   = 4 << 20
		streams = 32
		chunk   = 16 << 10
	)
	for _, tr := range []transport.Transport{quic.Transport{}, tlsmux.Transport{}} {
		t.Run(tr.Name(), func(t *testing.T) {
			cc, sc := transporttest.Configs(t)
			for _, c := range []*transport.Config{cc, sc} {
				c.MaxConnMemory = bound
				c.StreamWindow = 16 << 20 // room to grow, which only the bound stops
			}
			client, server := transporttest.SessionPair(t, tr, cc, sc)
			ctx, cancel := context.WithCancel(transporttest.Ctx(t))
			defer cancel()
			var written, read atomic.Int64
			stopReading := make(chan struct{})
			var wg sync.WaitGroup
			wg.Go(func() {
				for {
					st, err := server.AcceptStream(ctx)
					if err != nil {
						return
					}
					wg.Go(func() {
						defer st.Reset()
						buf := make([]byte, 64<<10)
						for {
							select {
							case <-stopReading:
								<-ctx.Done()
								return
							default:
							}
							n, err := st.Read(buf)
							read.Add(int64(n))
							if err != nil {
								return
							}
						}
					})
				}
			})
			var opened []transport.Stream
			var mu sync.Mutex
			for range streams {
				wg.Go(func() {
					st, err := client.OpenStream(ctx)
					if err != nil {
						return // over TCP, streams past the bound are refused
					}
					mu.Lock()
					opened = append(opened, st)
					mu.Unlock()
					p := make([]byte, chunk)
					for {
						n, err := st.Write(p)
						written.Add(int64(n))
						if err != nil {
							return
						}
					}
				})
			}
			time.Sleep(time.Second) // the fast-reading phase, in which windows grow
			close(stopReading)
			// Wait for the writers to stall: nothing more leaves them.
			var outstanding int64
			deadline := time.Now().Add(5 * time.Second)
			for last := int64(-1); time.Now().Before(deadline); {
				time.Sleep(300 * time.Millisecond) // sampling a counter the writers bump
				outstanding = written.Load() - read.Load()
				if outstanding == last {
					break
				}
				last = outstanding
			}
			mu.Lock()
			n := len(opened)
			mu.Unlock()
			t.Logf("%s: %d streams, %d MiB read, %d KiB written and not read (bound %d KiB)", tr.Name(), n, read.Load()>>20, outstanding>>10, bound>>10)
			if read.Load() < bound {
				t.Errorf("only %d bytes read in the fast phase: the windows had no reason to grow", read.Load())
			}
			// quic-go may keep one write per stream copied ahead of its credit.
			if limit := int64(bound + streams*chunk); outstanding > limit {
				t.Errorf("%d bytes written and not read, want at most %d", outstanding, limit)
			}
			if before := written.Load(); func() bool { time.Sleep(300 * time.Millisecond); return written.Load() != before }() {
				t.Error("the writers are not blocked")
			}
			cancel()
			_ = client.Close()
			_ = server.Close()
			wg.Wait()
		})
	}
}
