//go:build linux

package wan

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/pqtunnel/pqtunnel/integration/wan/netem"
)

// Addresses of the two ends, inside their namespaces only.
const (
	AddrA  = "10.200.0.1"
	AddrB  = "10.200.0.2"
	prefix = "/24"
	// Device is the TUN device's name in each namespace.
	Device = "pqt0"
	// MTU of both TUN devices, an Ethernet path's.
	MTU = 1500
)

// namePrefix starts the name of every namespace this package makes; the
// process id follows, so stale ones from a killed run can be told apart.
const namePrefix = "pqtwan-"

// Available says why the bed cannot be built here, or nil if it can.
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("the WAN test bed needs root (network namespaces and TUN devices)")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("the WAN test bed needs iproute2's ip: %w", err)
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return fmt.Errorf("the WAN test bed needs /dev/net/tun: %w", err)
	}
	return nil
}

// Namespace is one end of the bed.
type Namespace struct {
	// Name is the namespace's name for 'ip netns'.
	Name string
	// Addr is its address on the link.
	Addr string
}

// Bed is two namespaces and the link between them. A is the client's end
// (dial sides), B the server's (listen sides, origins) by convention only.
type Bed struct {
	A, B *Namespace
	Link *netem.Link
}

var seq atomic.Int64

// New makes the namespaces, their TUN devices and the link; tag goes into
// the namespace names. On error nothing is left behind.
func New(ctx context.Context, tag string) (_ *Bed, err error) {
	if err := Available(); err != nil {
		return nil, err
	}
	removeStale(ctx)
	base := fmt.Sprintf("%s%d-%d-%s", namePrefix, os.Getpid(), seq.Add(1), tag)
	b := &Bed{A: &Namespace{Name: base + "-a", Addr: AddrA}, B: &Namespace{Name: base + "-b", Addr: AddrB}}
	var made []*Namespace
	var tuns []*os.File
	defer func() {
		if err != nil {
			for _, f := range tuns {
				_ = f.Close() // cleaning up after err
			}
			for _, n := range made {
				_ = n.remove(context.WithoutCancel(ctx)) // cleaning up after err
			}
		}
	}()
	for _, n := range []*Namespace{b.A, b.B} {
		if err := ip(ctx, "netns", "add", n.Name); err != nil {
			return nil, err
		}
		made = append(made, n)
		tun, err := n.openTUN()
		if err != nil {
			return nil, err
		}
		tuns = append(tuns, tun)
		for _, args := range [][]string{
			{"link", "set", "lo", "up"},
			{"addr", "add", n.Addr + prefix, "dev", Device},
			// A long transmit queue: a burst that the emulator is slow to read
			// waits there instead of being dropped before the link sees it.
			{"link", "set", Device, "mtu", strconv.Itoa(MTU), "txqueuelen", "10000", "up"},
		} {
			if err := ip(ctx, append([]string{"-n", n.Name}, args...)...); err != nil {
				return nil, err
			}
		}
	}
	b.Link = netem.New(tuns[0], tuns[1], uint64(os.Getpid()))
	return b, nil
}

// Close stops the link and removes both namespaces (and with them their
// devices). Processes still running inside must be stopped first, or the
// namespace lives on until they exit.
func (b *Bed) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return errors.Join(b.Link.Close(), b.A.remove(ctx), b.B.remove(ctx))
}

func (n *Namespace) remove(ctx context.Context) error {
	return ip(ctx, "netns", "delete", n.Name)
}

// removeStale deletes namespaces of this package whose process is gone:
// what a killed run left.
func removeStale(ctx context.Context) {
	entries, err := os.ReadDir("/run/netns")
	if err != nil {
		return // none yet
	}
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), namePrefix)
		if !ok {
			continue
		}
		pidText, _, _ := strings.Cut(rest, "-")
		pid, err := strconv.Atoi(pidText)
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
			_ = ip(ctx, "netns", "delete", e.Name()) // best effort: a leftover
		}
	}
}

func ip(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, "ip", args...)
	cmd.WaitDelay = time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Do runs f on an OS thread that has entered n, so that sockets and files
// that f creates belong to n for their whole life. The thread goes back to
// its own namespace after; if it cannot, it is thrown away. Threads are
// kept rather than always thrown away because a child started with
// Pdeathsig is killed when the thread that started it exits, and any
// goroutine may have started one on this thread before.
func (n *Namespace) Do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		own, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open this thread's namespace: %w", err)
			return
		}
		defer unix.Close(own)
		if err := setns(filepath.Join("/run/netns", n.Name)); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter namespace %s: %w", n.Name, err)
			return
		}
		ferr := f()
		if err := unix.Setns(own, unix.CLONE_NEWNET); err == nil {
			runtime.UnlockOSThread()
		} // else the thread stays locked, and the runtime ends it with this goroutine
		errc <- ferr
	}()
	return <-errc
}

// setns moves the calling thread into the network namespace at path.
func setns(path string) error {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Setns(fd, unix.CLONE_NEWNET)
}

// openTUN creates the TUN device of n (no packet information header) and
// returns its file, which reads and writes one IP packet per call through
// the runtime's poller, so that Close ends a blocked Read.
func (n *Namespace) openTUN() (*os.File, error) {
	var f *os.File
	err := n.Do(func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open /dev/net/tun: %w", err)
		}
		ifr, err := unix.NewIfreq(Device)
		if err == nil {
			ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
			err = unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr)
		}
		if err != nil {
			_ = unix.Close(fd) // the error is what matters
			return fmt.Errorf("create TUN %s in %s: %w", Device, n.Name, err)
		}
		f = os.NewFile(uintptr(fd), "tun:"+n.Name)
		return nil
	})
	return f, err
}

// Dial connects from inside n.
func (n *Namespace) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	return n.DialWith(ctx, &net.Dialer{}, network, addr)
}

// DialWith connects from inside n with d.
func (n *Namespace) DialWith(ctx context.Context, d *net.Dialer, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Do(func() error {
		var err error
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Listen listens inside n.
func (n *Namespace) Listen(ctx context.Context, lc *net.ListenConfig, network, addr string) (net.Listener, error) {
	var ln net.Listener
	err := n.Do(func() error {
		var err error
		ln, err = lc.Listen(ctx, network, addr)
		return err
	})
	return ln, err
}

// Command is name with args run inside n by 'ip netns exec', which execs
// it: the process's id is that of the program itself.
func (n *Namespace) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// HTTPClient is an HTTP client whose connections are made inside n.
func (n *Namespace) HTTPClient(timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{
		DialContext:       n.Dial,
		DisableKeepAlives: true,
	}}
}
