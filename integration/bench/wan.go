//go:build linux

package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/pqtunnel/pqtunnel/auth/pinned"
	"github.com/pqtunnel/pqtunnel/check"
	"github.com/pqtunnel/pqtunnel/hybridtls"
	"github.com/pqtunnel/pqtunnel/integration/wan"
	"github.com/pqtunnel/pqtunnel/integration/wan/netem"
	"github.com/pqtunnel/pqtunnel/internal/testutil"
	"github.com/pqtunnel/pqtunnel/transport"
	"github.com/pqtunnel/pqtunnel/transport/quic"
	"github.com/pqtunnel/pqtunnel/transport/tlsmux"
	"github.com/pqtunnel/pqtunnel/wire"
)

// The WAN mode (-wan) runs the origin and the clients of this process in
// two network namespaces of a wan.Bed: clients and dial sides in A, listen
// side and origin in B, the emulated link between them. Direct TCP goes
// from a client in A to the origin in B over the link; the tunnelled paths
// go client → dial side (loopback in A) → link → listen side → origin
// (loopback in B). Every cell of the matrix starts fresh pqtunnel sides, so
// that their windows start from the cell's path.

// Ports inside the namespaces, which nothing else uses.
const (
	wanTunnelPort  = 8443
	wanListenMetr  = "127.0.0.1:9100"
	wanForwardBase = 7000 // + 100 × dial side index + route index
	wanMetricsBase = 9101 // + dial side index
	wanRelayA      = 7900 // the 2-relays path: its relay in A listens here on loopback
	wanRelayB      = 7901 // and the one in B on its link address
)

// wanCell is one link of the matrix.
type wanCell struct {
	rtt  time.Duration
	loss float64 // fraction
}

func (c wanCell) name() string {
	return fmt.Sprintf("rtt %s loss %s%%", c.rtt, strconv.FormatFloat(c.loss*100, 'f', -1, 64))
}

// wanRun is one WAN run's state.
type wanRun struct {
	o      options
	log    io.Writer
	bed    *wan.Bed
	sup    *supervisor
	bin    string
	pins   map[string]string  // role → pin
	ids    map[string]string  // role → identity file
	ccs    []string           // congestion controls of direct_<cc> modes
	origin map[string]*origin // "" is the kernel default, else by cc
	res    *WANResult
}

func (w *wanRun) progress(format string, args ...any) {
	fmt.Fprintf(w.log, "bench wan: "+format+"\n", args...)
}

func (w *wanRun) failed(what string, err error) {
	msg := what + ": " + err.Error()
	w.res.Errors = append(w.res.Errors, msg)
	w.progress("FAILED %s", truncate(msg, 2000))
}

// wanCells is the matrix the options ask for.
func (o options) wanCells() []wanCell {
	var out []wanCell
	for _, r := range o.wanRTTs {
		for _, l := range o.wanLoss {
			out = append(out, wanCell{rtt: r, loss: l})
		}
	}
	return out
}

// runWAN is the -wan mode: it returns the result, or an error that ended
// the run with what was measured so far.
func runWAN(ctx context.Context, o options, log io.Writer) (*WANResult, error) {
	started := time.Now()
	w := &wanRun{o: o, log: log, origin: map[string]*origin{}, ids: map[string]string{}, pins: map[string]string{}}
	w.res = &WANResult{Meta: WANMeta{
		Started: started.UTC().Truncate(time.Second), Smoke: o.smoke, RateMbit: o.wanRate / 1e6,
		BulkWindow: o.bulk.String(), Warmup: o.warm.String(),
		Go: runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH, CPUs: runtime.NumCPU(), LoadStart: loadavg(),
	}, Errors: []string{}}
	if o.wanSettle > 0 {
		w.res.Meta.AutoSettle = o.wanSettle.String()
	}
	for _, name := range slices.Sorted(maps.Keys(o.wanEnv)) {
		w.res.Meta.Notes = append(w.res.Meta.Notes, "every side runs with "+name+"="+o.wanEnv[name])
	}
	err := w.run(ctx)
	w.res.Targets = checkWANTargets(w.res)
	w.res.Meta.LoadEnd = loadavg()
	w.res.Meta.Seconds = time.Since(started).Seconds()
	return w.res, err
}

func (w *wanRun) run(ctx context.Context) error {
	_ = os.Setenv("QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING", "true") // only read by quic-go
	dir, err := os.MkdirTemp("", "pqtunnel-bench-wan-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	w.bin = w.o.bin
	if w.bin == "" {
		w.progress("building ./cmd/pqtunnel")
		if w.bin, err = buildBinary(ctx, dir); err != nil {
			return err
		}
	}
	for _, role := range []string{"listen", "dial"} {
		w.ids[role] = filepath.Join(dir, role+".id")
		if w.pins[role], err = testutil.Keygen(ctx, w.bin, w.ids[role]); err != nil {
			return err
		}
	}
	bed, err := wan.New(ctx, "bench")
	if err != nil {
		return err
	}
	w.bed = bed
	defer func() {
		if err := bed.Close(); err != nil {
			w.failed("remove the test bed", err)
		}
	}()
	w.sup = newSupervisor(ctx)
	defer w.sup.stopAll() // before the bed goes: a namespace lives while a process is in it
	ctx = w.sup.ctx
	if err := w.congestionControls(); err != nil {
		return err
	}
	if err := w.startOrigins(); err != nil {
		return err
	}
	defer func() {
		for _, o := range w.origin {
			o.close()
		}
	}()
	w.res.Meta.QueueBytes = w.queueBytes()
	for _, cell := range w.o.wanCells() {
		if err := w.runCell(ctx, cell); err != nil {
			return err
		}
	}
	if w.o.wanBlackhole > 0 && w.o.runs("blackhole") {
		w.res.Meta.BlackholeTime = w.o.wanBlackhole.String()
		if err := w.runBlackhole(ctx); err != nil {
			return err
		}
	}
	return nil
}

// queueBytes is the link's queue: o.wanQueue of traffic at the rate cap.
func (w *wanRun) queueBytes() int {
	return max(64<<10, int(w.o.wanRate/8*w.o.wanQueue.Seconds()))
}

// congestionControls reads what the kernel offers in namespace A.
func (w *wanRun) congestionControls() error {
	read := func(name string) (string, error) {
		out, err := w.bed.A.Command(context.Background(), "cat", "/proc/sys/net/ipv4/"+name).Output()
		return strings.TrimSpace(string(out)), err
	}
	def, err := read("tcp_congestion_control")
	if err != nil {
		return fmt.Errorf("read the default congestion control: %w", err)
	}
	avail, err := read("tcp_available_congestion_control")
	if err != nil {
		return fmt.Errorf("read the available congestion controls: %w", err)
	}
	w.res.Meta.DefaultCC, w.res.Meta.AvailableCC = def, strings.Fields(avail)
	for _, cc := range []string{"cubic", "bbr"} {
		if cc == def {
			continue
		}
		if slices.Contains(strings.Fields(avail), cc) {
			w.ccs = append(w.ccs, cc)
		} else {
			w.res.Meta.Notes = append(w.res.Meta.Notes, cc+" is not offered by this kernel: no direct_"+cc+" figures")
		}
	}
	return nil
}

// setCC is a socket Control that sets TCP_CONGESTION to cc.
func setCC(cc string) func(network, address string, c syscall.RawConn) error {
	return func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptString(int(fd), syscall.IPPROTO_TCP, syscall.TCP_CONGESTION, cc)
		}); err != nil {
			return err
		}
		if serr != nil {
			return fmt.Errorf("set TCP_CONGESTION %s: %w", cc, serr)
		}
		return nil
	}
}

// startOrigins starts the origin in B on all its addresses, once with the
// kernel's congestion control and once per direct_<cc> mode: a listener's
// TCP_CONGESTION passes to the connections it accepts, so downloads from
// that origin are sent with cc.
func (w *wanRun) startOrigins() error {
	for _, cc := range append([]string{""}, w.ccs...) {
		lc := &net.ListenConfig{}
		if cc != "" {
			lc.Control = setCC(cc)
		}
		o, err := startOriginOn(func() (net.Listener, error) {
			return w.bed.B.Listen(context.Background(), lc, "tcp4", "0.0.0.0:0")
		})
		if err != nil {
			return fmt.Errorf("origin in %s: %w", w.bed.B.Name, err)
		}
		w.origin[cc] = o
	}
	return nil
}

func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// wanPath is one way from a client in A to the origin.
type wanPath struct {
	mode   string
	org    *origin
	dial   dialFunc
	routes map[string]string
	sides  []*child
}

func (w *wanRun) dialer(cc string) dialFunc {
	d := &net.Dialer{Timeout: 10 * time.Second}
	if cc != "" {
		d.Control = setCC(cc)
	}
	return func(ctx context.Context, addr string) (net.Conn, error) {
		return w.bed.A.DialWith(ctx, d, "tcp4", addr)
	}
}

// directPath is direct TCP from A to the origin of cc over the link.
func (w *wanRun) directPath(cc string) *wanPath {
	o := w.origin[cc]
	mode := modeDirect
	if cc != "" {
		mode = directCC(cc)
	}
	routes := map[string]string{}
	for _, r := range routeNames {
		routes[r] = net.JoinHostPort(wan.AddrB, port(o.addr(r)))
	}
	return &wanPath{mode: mode, org: o, dial: w.dialer(cc), routes: routes}
}

// sideEnv is the environment of a pqtunnel side with role (listen or
// dial) on transport; the caller adds addresses and routes.
func (w *wanRun) sideEnv(role, transport string) map[string]string {
	other := "dial"
	if role == "dial" {
		other = "listen"
	}
	env := maps.Clone(w.o.wanEnv)
	if env == nil {
		env = map[string]string{}
	}
	maps.Copy(env, map[string]string{
		"PQT_MODE": role, "PQT_TRANSPORT": transport, "PQT_LOG_LEVEL": "warn",
		"PQT_IDENTITY": w.ids[role], "PQT_PEERS": w.pins[other],
	})
	return env
}

// startIn starts a pqtunnel side in n and waits until it has tunnels up.
func (w *wanRun) startIn(ctx context.Context, n *wan.Namespace, name string, env map[string]string, tunnels int) (*child, error) {
	c, err := w.sup.start(name, "ip", []string{"netns", "exec", n.Name, w.bin}, env)
	if err != nil {
		return nil, err
	}
	c.http = n.HTTPClient(3 * time.Second)
	if err := waitReady(ctx, c, tunnels, 30*time.Second); err != nil {
		w.sup.stop(c)
		return nil, err
	}
	c.ready = time.Now()
	w.sup.watch(c)
	return c, nil
}

// stopSides stops the sides startSides started.
func (w *wanRun) stopSides(sides []*child) {
	for _, c := range sides {
		w.sup.stop(c)
	}
}

// startSides starts the listen side (both transports) in B and one dial
// side per transport in A; they are the tunnelled paths.
func (w *wanRun) startSides(ctx context.Context, transports []string) ([]*wanPath, []*child, error) {
	o := w.origin[""]
	var targets []string
	for _, r := range routeNames {
		targets = append(targets, r+"=127.0.0.1:"+port(o.addr(r)))
	}
	env := w.sideEnv("listen", "auto")
	env["PQT_TUNNEL"] = net.JoinHostPort(wan.AddrB, strconv.Itoa(wanTunnelPort))
	env["PQT_TARGET"] = strings.Join(targets, ",")
	env["PQT_METRICS"] = wanListenMetr
	listen, err := w.startIn(ctx, w.bed.B, "wan-listen", env, 0)
	if err != nil {
		return nil, nil, err
	}
	all := []*child{listen}
	var paths []*wanPath
	for i, tr := range transports {
		routes := map[string]string{}
		var fwd []string
		for j, r := range routeNames {
			routes[r] = "127.0.0.1:" + strconv.Itoa(wanForwardBase+100*i+j)
			fwd = append(fwd, r+"="+routes[r])
		}
		env := w.sideEnv("dial", tr)
		env["PQT_TUNNEL"] = net.JoinHostPort(wan.AddrB, strconv.Itoa(wanTunnelPort))
		env["PQT_FORWARD"] = strings.Join(fwd, ",")
		env["PQT_METRICS"] = "127.0.0.1:" + strconv.Itoa(wanMetricsBase+i)
		d, err := w.startIn(ctx, w.bed.A, "wan-dial-"+tr, env, 1)
		if err != nil {
			return nil, all, err
		}
		all = append(all, d)
		paths = append(paths, &wanPath{mode: tr, org: o, dial: w.dialer(""), routes: routes, sides: []*child{d, listen}})
	}
	return paths, all, nil
}

// startRelays starts the 2-relays path: a plain TCP relay in A, reached
// on loopback as a dial side's forward listener is, carrying each
// connection over the link to one in B, which carries it on to the echo
// origin as a listen side does. It is measured for latency only.
func (w *wanRun) startRelays(ctx context.Context) (*wanPath, []*child, error) {
	o := w.origin[""]
	inB := net.JoinHostPort(wan.AddrB, strconv.Itoa(wanRelayB))
	b, _, err := startRelay(ctx, w.sup, "wan-relay-b", w.bed.B.Name, inB, "127.0.0.1:"+port(o.addr(routeEcho)))
	if err != nil {
		return nil, nil, err
	}
	inA := "127.0.0.1:" + strconv.Itoa(wanRelayA)
	a, _, err := startRelay(ctx, w.sup, "wan-relay-a", w.bed.A.Name, inA, inB)
	if err != nil {
		return nil, []*child{b}, err
	}
	return &wanPath{mode: modeRelays, org: o, dial: w.dialer(""), routes: map[string]string{routeEcho: inA}}, []*child{a, b}, nil
}

// setLink gives both directions of the link cell's impairments.
func (w *wanRun) setLink(cell wanCell) {
	w.bed.Link.SetBoth(netem.Config{Delay: cell.rtt / 2, Loss: cell.loss, RateBits: int64(w.o.wanRate), QueueBytes: w.queueBytes()})
}

// wanTunnelModes are the dial sides of every cell, by PQT_TRANSPORT.
var wanTunnelModes = []string{modeTCP, modeQUIC, modeAuto}

func (w *wanRun) runCell(ctx context.Context, cell wanCell) error {
	w.progress("%s", cell.name())
	start := time.Now()
	w.setLink(cell)
	stats0 := [2]netem.Stats{w.bed.Link.Stats(netem.AtoB), w.bed.Link.Stats(netem.BtoA)}
	cpu0 := w.bed.Link.CPU()
	col := newCollector()
	res := WANCellResult{Cell: cell.name(), RTTms: ms(cell.rtt), Loss: cell.loss}
	if err := w.measureCell(ctx, cell, col); err != nil {
		return err
	}
	if w.o.runs("grow") && cell.rtt > 0 {
		if err := w.measureGrown(ctx, cell, col); err != nil {
			return err
		}
	}
	res.Figures = col.figures()
	res.Seconds = time.Since(start).Seconds()
	res.EmulatorCPU = (w.bed.Link.CPU() - cpu0).Seconds()
	res.EmulatorCore = res.EmulatorCPU / res.Seconds
	for i, d := range []netem.Dir{netem.AtoB, netem.BtoA} {
		s := w.bed.Link.Stats(d)
		res.EmulatorGB += float64(s.Bytes-stats0[i].Bytes) / 1e9
		res.Link[i] = LinkStats{Dir: d.String(), Packets: s.Packets - stats0[i].Packets, DroppedLoss: s.DroppedLoss - stats0[i].DroppedLoss,
			DroppedQueue: s.DroppedQueue - stats0[i].DroppedQueue, MaxQueue: s.MaxQueueBytes}
	}
	w.res.Cells = append(w.res.Cells, res)
	return nil
}

// measureCell takes the cell's figures over sides that come up on the
// cell's own link, which it stops before it returns.
func (w *wanRun) measureCell(ctx context.Context, cell wanCell, col *collector) error {
	paths := []*wanPath{w.directPath("")}
	for _, cc := range w.ccs {
		paths = append(paths, w.directPath(cc))
	}
	tunnels, sides, err := w.startSides(ctx, wanTunnelModes)
	defer w.stopSides(sides)
	if err != nil {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		w.failed(cell.name()+": start the sides", err)
	}
	paths = append(paths, tunnels...)
	if w.o.runs("latency") {
		relay, relays, err := w.startRelays(ctx)
		defer w.stopSides(relays)
		if err != nil {
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			w.failed(cell.name()+": start the relays", err)
		} else {
			paths = append(paths, relay)
		}
	}

	// Tunnel establishment first, on an idle link.
	for _, tr := range []string{modeTCP, modeQUIC} {
		if !w.o.runs("establish") {
			break
		}
		v, err := w.establish(ctx, tr)
		if err != nil {
			col.fail("establish", "ms", tr, err)
			w.failed(cell.name()+": establish "+tr, err)
			continue
		}
		col.add("establish", "ms", tr, 0, v)
	}
	if w.o.wanSettle > 0 && (w.o.runs("bulk1") || w.o.runs("bulk8")) {
		if err := w.settleAuto(ctx, cell, tunnels); err != nil {
			return err
		}
	}
	for _, spec := range wanBulkSpecs {
		if !w.o.runs(bulkPhase(spec)) {
			continue
		}
		for _, p := range paths {
			if strings.HasPrefix(p.mode, modeDirect+"_") && spec.streams > 1 {
				continue // the other congestion controls for one stream only
			}
			if p.mode == modeRelays {
				continue // a latency baseline: its throughput is direct's
			}
			if err := w.bulk(ctx, cell, col, spec, spec.name, p); err != nil {
				return err
			}
		}
	}
	for _, p := range paths {
		if !w.o.runs("latency") {
			break
		}
		if p.mode != modeDirect && strings.HasPrefix(p.mode, modeDirect) {
			continue // latency does not depend on the sender's congestion control
		}
		lat, err := w.requestResponse(ctx, p, cell.rtt)
		if err != nil {
			col.fail("rr_p50", "ms", p.mode, err)
			w.failed(fmt.Sprintf("%s: request/response %s", cell.name(), p.mode), err)
		} else {
			col.add("rr_p50", "ms", p.mode, 0, ms(percentile(lat, 0.5)))
			col.add("rr_p99", "ms", p.mode, 0, ms(percentile(lat, 0.99)))
		}
		first, err := w.firstByte(ctx, p, cell.rtt)
		if err != nil {
			col.fail("first_byte", "ms", p.mode, err)
			w.failed(fmt.Sprintf("%s: connect to first byte %s", cell.name(), p.mode), err)
		} else {
			col.add("first_byte", "ms", p.mode, 0, ms(percentile(first, 0.5)))
		}
	}
	for _, p := range paths {
		if !w.o.runs("loaded") {
			break
		}
		if p.mode == modeRelays || (p.mode != modeDirect && strings.HasPrefix(p.mode, modeDirect)) {
			continue
		}
		if err := w.awaitQuietLink(ctx, cell.rtt); err != nil {
			return err
		}
		lat, err := w.requestResponseLoaded(ctx, p, cell.rtt)
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if err != nil {
			col.fail("rr_p50_loaded", "ms", p.mode, err)
			w.failed(fmt.Sprintf("%s: request/response beside downloads %s", cell.name(), p.mode), err)
			continue
		}
		col.add("rr_p50_loaded", "ms", p.mode, 0, ms(percentile(lat, 0.5)))
		col.add("rr_p99_loaded", "ms", p.mode, 0, ms(percentile(lat, 0.99)))
	}
	return nil
}

// loadedDownloads is how many downloads run beside the loaded
// request/response probe: two, so that over a dial side's two tunnel
// connections (PQT_CONNECTIONS) the probe's stream shares one with a
// download whichever it lands on, as an interactive client's does on a
// tunnel that also carries bulk.
const loadedDownloads = 2

// requestResponseLoaded is requestResponse while loadedDownloads
// downloads run over the same path: what a small request waits behind a
// bulk transfer, in the link's queue (direct TCP pays that too) and, for a
// tunnel, in what the tunnel connection has queued ahead of it.
func (w *wanRun) requestResponseLoaded(ctx context.Context, p *wanPath, rtt time.Duration) ([]time.Duration, error) {
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	for range loadedDownloads {
		c, err := p.dial(ctx, p.routes[routeSource])
		if err != nil {
			return nil, fmt.Errorf("start a download: %w", err)
		}
		conns = append(conns, c)
		wg.Go(func() { _, _ = io.Copy(io.Discard, c) }) // until closed
	}
	// The downloads fill the path first, past slow start.
	if err := waitFor(ctx, max(time.Second, 10*rtt)); err != nil {
		return nil, err
	}
	// Fewer exchanges than unloaded, each allowed far longer: a request may
	// wait behind seconds of queued data.
	lat, err := exchanges(ctx, p, min(w.samplesFor(rtt), 40), 60*time.Second)
	for _, c := range conns {
		_ = c.Close() // ends the copies
	}
	return lat, err
}

// settleAuto carries a 1-stream upload over auto's tunnel for
// o.wanSettle, as a tunnel in use has carried before, so that auto has
// chosen its transport for the path when its figures are taken.
func (w *wanRun) settleAuto(ctx context.Context, cell wanCell, tunnels []*wanPath) error {
	for _, p := range tunnels {
		if p.mode != modeAuto {
			continue
		}
		s, err := runBulk(ctx, p.org, p.dial, p.routes[routeSink], true, true, 1, 0, w.o.wanSettle, p.sides)
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		if err != nil {
			w.failed(cell.name()+": settle auto", err)
			return nil
		}
		w.progress("  auto settled over %s: %.2f MB/s", w.o.wanSettle, s.mbps)
	}
	return nil
}

// measureGrown brings fresh sides up over the cell's link without its
// delay, waits until their tunnels have settled, gives the link the
// cell's delay and takes 1-stream bulk over them, and over direct TCP
// again for the ratio: a tunnel must follow a path whose RTT changed
// under it (a route change, a link that filled up), not only the path it
// was measured on when it came up.
func (w *wanRun) measureGrown(ctx context.Context, cell wanCell, col *collector) error {
	w.progress("%s, sides up at rtt 0", cell.name())
	w.setLink(wanCell{loss: cell.loss})
	defer w.setLink(cell)
	tunnels, sides, err := w.startSides(ctx, wanTunnelModes)
	defer w.stopSides(sides)
	if err != nil {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		w.failed(cell.name()+": start the sides at rtt 0", err)
		return nil
	}
	// Traffic at the short RTT first, as a tunnel in use has seen, then
	// some idle keep-alive rounds.
	for _, p := range tunnels {
		if _, err := w.clientOnce(ctx, p.routes[routeEcho], 5*time.Second); err != nil {
			w.failed(cell.name()+": echo at rtt 0 over "+p.mode, err)
		}
	}
	if err := waitFor(ctx, 2*time.Second); err != nil {
		return err
	}
	w.setLink(cell)
	grew := time.Now()
	paths := append([]*wanPath{w.directPath("")}, tunnels...)
	for _, spec := range wanBulkSpecs[:2] {
		for _, p := range paths {
			if err := w.bulk(ctx, cell, col, spec, spec.name+grownSuffix, p); err != nil {
				return err
			}
		}
	}
	// BBR holds on to the shortest RTT it saw for 10 s, and its window to
	// that RTT: the same again once that has passed (not in a smoke run,
	// which only checks that the phase works).
	if w.o.smoke {
		return nil
	}
	if err := waitFor(ctx, time.Until(grew.Add(grownLate))); err != nil {
		return err
	}
	for _, spec := range wanBulkSpecs[:2] {
		for _, p := range paths {
			if err := w.bulk(ctx, cell, col, spec, spec.name+grownLateSuffix, p); err != nil {
				return err
			}
		}
	}
	return nil
}

// bulkPhase is the -only phase of spec.
func bulkPhase(spec bulkSpec) string {
	if spec.streams == 1 {
		return "bulk1"
	}
	return "bulk8"
}

// bulk takes one bulk figure over p; an error is the run's end.
func (w *wanRun) bulk(ctx context.Context, cell wanCell, col *collector, spec bulkSpec, fig string, p *wanPath) error {
	// Slow start and BBR's startup take a number of round trips, not a
	// time: long paths get longer windows.
	warm, window := max(w.o.warm, 5*cell.rtt), max(w.o.bulk, 10*cell.rtt)
	addr := p.routes[routeSource]
	if spec.upload {
		addr = p.routes[routeSink]
	}
	if err := w.awaitQuietLink(ctx, cell.rtt); err != nil {
		return err
	}
	s, err := runBulk(ctx, p.org, p.dial, addr, spec.upload, true, spec.streams, warm, window, p.sides)
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	if err != nil {
		col.fail(fig, "MB/s", p.mode, err)
		w.failed(fmt.Sprintf("%s: %s %s", cell.name(), fig, p.mode), err)
		return nil
	}
	col.add(fig, "MB/s", p.mode, 0, s.mbps)
	if w.o.verbose {
		w.progress("  %s %s: %.2f MB/s", fig, p.mode, s.mbps)
	}
	return nil
}

// awaitQuietLink waits until the link carries next to nothing either way,
// for at most 10 s. A bulk transfer over the tcp transport ends with its
// stream reset, but what its tunnel socket holds unsent (megabytes, with
// windows sized for the path) and what the link's queue holds still cross
// the link afterwards: the next path measured would start against that
// tail and take its losses. Direct connections are closed and drop theirs.
func (w *wanRun) awaitQuietLink(ctx context.Context, rtt time.Duration) error {
	moved := func() uint64 {
		return w.bed.Link.Stats(netem.AtoB).Bytes + w.bed.Link.Stats(netem.BtoA).Bytes
	}
	step := max(100*time.Millisecond, 2*rtt)
	quiet := uint64(w.o.wanRate / 8 * step.Seconds() / 100) // 1 % of the rate cap
	ok, err := awaitQuiet(ctx, moved, step, quiet, 10*time.Second)
	if err == nil && !ok {
		w.progress("  the link was still busy after 10 s")
	}
	return err
}

var wanBulkSpecs = []bulkSpec{
	{"upload_1_stream", true, 1},
	{"download_1_stream", false, 1},
	{"upload_8_streams", true, 8},
	{"download_8_streams", false, 8},
}

// samplesFor is how many round trips of rtt fit the latency budget, at
// least 10 and at most 400 (smoke: 5 to 50).
func (w *wanRun) samplesFor(rtt time.Duration) int {
	budget, lo, hi := 1500*time.Millisecond, 10, 400
	if w.o.smoke {
		budget, lo, hi = 300*time.Millisecond, 5, 50
	}
	return min(max(int(budget/max(rtt, time.Millisecond)), lo), hi)
}

// requestResponse sends one byte and waits for its echo, over and over on
// one connection, and returns the round trips sorted.
func (w *wanRun) requestResponse(ctx context.Context, p *wanPath, rtt time.Duration) ([]time.Duration, error) {
	n := w.samplesFor(rtt)
	return exchanges(ctx, p, n, time.Duration(n)*4*rtt+linger)
}

// exchanges times n 1-byte echoes on one connection of p's, all within
// limit.
func exchanges(ctx context.Context, p *wanPath, n int, limit time.Duration) ([]time.Duration, error) {
	c, err := p.dial(ctx, p.routes[routeEcho])
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(limit)) // a failure shows as an I/O error
	b := []byte{'x'}
	// One exchange first, unmeasured: the stream's setup is not a request.
	_, err = c.Write(b)
	if err == nil {
		_, err = io.ReadFull(c, b)
	}
	if err != nil {
		return nil, fmt.Errorf("first echo: %w", err)
	}
	lat := make([]time.Duration, 0, n)
	for range n {
		t := time.Now()
		if _, err := c.Write(b); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(c, b); err != nil {
			return nil, fmt.Errorf("read echo: %w", err)
		}
		lat = append(lat, time.Since(t))
		if ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
	}
	slices.Sort(lat)
	return lat, nil
}

// firstByte times new clients from connect to the first answer byte:
// connect, send one byte at once, read its echo. A client in A makes the
// socket on a thread already in the namespace, so the time is the
// network's.
func (w *wanRun) firstByte(ctx context.Context, p *wanPath, rtt time.Duration) ([]time.Duration, error) {
	n := min(w.samplesFor(rtt), 20)
	var out []time.Duration
	for range n {
		d, err := w.clientOnce(ctx, p.routes[routeEcho], 10*time.Second)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	slices.Sort(out)
	return out, nil
}

// clientOnce is one new client in A: connect to addr, send a byte, read
// the echo, close; it returns the time from connect to the echo.
func (w *wanRun) clientOnce(ctx context.Context, addr string, bound time.Duration) (time.Duration, error) {
	var d time.Duration
	err := w.bed.A.Do(func() error {
		start := time.Now()
		dctx, cancel := context.WithTimeout(ctx, bound)
		defer cancel()
		var dl net.Dialer
		c, err := dl.DialContext(dctx, "tcp4", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(start.Add(bound)) // a failure shows as an I/O error
		b := []byte{'x'}
		if _, err := c.Write(b); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, b); err != nil {
			return fmt.Errorf("read echo: %w", err)
		}
		d = time.Since(start)
		return nil
	})
	return d, err
}

// probeTransports are the transports establish can probe, by mode name.
var probeTransports = map[string]transport.Transport{modeTCP: tlsmux.Transport{}, modeQUIC: quic.Transport{}}

// establish probes the listen side from A over the transport of mode: the
// median, over a few probes, of the dial side's time from the first packet
// to the verified post-quantum proof.
func (w *wanRun) establish(ctx context.Context, mode string) (float64, error) {
	id, err := pinned.LoadIdentityFile(w.ids["dial"])
	if err != nil {
		return 0, err
	}
	pin, err := pinned.ParsePin(w.pins["listen"])
	if err != nil {
		return 0, err
	}
	store, err := hybridtls.NewStore(hybridtls.Policy{Mode: hybridtls.Strict, Groups: hybridtls.DefaultGroups, ALPN: wire.ALPN},
		&pinned.Authenticator{Identity: id, Peers: []pinned.Pin{pin}})
	if err != nil {
		return 0, err
	}
	cfg := check.Config{TLS: store, Mux: transport.Config{HandshakeTimeout: 15 * time.Second}}
	peer := net.JoinHostPort(wan.AddrB, strconv.Itoa(wanTunnelPort))
	probes := 3
	if w.o.smoke {
		probes = 1
	}
	var hs []time.Duration
	for range probes {
		var p check.Probe
		_ = w.bed.A.Do(func() error {
			pctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			defer cancel()
			p = check.ProbeTunnel(pctx, cfg, peer, probeTransports[mode], hybridtls.Strict, hybridtls.DefaultGroups)
			return nil
		})
		if p.Err != nil {
			return 0, p.Err
		}
		hs = append(hs, p.Handshake)
	}
	slices.Sort(hs)
	return ms(percentile(hs, 0.5)), nil
}

// runBlackhole starts tcp, quic and auto dial sides over a 20 ms link,
// blackholes UDP both ways for o.wanBlackhole while a new client arrives on
// each every second, lifts it, and times how long each takes until a new
// client is answered again.
func (w *wanRun) runBlackhole(ctx context.Context) error {
	cell := wanCell{rtt: 20 * time.Millisecond}
	w.progress("UDP blackhole of %s at %s", w.o.wanBlackhole, cell.name())
	w.setLink(cell)
	modes := []string{modeTCP, modeQUIC, modeAuto}
	paths, sides, err := w.startSides(ctx, modes)
	defer func() { w.stopSides(sides) }() // stopped early once the blackhole is measured
	if err != nil {
		if ctx.Err() != nil {
			return context.Cause(ctx)
		}
		w.failed("blackhole: start the sides", err)
		return nil
	}
	out := make([]BlackholeMode, len(paths))
	for i, p := range paths {
		out[i].Mode = p.mode
		if _, err := w.clientOnce(ctx, p.routes[routeEcho], 5*time.Second); err != nil {
			out[i].Error = "before the blackhole: " + err.Error()
		}
	}
	cfg := w.bed.Link.Get(netem.AtoB)
	cfg.BlackholeUDP = true
	w.bed.Link.SetBoth(cfg)
	t0 := time.Now()
	lifted := t0.Add(w.o.wanBlackhole)
	var wg sync.WaitGroup
	var mu sync.Mutex // guards out[*].During
	for i, p := range paths {
		// A new client every second of the blackhole, each waiting as long
		// as it is let to (until 10 s after the end): what a user arriving
		// then sees.
		for at := time.Duration(0); at < w.o.wanBlackhole; at += time.Second {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if waitFor(ctx, time.Until(t0.Add(at))) != nil {
					return
				}
				start := time.Now()
				_, err := w.clientOnce(ctx, p.routes[routeEcho], time.Until(lifted)+10*time.Second)
				oc := ClientOutcome{AtSeconds: start.Sub(t0).Seconds(), Answered: err == nil, Seconds: time.Since(start).Seconds()}
				if err != nil {
					oc.Error = err.Error()
				}
				mu.Lock()
				out[i].During = append(out[i].During, oc)
				mu.Unlock()
			}()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i].RecoverySeconds = w.recovery(ctx, p, lifted)
		}()
	}
	if err := waitFor(ctx, w.o.wanBlackhole); err != nil {
		return err
	}
	cfg.BlackholeUDP = false
	w.bed.Link.SetBoth(cfg)
	wg.Wait()
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	for i := range out {
		slices.SortFunc(out[i].During, func(a, b ClientOutcome) int { return cmp.Compare(a.AtSeconds, b.AtSeconds) })
	}
	w.res.Blackhole = out
	w.stopSides(sides)
	sides = nil
	w.res.AutoStart = w.autoStart(ctx)
	if ctx.Err() != nil {
		return context.Cause(ctx)
	}
	return nil
}

// autoStart starts a listen side and a dial side on auto with UDP
// blackholed both ways and times the dial side until its first tunnel.
func (w *wanRun) autoStart(ctx context.Context) *AutoStart {
	cfg := w.bed.Link.Get(netem.AtoB)
	cfg.BlackholeUDP = true
	w.bed.Link.SetBoth(cfg)
	defer func() {
		cfg.BlackholeUDP = false
		w.bed.Link.SetBoth(cfg)
	}()
	start := time.Now()
	paths, sides, err := w.startSides(ctx, []string{modeAuto})
	defer w.stopSides(sides)
	res := &AutoStart{Seconds: time.Since(start).Seconds()}
	if err != nil {
		res.Error = err.Error()
		return res
	}
	// The listen side was up before the dial side started: take its part out.
	dial := paths[0].sides[0]
	res.Seconds = dial.ready.Sub(dial.started).Seconds()
	_, r, err := getReadiness(ctx, dial)
	if err != nil {
		res.Error = err.Error()
	} else if len(r.Tunnels) > 0 {
		res.Transport = r.Tunnels[0].Transport
	}
	return res
}

// recoveryBound is how long after a blackhole recovery is waited for.
const recoveryBound = 30 * time.Second

// recovery starts a new client through p every 100 ms from lifted on,
// each bounded to 3 s, and returns the seconds from lifted until the first
// is answered, or -1 if none is within recoveryBound.
func (w *wanRun) recovery(ctx context.Context, p *wanPath, lifted time.Time) float64 {
	if waitFor(ctx, time.Until(lifted)) != nil {
		return -1
	}
	answered := make(chan time.Time, 1)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	bound := time.NewTimer(recoveryBound)
	defer bound.Stop()
	for {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := w.clientOnce(ctx, p.routes[routeEcho], 3*time.Second); err == nil {
				select {
				case answered <- time.Now():
				default: // another was first
				}
			}
		}()
		select {
		case at := <-answered:
			return at.Sub(lifted).Seconds()
		case <-bound.C:
			return -1
		case <-ctx.Done():
			return -1
		case <-tick.C:
		}
	}
}
