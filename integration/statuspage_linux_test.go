package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pqtunnel/pqtunnel/internal/childproc"
)

// chromiumPath is Debian's chromium, which scripts/test-deps installs.
const chromiumPath = "/usr/bin/chromium"

// artifactDir is where a test leaves files for people to look at:
// $TEST_ARTIFACTS_DIR when set, else a directory removed after the test.
func artifactDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("TEST_ARTIFACTS_DIR")
	if dir == "" {
		return t.TempDir()
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// runChromium loads url in a headless chromium with extra flags and returns
// its stdout. Chromium runs in a process group of its own that is killed
// when the run ends, so none of its helper processes outlive the test.
func runChromium(t *testing.T, ctx context.Context, url string, extra ...string) []byte {
	t.Helper()
	if _, err := os.Stat(chromiumPath); errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("%s is not installed; install it with: apt-get install -y --no-install-recommends chromium (scripts/test-deps does this for make test)", chromiumPath)
	}
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	args := append([]string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir=" + t.TempDir(), "--window-size=1200,800", "--virtual-time-budget=5000",
	}, extra...)
	cmd := exec.Command(chromiumPath, append(args, url)...)
	cmd.SysProcAttr = childproc.Attr(true)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	killGroup := func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) } // ESRCH once all are gone
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
		killGroup() // helpers that outlive the browser process
	case <-ctx.Done():
		killGroup()
		<-done
		t.Fatalf("chromium did not finish within 60 s; stderr:\n%s", stderr.String())
	}
	if err != nil {
		t.Fatalf("chromium %v: %v; stderr:\n%s", extra, err, stderr.String())
	}
	return stdout.Bytes()
}

// TestStatusPageInChromium loads /status in a real headless browser while
// traffic flows: after the page's script ran, the DOM shows the tunnel, and
// a screenshot of it is saved and is not blank.
func TestStatusPageInChromium(t *testing.T) {
	ctx := testContext(t, 150*time.Second)
	lm := metAddr(t)
	o := startEcho(t)
	p := startPair(t, ctx, pairOptions{
		transport: "tcp", target: "echo=" + o.addr(), routes: []string{"echo"},
		listenEnv: map[string]string{"PQT_METRICS": lm},
		dialEnv:   map[string]string{"PQT_CONNECTIONS": "1"},
	})
	// Traffic flows while the browser samples, so the sparkline has a rate to draw.
	trafficCtx, stopTraffic := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for trafficCtx.Err() == nil {
			_ = echoExact(trafficCtx, p.dial.forward["echo"], randomBytes(7, 64<<10)) // cancelled at the end
		}
	}()
	defer wg.Wait()
	defer stopTraffic()

	// The sparkline draws the server's history: wait for a few intervals of it.
	waitHistory(t, within(t, ctx, 30*time.Second), "http://"+lm+"/status.json", 4)

	url := "http://" + lm + "/status"
	dir := artifactDir(t)
	dom := string(runChromium(t, ctx, url, "--dump-dom"))
	if err := os.WriteFile(filepath.Join(dir, "status-dom.html"), []byte(dom), 0o644); err != nil {
		t.Fatal(err)
	}
	dialPin := identityNamed(t, "dial").pin
	for _, want := range []string{dialPin, "X25519MLKEM768", "ML-DSA-65", "<polyline", "echo", "serving"} {
		if !strings.Contains(dom, want) {
			t.Errorf("rendered /status lacks %q (DOM in %s)", want, dir)
		}
	}
	if !strings.Contains(dom, `<div id="error"></div>`) {
		t.Errorf("the page shows an error fetching status.json (DOM in %s)", dir)
	}

	shot := filepath.Join(dir, "status.png")
	runChromium(t, ctx, url, "--screenshot="+shot)
	t.Logf("screenshot of /status: %s", shot)
	f, err := os.Open(shot)
	if err != nil {
		t.Fatalf("chromium wrote no screenshot: %v", err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("screenshot is not a PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() != 1200 || b.Dy() != 800 {
		t.Errorf("screenshot is %dx%d, want 1200x800", b.Dx(), b.Dy())
	}
	colours, background, share := colourStats(img)
	t.Logf("screenshot: %d distinct colours, %.1f%% of pixels not the background %v", colours, 100*share, background)
	if colours < 20 || share < 0.03 {
		t.Errorf("screenshot looks blank: %d distinct colours, %.1f%% of pixels not the background", colours, 100*share)
	}
}

// waitHistory polls url (a /status.json) until its first tunnel has n
// intervals of traffic history with bytes in the newest.
func waitHistory(t *testing.T, ctx context.Context, url string, n int) {
	t.Helper()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var last string
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		if res, err := http.DefaultClient.Do(req); err == nil {
			var st struct {
				Tunnels []struct {
					History []int64 `json:"traffic_history"`
				} `json:"tunnels"`
			}
			err = json.NewDecoder(res.Body).Decode(&st)
			_ = res.Body.Close()
			if err == nil && len(st.Tunnels) > 0 {
				h := st.Tunnels[0].History
				if len(h) >= n && h[len(h)-1] > 0 {
					return
				}
				last = fmt.Sprint(h)
			}
		}
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("%s never showed %d intervals of traffic history (last %s)", url, n, last)
		}
	}
}

// colourStats counts img's distinct colours and returns the commonest one
// (the background) and the share of pixels of another colour.
func colourStats(img image.Image) (int, color.RGBA, float64) {
	counts := map[color.RGBA]int{}
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			counts[color.RGBAModel.Convert(img.At(x, y)).(color.RGBA)]++
		}
	}
	var bg color.RGBA
	for c, n := range counts {
		if n > counts[bg] {
			bg = c
		}
	}
	total := b.Dx() * b.Dy()
	return len(counts), bg, float64(total-counts[bg]) / float64(max(total, 1))
}
