package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/pqtunnel/pqtunnel/internal/config"
	"github.com/pqtunnel/pqtunnel/proxy"
)

// statusTimeout bounds the whole request to the running process.
const statusTimeout = 5 * time.Second

// errNoMetrics is returned when the environment names no metrics server to ask.
var errNoMetrics = errors.New("no metrics server to ask")

// status asks the process that runs with this environment for its status,
// at /status.json on its control socket or else its PQT_METRICS server,
// and prints it.
func status(args []string, environ map[string]string, stdout, stderr io.Writer) error {
	metricsVar, controlVar := config.Name("Metrics"), config.Name("Control")
	fs := newFlags("status", "status [--json]",
		"show the tunnels, routes and limits of the pqtunnel that runs with this environment, asked at its control socket ("+controlVar+") or its "+metricsVar+" server (also at http://"+metricsVar+"/status)")
	asJSON := fs.Bool("json", false, "print the status as JSON (the /status.json body), for scripts")
	if err := fs.parse(args, 0, stdout, stderr); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), statusTimeout)
	defer cancel()
	var body []byte
	var url string
	var errs []error
	if ctl := config.ControlOf(environ); ctl.Path != "" {
		url = "unix:" + ctl.Path
		b, err := fetchStatus(ctx, controlClient(ctl.Path), "http://pqtunnel/status.json")
		if err == nil {
			body = b
		} else {
			errs = append(errs, fmt.Errorf("not reachable at its control socket %s (%s): %w", ctl.Path, controlVar, err))
		}
	}
	if body == nil {
		u, err := statusURL(environ[metricsVar])
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: %w", metricsVar, err))
		default:
			url = u
			b, err := fetchStatus(ctx, http.DefaultClient, u)
			if err != nil {
				errs = append(errs, fmt.Errorf("pqtunnel not reachable at %s=%s (is it running with this environment?): %w", metricsVar, environ[metricsVar], err))
			}
			body = b
		}
	}
	if body == nil {
		return fmt.Errorf("status: %w", errors.Join(errs...))
	}
	if *asJSON {
		_, err := stdout.Write(body)
		return err
	}
	var st proxy.Status
	if err := json.Unmarshal(body, &st); err != nil {
		return fmt.Errorf("status: read %s: %w", url, err)
	}
	return printStatus(stdout, st)
}

// statusURL is the /status.json address of the metrics server that
// PQT_METRICS=v binds, asked on loopback when it binds every address.
func statusURL(v string) (string, error) {
	if v == "" {
		return "", fmt.Errorf("%w: it is not set; status asks the running side at its metrics server, so run the side with one and give status the same value (%s=127.0.0.1:9090 pqtunnel status)", errNoMetrics, config.Name("Metrics"))
	}
	addr := v
	if !strings.Contains(v, ":") {
		addr = "127.0.0.1:" + v // a bare port binds loopback
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("%q: %w", v, err)
	}
	switch ip := net.ParseIP(host); {
	case host == "" || (ip != nil && ip.IsUnspecified() && ip.To4() != nil):
		host = "127.0.0.1"
	case ip != nil && ip.IsUnspecified():
		host = "::1"
	}
	return "http://" + net.JoinHostPort(host, port) + "/status.json", nil
}

// controlClient is an HTTP client whose every request goes to the Unix
// socket at path.
func controlClient(path string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DisableKeepAlives: true, // one request: no idle connection left behind
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
	}}
}

func fetchStatus(ctx context.Context, client *http.Client, url string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("build request: %w", err)
	}
	res, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("request status: %w", err)
	}
	defer res.Body.Close()
	// The status of a busy side is a few KiB per tunnel; 16 MiB is ample.
	body, err := io.ReadAll(io.LimitReader(res.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", url, err)
	}
	if res.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("get %s: %s (a pqtunnel older than 'status'?)", url, res.Status)
	}
	return body, nil
}

// printStatus writes st as aligned text: a summary line, then tunnels,
// routes and limits.
func printStatus(out io.Writer, st proxy.Status) error {
	var buf bytes.Buffer
	if err := formatStatus(&buf, st); err != nil {
		return err
	}
	// tabwriter pads a row's empty last cells; drop the trailing blanks.
	var trimmed bytes.Buffer
	for line := range strings.Lines(buf.String()) {
		trimmed.WriteString(strings.TrimRight(line, " \n"))
		trimmed.WriteByte('\n')
	}
	_, err := out.Write(trimmed.Bytes())
	return err
}

func formatStatus(w io.Writer, st proxy.Status) error {
	var streams int64
	for _, t := range st.Tunnels {
		streams += t.Streams
	}
	fmt.Fprintf(w, "pqtunnel %s side, %s: %s up, %s open\n", st.Mode, st.State,
		plural(len(st.Tunnels), "tunnel connection"), plural(int(streams), "stream"))

	fmt.Fprintln(w, "\nTunnels")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if len(st.Tunnels) == 0 {
		fmt.Fprintln(tw, "  none up")
	} else {
		fmt.Fprintf(tw, "  ID\tPEER\tTRANSPORT\tGROUP\tSIGNATURE\tREMOTE\tRTT\tUP\tSTREAMS\tSENT\tRECEIVED\tLAST %s\n",
			roundDuration(time.Duration(float64(sparkWidth)*st.HistoryInterval*float64(time.Second))))
	}
	for _, t := range st.Tunnels {
		peer := t.Peer
		if !t.PQAuth {
			peer += " (classical auth)"
		}
		group := t.Group
		if !t.PQ {
			group += " (NOT post-quantum)"
		}
		rtt := "-"
		if t.RTT != nil {
			rtt = roundDuration(time.Duration(*t.RTT * float64(time.Second)))
		}
		fmt.Fprintf(tw, "  %d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", t.ID, peer, t.Transport, group, t.Sig, t.Remote,
			rtt, roundDuration(time.Duration(t.Uptime*float64(time.Second))), t.Streams, byteCount(t.BytesSent), byteCount(t.BytesReceived),
			sparkline(t.History))
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	fmt.Fprintln(w, "\nRoutes")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if len(st.Routes) == 0 {
		fmt.Fprintln(tw, "  none")
	} else {
		fmt.Fprintln(tw, "  KIND\tROUTE\tADDRESS\tCLIENTS\tSTATE\tLAST ORIGIN DIAL\tTLS")
	}
	for _, r := range st.Routes {
		last := ""
		switch d := r.LastDial; {
		case r.Kind != proxy.KindTarget:
		case d == nil:
			last = "none yet"
		case d.OK:
			last = fmt.Sprintf("ok in %s, %s ago", roundDuration(time.Duration(d.Seconds*float64(time.Second))), roundDuration(st.Time.Sub(d.Time)))
		default:
			last = fmt.Sprintf("FAILED %s ago: %s", roundDuration(st.Time.Sub(d.Time)), d.Error)
		}
		if d := r.LastDial; d != nil && d.Probe {
			last += " (readiness probe)"
		}
		state := r.State
		if r.FailingSince != nil {
			state += fmt.Sprintf(" for %s", roundDuration(st.Time.Sub(*r.FailingSince)))
		}
		addr := r.Addr
		if r.Scheme != "" {
			addr = r.Scheme + "://" + addr
		}
		if r.Local {
			addr += " (local)"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\t%s\t%s\t%s\n", r.Kind, r.Name, addr, r.Clients, state, last, tlsSummary(r.TLS, st.Time))
	}
	if err := tw.Flush(); err != nil {
		return err
	}

	l := st.Limits
	fmt.Fprintln(w, "\nLimits")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if st.Mode == proxy.ModeDial {
		fmt.Fprintf(tw, "  tunnel connections\tkept %d\t%s\n", l.Connections, config.Name("Connections"))
	} else {
		fmt.Fprintf(tw, "  tunnel connections\t%s\t%s\n", usedOf(len(st.Tunnels), l.MaxConnections), config.Name("MaxConnections"))
	}
	fmt.Fprintf(tw, "  streams per tunnel\tat most %d\t%s\n", l.MaxStreams, config.Name("MaxStreams"))
	fmt.Fprintf(tw, "  streams in this process\t%s\t%s\n", usedOf(l.TotalStreams, l.MaxTotalStreams), config.Name("MaxTotalStreams"))
	fmt.Fprintf(tw, "  handshake timeout\t%s\t%s\n", l.HandshakeTimeout, config.Name("HandshakeTimeout"))
	fmt.Fprintf(tw, "  origin dial timeout\t%s\t%s\n", l.DialTimeout, config.Name("DialTimeout"))
	fmt.Fprintf(tw, "  keep-alive, idle timeout\t%s, %s\t%s, %s\n", l.KeepAlive, l.IdleTimeout, config.Name("KeepAlive"), config.Name("IdleTimeout"))
	fmt.Fprintf(tw, "  drain timeout\t%s\t%s\n", l.DrainTimeout, config.Name("DrainTimeout"))
	return tw.Flush()
}

// sparkWidth is how many of the newest history intervals the text sparkline shows.
const sparkWidth = 20

// sparkline draws the newest sparkWidth intervals of history as block
// characters scaled to their peak, padded on the left while history is short.
func sparkline(history []int64) string {
	history = history[max(len(history)-sparkWidth, 0):]
	var peak int64
	for _, v := range history {
		peak = max(peak, v)
	}
	const blocks = "▁▂▃▄▅▆▇█"
	levels := []rune(blocks)
	var b strings.Builder
	b.WriteString(strings.Repeat(" ", sparkWidth-len(history)))
	for _, v := range history {
		i := 0
		if peak > 0 && v > 0 {
			i = 1 + int(v*int64(len(levels)-2)/peak)
		}
		b.WriteRune(levels[i])
	}
	return b.String()
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return strconv.Itoa(n) + " " + what + "s"
}

// usedOf shows how much of a limit is in use, where a limit of -1 means none.
func usedOf(used, limit int) string {
	if limit < 0 {
		return strconv.Itoa(used) + " (no bound)"
	}
	return strconv.Itoa(used) + " of at most " + strconv.Itoa(limit)
}

// roundDuration shows d with about three significant figures, or whole
// seconds from a minute up.
func roundDuration(d time.Duration) string {
	switch {
	case d >= time.Minute:
		return d.Round(time.Second).String()
	case d >= time.Second:
		return d.Round(10 * time.Millisecond).String()
	case d >= time.Millisecond:
		return d.Round(10 * time.Microsecond).String()
	default:
		return d.Round(time.Microsecond).String()
	}
}

// byteCount shows n in binary units with one decimal.
func byteCount(n int64) string {
	if n < 1024 {
		return strconv.FormatInt(n, 10) + " B"
	}
	v, unit := float64(n), 0
	for v >= 1024 && unit < 4 {
		v /= 1024
		unit++
	}
	return fmt.Sprintf("%.1f %ciB", v, "KMGT"[unit-1])
}

// tlsSummary is a tls:// route's handshakes in one cell: the last one's
// group, signature scheme, SNI and ALPN, and how many completed and failed.
func tlsSummary(t *proxy.TLSRouteStatus, now time.Time) string {
	if t == nil {
		return ""
	}
	counts := fmt.Sprintf("%d ok, %d refused", t.Handshakes, t.Refused)
	l := t.Last
	if l == nil {
		return counts
	}
	s := fmt.Sprintf("%s %s", l.Group, l.Sig)
	if l.SNI != "" {
		s += " sni=" + l.SNI
	}
	if l.ALPN != "" {
		s += " alpn=" + l.ALPN
	}
	if l.Resumed {
		s += " resumed"
	}
	return fmt.Sprintf("%s, %s ago; %s", s, roundDuration(now.Sub(l.Time)), counts)
}
