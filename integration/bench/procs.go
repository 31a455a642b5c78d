package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pqtunnel/pqtunnel/internal/testutil"
)

// child is one pqtunnel process. Its metrics server answers on metrics.
type child struct {
	name    string
	cmd     *exec.Cmd
	proc    *testutil.Proc
	out     *testutil.Output // the last 32 KiB of its stdout and stderr
	metrics string
	http    *http.Client    // reaches metrics; nil is httpClient
	stdin   io.WriteCloser  // held open: the echo helper exits when it closes
	done    <-chan struct{} // closed once the process exited and was waited for
	watched atomic.Bool     // set once ready: from then on an exit fails the run
	// started is when the process was started; ready, when the WAN mode
	// saw it ready.
	started, ready time.Time
}

func (c *child) pid() int { return c.cmd.Process.Pid }

func (c *child) exited() bool { return c.proc.Exited() }

// supervisor owns every process the harness starts: stopAll kills and
// waits for each, and a watched child that exits ends the run through ctx.
type supervisor struct {
	ctx      context.Context
	fail     context.CancelCauseFunc
	closing  atomic.Bool
	mu       sync.Mutex
	children []*child
	wg       sync.WaitGroup // the routineWatch of each child
}

func newSupervisor(parent context.Context) *supervisor {
	ctx, fail := context.WithCancelCause(parent)
	return &supervisor{ctx: ctx, fail: fail}
}

// start runs bin with args and env. The child is killed if the harness dies.
func (s *supervisor) start(name, bin string, args []string, env map[string]string) (*child, error) {
	c := &child{name: name, out: &testutil.Output{Max: 32 << 10}, metrics: env["PQT_METRICS"]}
	cmd := exec.Command(bin, args...)
	cmd.Env = testutil.ChildEnv(env)
	cmd.Stdout, cmd.Stderr = c.out, c.out
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c.stdin = stdin
	cmd.WaitDelay = 2 * time.Second
	c.cmd = cmd
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing.Load() {
		return nil, errors.New("shutting down")
	}
	c.started = time.Now()
	// Its own process group keeps a terminal's Ctrl-C for the harness, which
	// then kills the children itself; on Linux, Pdeathsig covers the harness dying.
	p, err := testutil.Start(name, cmd, true)
	if err != nil {
		_ = stdin.Close() // never used
		return nil, err
	}
	c.proc, c.done = p, p.Done()
	s.children = append(s.children, c)
	s.wg.Add(1)
	go s.routineWatch(c)
	return c, nil
}

// routineWatch ends the run if c exits while watched.
func (s *supervisor) routineWatch(c *child) {
	defer s.wg.Done()
	<-c.done
	if c.watched.Load() && !s.closing.Load() {
		s.fail(fmt.Errorf("%s exited during the run (%v); its last output:\n%s", c.name, c.proc.Err(), c.out.String()))
	}
}

// watch makes an exit of c from now on end the run.
func (s *supervisor) watch(c *child) {
	c.watched.Store(true)
	if c.exited() && !s.closing.Load() {
		s.fail(fmt.Errorf("%s exited (%v); its last output:\n%s", c.name, c.proc.Err(), c.out.String()))
	}
}

// stop kills c, which may then exit without ending the run, and waits for it.
func (s *supervisor) stop(c *child) {
	c.watched.Store(false)
	_ = c.stdin.Close() // Wait closes it too
	c.proc.Kill()
}

// stopAll kills every child and waits for each.
func (s *supervisor) stopAll() {
	s.mu.Lock()
	s.closing.Store(true)
	list := append([]*child(nil), s.children...)
	s.mu.Unlock()
	for _, c := range list {
		_ = c.stdin.Close() // Wait closes it too
		if !c.exited() {
			_ = c.cmd.Process.Kill() // it may have exited meanwhile; Wait tells
		}
	}
	for _, c := range list {
		<-c.done
	}
	s.wg.Wait()
	s.fail(errors.New("stopped"))
}

// startEchoHelper starts this program again as the echo helper and returns
// it with the address it serves on.
func startEchoHelper(ctx context.Context, sup *supervisor) (*child, string, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, "", fmt.Errorf("echo helper: %w", err)
	}
	c, err := sup.start("echo-helper", exe, []string{helperFlag}, nil)
	if err != nil {
		return nil, "", err
	}
	addr, err := awaitReadyLine(ctx, sup, c, helperReady)
	if err != nil {
		return nil, "", err
	}
	return c, addr, nil
}

// awaitReadyLine waits up to 10 s for the helper c to print a line that
// starts with prefix, and returns the rest of that line. Once it has, the
// supervisor watches c; if it has not, c is stopped.
func awaitReadyLine(ctx context.Context, sup *supervisor, c *child, prefix string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, rest, ok := strings.Cut(c.out.String(), prefix); ok {
			if line, _, ok := strings.Cut(rest, "\n"); ok {
				sup.watch(c)
				return line, nil
			}
		}
		select {
		case <-c.done:
			return "", fmt.Errorf("%s exited (%v): %s", c.name, c.proc.Err(), c.out.String())
		case <-ctx.Done():
			sup.stop(c)
			return "", fmt.Errorf("%s did not say %q within 10s: %s", c.name, strings.TrimSpace(prefix), c.out.String())
		case <-tick.C:
		}
	}
}

// moduleRoot is the directory of the go.mod of the current directory.
func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside the pqtunnel module: run from the repository (go run ./integration/bench)")
	}
	return filepath.Dir(gomod), nil
}

// buildBinary builds ./cmd/pqtunnel into dir and returns its path.
func buildBinary(ctx context.Context, dir string) (string, error) {
	root, err := moduleRoot(ctx)
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "pqtunnel")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/pqtunnel")
	cmd.Dir = root
	cmd.WaitDelay = 2 * time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build ./cmd/pqtunnel: %w\n%s", err, out)
	}
	return bin, nil
}

var httpClient = &http.Client{Timeout: 3 * time.Second}

// readiness is the part of /readyz the harness reads.
type readiness struct {
	Ready   bool `json:"ready"`
	Tunnels []struct {
		Transport string `json:"transport"`
		Group     string `json:"group"`
	} `json:"tunnels"`
}

func (c *child) client() *http.Client {
	if c.http != nil {
		return c.http
	}
	return httpClient
}

func getReadiness(ctx context.Context, c *child) (int, readiness, error) {
	var r readiness
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.metrics+"/readyz", nil)
	if err != nil {
		return 0, r, err
	}
	resp, err := c.client().Do(req)
	if err != nil {
		return 0, r, err
	}
	defer resp.Body.Close()
	err = json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&r)
	return resp.StatusCode, r, err
}

// waitReady polls c's /readyz until it answers 200 with at least tunnels
// tunnel connections up, c exits, or timeout passes.
func waitReady(ctx context.Context, c *child, tunnels int, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var last string
	for {
		code, r, err := getReadiness(ctx, c)
		switch {
		case err != nil:
			last = err.Error()
		case code == http.StatusOK && len(r.Tunnels) >= tunnels:
			return nil
		default:
			last = fmt.Sprintf("HTTP %d, %d of %d tunnel connections up", code, len(r.Tunnels), tunnels)
		}
		select {
		case <-c.done:
			return fmt.Errorf("%s exited before it was ready (%v); its output:\n%s", c.name, c.proc.Err(), c.out.String())
		case <-ctx.Done():
			return fmt.Errorf("%s not ready within %s (last: %s); its output:\n%s", c.name, timeout, last, c.out.String())
		case <-tick.C:
		}
	}
}

// scrapeMetrics reads the unlabelled samples of c's /metrics.
func scrapeMetrics(ctx context.Context, c *child) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.metrics+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.client().Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", c.name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: HTTP %d", c.name, resp.StatusCode)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' || strings.ContainsRune(line, '{') {
			continue
		}
		name, val, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		if v, err := strconv.ParseFloat(strings.TrimSpace(val), 64); err == nil {
			out[name] = v
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("scrape %s: %w", c.name, err)
	}
	return out, nil
}

// rssKiB reads VmRSS of pid from /proc, in KiB.
func rssKiB(pid int) (float64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			n, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			if err != nil {
				return 0, fmt.Errorf("parse VmRSS of %d: %w", pid, err)
			}
			return n, nil
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat; it
// is 100 on every Linux architecture Go supports.
const clockTicks = 100

// cpuSeconds reads utime+stime of pid from /proc/PID/stat.
func cpuSeconds(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name may hold spaces; the fields after it are fixed.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f))
	}
	u, err1 := strconv.ParseFloat(f[11], 64)
	s, err2 := strconv.ParseFloat(f[12], 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("parse /proc/%d/stat: %w", pid, err)
	}
	return (u + s) / clockTicks, nil
}
