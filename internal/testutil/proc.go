package testutil

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"github.com/pqtunnel/pqtunnel/internal/childproc"
)

// ChildEnv is this process's environment without any PQT_* variable, plus
// env: a child sees only the pqtunnel settings its starter chose.
func ChildEnv(env map[string]string) []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PQT_") {
			out = append(out, kv)
		}
	}
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	return out
}

// Proc is a started child process and the goroutine that reaps it.
type Proc struct {
	Name string
	Cmd  *exec.Cmd
	done chan struct{} // closed once Wait has returned
	err  error         // from Wait; read only after done
}

// Start starts cmd, which the caller has set up (Env from ChildEnv,
// output, stdin), as a child that the kernel kills if this process dies
// where the platform allows it, in a process group of its own when group
// is set (a terminal's Ctrl-C then reaches only this process, which stops
// its children itself). A goroutine waits for it; WaitDelay defaults to
// 5 s so that a grandchild holding the output open cannot block that.
func Start(name string, cmd *exec.Cmd, group bool) (*Proc, error) {
	cmd.SysProcAttr = childproc.Attr(group)
	if cmd.WaitDelay == 0 {
		cmd.WaitDelay = 5 * time.Second
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &Proc{Name: name, Cmd: cmd, done: make(chan struct{})}
	go p.routineWait()
	return p, nil
}

func (p *Proc) routineWait() {
	p.err = p.Cmd.Wait()
	close(p.done)
}

// Done is closed once the process has exited and its output is in.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is what Wait returned; valid once Done is closed.
func (p *Proc) Err() error {
	<-p.done
	return p.err
}

// Exited reports whether the process has exited and been reaped.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Kill kills the process unless it has exited, and waits until it has.
func (p *Proc) Kill() {
	if !p.Exited() {
		_ = p.Cmd.Process.Kill() // it may exit on its own meanwhile; Wait tells
	}
	<-p.done
}

// KillWith kills the process when ctx ends before it exits.
func (p *Proc) KillWith(ctx context.Context) {
	go func() {
		select {
		case <-ctx.Done():
			_ = p.Cmd.Process.Kill() // out of time; Wait reports it
		case <-p.done:
		}
	}()
}

// Output collects a child's output and tells waiters when it grows. With
// Max above zero it keeps only the last Max bytes.
type Output struct {
	Max     int
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{}
}

func (o *Output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf.Write(p)
	if over := o.buf.Len() - o.Max; o.Max > 0 && over > 0 {
		o.buf.Next(over)
	}
	if o.changed != nil {
		close(o.changed)
		o.changed = nil
	}
	return len(p), nil
}

// Snapshot returns the text so far and a channel closed at the next write.
func (o *Output) Snapshot() (string, <-chan struct{}) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.changed == nil {
		o.changed = make(chan struct{})
	}
	return o.buf.String(), o.changed
}

func (o *Output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// Keygen writes a new identity to path with 'bin keygen -o path' and
// returns the pin it printed.
func Keygen(ctx context.Context, bin, path string) (string, error) {
	cmd := exec.CommandContext(ctx, bin, "keygen", "-o", path)
	cmd.Env = ChildEnv(nil)
	cmd.WaitDelay = 2 * time.Second
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("pqtunnel keygen -o %s: %w: %s", path, err, stderr.String())
	}
	return strings.TrimSpace(string(out)), nil
}
