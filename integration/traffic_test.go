package integration

import (
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// TestBulkByteExact pushes 32 MiB through an echo origin and checks that
// exactly the same bytes come back, over a post-quantum tunnel on each
// transport.
func TestBulkByteExact(t *testing.T) {
	transports(t, func(t *testing.T, transport string) {
		ctx := testContext(t, 90*time.Second)
		o := startEcho(t)
		p := startPair(t, ctx, pairOptions{transport: transport, target: o.addr()})

		for _, s := range []*side{p.listen, p.dial} {
			l := s.logs(msgIs("tunnel connected"))[0]
			if l.str("group") != "X25519MLKEM768" || l.str("transport") != transport || l.str("tls") != "1.3" || l.str("pq_auth") != "true" {
				t.Errorf("%s: tunnel connected with %v, want group X25519MLKEM768, transport %s, tls 1.3, pq_auth true", s.name, l, transport)
			}
		}
		// Each side names the other by pin.
		if got, want := p.dial.logs(msgIs("tunnel connected"))[0].str("peer"), identityNamed(t, "listen").pin; got != want {
			t.Errorf("dial side: peer %q, want the listen side's pin %q", got, want)
		}
		if got, want := p.listen.logs(msgIs("tunnel connected"))[0].str("peer"), identityNamed(t, "dial").pin; got != want {
			t.Errorf("listen side: peer %q, want the dial side's pin %q", got, want)
		}

		payload := randomBytes(1, 32<<20)
		start := time.Now()
		if err := echoExact(within(t, ctx, 60*time.Second), p.dial.forward[""], payload); err != nil {
			t.Fatalf("32 MiB echo over %s: %v", transport, err)
		}
		t.Logf("32 MiB each way over %s in %s", transport, time.Since(start).Round(time.Millisecond))
		if n := o.acceptCount(); n != 1 {
			t.Errorf("origin accepted %d connections, want 1", n)
		}
	})
}

// TestManyConcurrentStreams runs 200 connections at once, each with its own
// 256 KiB of data, and checks every one byte for byte: streams neither mix
// nor lose data under concurrency.
func TestManyConcurrentStreams(t *testing.T) {
	const conns, size = 200, 256 << 10
	transports(t, func(t *testing.T, transport string) {
		ctx := testContext(t, 120*time.Second)
		o := startEcho(t)
		p := startPair(t, ctx, pairOptions{transport: transport, target: o.addr()})

		addr := p.dial.forward[""]
		tctx := within(t, ctx, 90*time.Second)
		errs := make(chan error, conns)
		var wg sync.WaitGroup
		start := time.Now()
		for i := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := echoExact(tctx, addr, randomBytes(uint64(1000+i), size)); err != nil {
					errs <- fmt.Errorf("connection %d: %w", i, err)
				}
			}()
		}
		wg.Wait()
		close(errs)
		failed := 0
		for err := range errs {
			if failed < 10 {
				t.Error(err)
			}
			failed++
		}
		if failed > 0 {
			t.Fatalf("%d of %d connections failed", failed, conns)
		}
		t.Logf("%d x %d KiB over %s in %s", conns, size>>10, transport, time.Since(start).Round(time.Millisecond))
		if n := o.acceptCount(); n != conns {
			t.Errorf("origin accepted %d connections, want %d", n, conns)
		}
	})
}

// TestHalfClose checks that a FIN from either end reaches the other end as a
// FIN while the other direction keeps flowing: first the client half-closes
// and the origin answers after seeing EOF, then the origin half-closes first
// and the client answers after seeing EOF.
func TestHalfClose(t *testing.T) {
	request := randomBytes(7, 300<<10)
	reply := randomBytes(8, 1<<20)
	transports(t, func(t *testing.T, transport string) {
		ctx := testContext(t, 60*time.Second)

		// client-first: read the whole request up to EOF, then reply.
		gotRequest := make(chan []byte, 1)
		clientFirst := startOrigin(t, func(c *net.TCPConn) {
			_ = c.SetDeadline(time.Now().Add(30 * time.Second)) // bounds a failing test
			data, err := io.ReadAll(c)
			if err != nil {
				gotRequest <- nil
				return
			}
			gotRequest <- data
			if _, err := c.Write(reply); err == nil {
				_ = c.CloseWrite() // a failure shows as a short reply
			}
			_, _ = io.Copy(io.Discard, c) // until the tunnel closes the connection
		})
		// origin-first: send a greeting and FIN, then read the client's answer.
		gotAnswer := make(chan []byte, 1)
		originFirst := startOrigin(t, func(c *net.TCPConn) {
			_ = c.SetDeadline(time.Now().Add(30 * time.Second)) // bounds a failing test
			if _, err := c.Write(reply); err != nil {
				gotAnswer <- nil
				return
			}
			if err := c.CloseWrite(); err != nil {
				gotAnswer <- nil
				return
			}
			data, err := io.ReadAll(c)
			if err != nil {
				data = nil
			}
			gotAnswer <- data
		})
		p := startPair(t, ctx, pairOptions{
			transport: transport,
			target:    "cf=" + clientFirst.addr() + ",of=" + originFirst.addr(),
			routes:    []string{"cf", "of"},
		})

		t.Run("client-first", func(t *testing.T) {
			ctx := within(t, ctx, 20*time.Second)
			c, err := dialClient(ctx, p.dial.forward["cf"])
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Write(request); err != nil {
				t.Fatalf("write request: %v", err)
			}
			if err := c.CloseWrite(); err != nil {
				t.Fatalf("close write: %v", err)
			}
			select {
			case data := <-gotRequest:
				if err := sameBytes(data, request); err != nil {
					t.Fatalf("origin did not read exactly the request then EOF: %v", err)
				}
			case <-ctx.Done():
				t.Fatal("origin never saw EOF after the request: the client's FIN was not passed on")
			}
			got, err := io.ReadAll(c)
			if err != nil {
				t.Fatalf("read reply after half-close: %v (got %d bytes)", err, len(got))
			}
			if err := sameBytes(got, reply); err != nil {
				t.Fatalf("reply after half-close: %v", err)
			}
		})

		t.Run("origin-first", func(t *testing.T) {
			ctx := within(t, ctx, 20*time.Second)
			c, err := dialClient(ctx, p.dial.forward["of"])
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			got, err := io.ReadAll(c)
			if err != nil {
				t.Fatalf("read greeting up to EOF: %v (got %d bytes)", err, len(got))
			}
			if err := sameBytes(got, reply); err != nil {
				t.Fatalf("greeting: %v", err)
			}
			if _, err := c.Write(request); err != nil {
				t.Fatalf("write after the origin's FIN: %v", err)
			}
			if err := c.CloseWrite(); err != nil {
				t.Fatalf("close write: %v", err)
			}
			select {
			case data := <-gotAnswer:
				if err := sameBytes(data, request); err != nil {
					t.Fatalf("origin did not read exactly the client's answer then EOF: %v", err)
				}
			case <-ctx.Done():
				t.Fatal("origin never received the answer and EOF")
			}
		})
	})
}

// TestResetPropagatesPromptly checks that an abort on one end ends the
// other end's connection promptly: an origin that resets closes the client,
// and a client that resets closes the origin's connection.
func TestResetPropagatesPromptly(t *testing.T) {
	transports(t, func(t *testing.T, transport string) {
		ctx := testContext(t, 30*time.Second)
		resetting := startOrigin(t, func(c *net.TCPConn) {
			buf := make([]byte, 5)
			_, _ = io.ReadFull(c, buf) // then reset whatever happened
			_ = c.SetLinger(0)         // the deferred Close sends RST
		})
		gotHello := make(chan struct{})
		ended := make(chan time.Time, 1)
		waiting := startOrigin(t, func(c *net.TCPConn) {
			_ = c.SetDeadline(time.Now().Add(20 * time.Second)) // bounds a failing test
			buf := make([]byte, 5)
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			close(gotHello)
			_, _ = io.Copy(io.Discard, c) // until the client's reset arrives
			ended <- time.Now()
		})
		p := startPair(t, ctx, pairOptions{
			transport: transport,
			target:    "reset=" + resetting.addr() + ",wait=" + waiting.addr(),
			routes:    []string{"reset", "wait"},
		})

		t.Run("origin resets", func(t *testing.T) {
			if err := expectClosedPromptly(ctx, p.dial.forward["reset"], time.Second); err != nil {
				t.Fatal(err)
			}
		})

		t.Run("client resets", func(t *testing.T) {
			c, err := dialClient(within(t, ctx, 10*time.Second), p.dial.forward["wait"])
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Write([]byte("hello")); err != nil {
				t.Fatal(err)
			}
			select {
			case <-gotHello:
			case <-ctx.Done():
				t.Fatal("origin never received the client's bytes")
			}
			_ = c.SetLinger(0) // Close sends RST
			_ = c.Close()
			reset := time.Now()
			select {
			case at := <-ended:
				if d := at.Sub(reset); d > time.Second {
					t.Errorf("origin's connection ended %s after the client's reset, want within 1s", d)
				}
			case <-within(t, ctx, 5*time.Second).Done():
				t.Fatal("origin's connection still open 5s after the client's reset")
			}
		})
	})
}
