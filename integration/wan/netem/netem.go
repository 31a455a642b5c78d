// Package netem moves packets between two packet devices (TUN devices in two
// network namespaces, or the in-memory ports of tests) with the impairments
// of a wide-area link, per direction: one-way delay, jitter, random loss, a
// rate cap with a bounded queue (tail drop), and blackholes. It stands in
// for the kernel's sch_netem, which is not available everywhere.
//
//	l := netem.New(tunA, tunB, 1)
//	l.SetBoth(netem.Config{Delay: 10 * time.Millisecond, RateBits: 200e6, QueueBytes: 1 << 20})
//	defer l.Close()
//
// It does not reorder: jitter varies the delay of each packet, but a packet
// never leaves before the one read ahead of it. It does not fragment,
// duplicate or corrupt.
package netem

import (
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// Port is one end of the link. Each Read returns one whole packet and each
// Write sends one; Close makes a blocked Read return an error.
type Port = io.ReadWriteCloser

// Config is what one direction of the link does to the packets read from
// its source port. The zero value passes every packet at once.
type Config struct {
	// Delay is the one-way propagation delay added to every packet.
	Delay time.Duration
	// Jitter adds a uniform random amount in [-Jitter, +Jitter] to Delay
	// (never below zero, never reordering).
	Jitter time.Duration
	// Loss is the probability, 0 to 1, that a packet is dropped.
	Loss float64
	// RateBits caps the link at this many bits per second, each packet
	// leaving after the previous one has been serialised; zero is no cap.
	RateBits int64
	// QueueBytes bounds the bytes waiting for the rate cap: a packet that
	// would exceed it is dropped (tail drop). Zero takes DefaultQueueBytes;
	// it means nothing without RateBits.
	QueueBytes int
	// Blackhole drops every packet.
	Blackhole bool
	// BlackholeUDP drops every UDP packet (IPv4 or IPv6) and passes the rest.
	BlackholeUDP bool
	// BlackholeTCPData drops every TCP segment that carries data and passes
	// those that carry none: acknowledgements, window updates, keep-alive
	// probes, SYN and FIN. The kernel on the far side still acknowledges
	// what it gets, while whatever the processes send is lost.
	BlackholeTCPData bool
}

// DefaultQueueBytes is the queue bound when Config.QueueBytes is zero.
const DefaultQueueBytes = 256 << 10

// Dir names a direction: AtoB carries what port a reads to port b.
type Dir int

// The two directions.
const (
	AtoB Dir = iota
	BtoA
)

func (d Dir) String() string {
	if d == AtoB {
		return "a→b"
	}
	return "b→a"
}

// Stats counts what one direction did since the link started.
type Stats struct {
	Packets   uint64 // read from the source port
	Bytes     uint64
	Delivered uint64 // written to the destination port
	// Dropped by cause: random loss, full queue, blackhole, and the delay
	// line being full (MaxInFlight packets on the wire at once).
	DroppedLoss, DroppedQueue, DroppedBlackhole, DroppedOverflow uint64
	// WriteErrors are packets the destination port refused.
	WriteErrors uint64
	// MaxQueueBytes is the largest queue the rate cap built up.
	MaxQueueBytes int64
}

// MaxInFlight bounds the packets of one direction between being read and
// being written: the delay line plus the queue. 32768 packets of 1500 bytes
// hold 200 Mbit/s for two seconds.
const MaxInFlight = 32768

// maxPacket is the largest packet a port may return: an MTU of up to 64 KiB.
// A packet is read into a buffer of that size and copied into a pooled one
// of smallPacket bytes (larger ones are allocated), so the delay line holds
// no more memory than its packets need.
const (
	maxPacket   = 65535
	smallPacket = 2048
)

// Link is a running emulator between two ports. Its methods are safe for
// concurrent use.
type Link struct {
	dirs  [2]*direction
	ports [2]Port
	done  chan struct{}
	wg    sync.WaitGroup

	closeOnce sync.Once
	mu        sync.Mutex
	threads   map[int]time.Duration // thread id → its CPU time when pinned
	exitedCPU time.Duration         // CPU of routines that have ended
}

type packet struct {
	buf *[]byte
	n   int
	due time.Time
}

// direction is one way through the link. Only its read routine touches the
// scheduling state (rng, busyUntil, lastDue); the counters are atomic.
type direction struct {
	cfg  atomic.Pointer[Config]
	line chan packet

	rng       *rand.Rand
	busyUntil time.Time // when the rate cap has serialised everything queued
	lastDue   time.Time

	packets, bytes, delivered                     atomic.Uint64
	dropLoss, dropQueue, dropBlackhole, dropOverf atomic.Uint64
	writeErrors                                   atomic.Uint64
	maxQueue                                      atomic.Int64
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, smallPacket); return &b }}

func getBuf(n int) *[]byte {
	if n > smallPacket {
		b := make([]byte, n)
		return &b
	}
	return bufPool.Get().(*[]byte)
}

func putBuf(b *[]byte) {
	if cap(*b) == smallPacket {
		bufPool.Put(b)
	}
}

// New starts moving packets between a and b, both directions passing
// everything until Set says otherwise. seed makes loss and jitter
// reproducible. The link owns the ports: Close closes them.
func New(a, b Port, seed uint64) *Link {
	l := &Link{ports: [2]Port{a, b}, done: make(chan struct{}), threads: map[int]time.Duration{}}
	for i := range l.dirs {
		d := &direction{line: make(chan packet, MaxInFlight), rng: rand.New(rand.NewPCG(seed, uint64(i)))}
		d.cfg.Store(&Config{})
		l.dirs[i] = d
	}
	for i, d := range l.dirs {
		src, dst := l.ports[i], l.ports[1-i]
		l.wg.Add(2)
		go l.routineRead(d, src)
		go l.routineWrite(d, dst)
	}
	return l
}

// Set replaces the configuration of one direction; packets already read
// keep the schedule they were given.
func (l *Link) Set(d Dir, c Config) {
	if c.QueueBytes <= 0 {
		c.QueueBytes = DefaultQueueBytes
	}
	l.dirs[d].cfg.Store(&c)
}

// SetBoth gives both directions c.
func (l *Link) SetBoth(c Config) {
	l.Set(AtoB, c)
	l.Set(BtoA, c)
}

// Get returns the configuration of one direction.
func (l *Link) Get(d Dir) Config { return *l.dirs[d].cfg.Load() }

// Stats returns the counters of one direction.
func (l *Link) Stats(d Dir) Stats {
	x := l.dirs[d]
	return Stats{
		Packets: x.packets.Load(), Bytes: x.bytes.Load(), Delivered: x.delivered.Load(),
		DroppedLoss: x.dropLoss.Load(), DroppedQueue: x.dropQueue.Load(),
		DroppedBlackhole: x.dropBlackhole.Load(), DroppedOverflow: x.dropOverf.Load(),
		WriteErrors: x.writeErrors.Load(), MaxQueueBytes: x.maxQueue.Load(),
	}
}

// Close stops both directions, closes both ports and waits for the
// routines; packets in flight are dropped. It is idempotent.
func (l *Link) Close() error {
	var err error
	l.closeOnce.Do(func() {
		close(l.done)
		err = errors.Join(l.ports[0].Close(), l.ports[1].Close())
		l.wg.Wait()
	})
	return err
}

// routineRead reads packets from src and schedules each on d's delay line,
// or drops it.
func (l *Link) routineRead(d *direction, src Port) {
	defer l.wg.Done()
	defer l.pin()()
	defer close(d.line)
	scratch := make([]byte, maxPacket)
	for {
		n, err := src.Read(scratch)
		if err != nil {
			return // closed: the only way a port read ends
		}
		if n == 0 {
			continue
		}
		due, ok := d.schedule(scratch[:n], time.Now())
		if !ok {
			continue
		}
		bp := getBuf(n)
		copy(*bp, scratch[:n])
		select {
		case d.line <- packet{bp, n, due}:
		default:
			d.dropOverf.Add(1)
			putBuf(bp)
		}
	}
}

// schedule decides the fate of pkt read at now: when it is to be written,
// or false to drop it.
func (d *direction) schedule(pkt []byte, now time.Time) (time.Time, bool) {
	c := d.cfg.Load()
	n := len(pkt)
	d.packets.Add(1)
	d.bytes.Add(uint64(n))
	if c.Blackhole || (c.BlackholeUDP && isUDP(pkt)) || (c.BlackholeTCPData && tcpPayload(pkt) > 0) {
		d.dropBlackhole.Add(1)
		return time.Time{}, false
	}
	if c.Loss > 0 && d.rng.Float64() < c.Loss {
		d.dropLoss.Add(1)
		return time.Time{}, false
	}
	depart := now
	if c.RateBits > 0 {
		start := now
		var queued int64
		if d.busyUntil.After(now) {
			start = d.busyUntil
			queued = int64(d.busyUntil.Sub(now).Seconds() * float64(c.RateBits) / 8)
		}
		if queued+int64(n) > int64(c.QueueBytes) {
			d.dropQueue.Add(1)
			return time.Time{}, false
		}
		if q := queued + int64(n); q > d.maxQueue.Load() {
			d.maxQueue.Store(q) // only this routine writes it
		}
		d.busyUntil = start.Add(time.Duration(float64(n*8) / float64(c.RateBits) * float64(time.Second)))
		depart = d.busyUntil
	}
	delay := c.Delay
	if c.Jitter > 0 {
		delay += time.Duration(d.rng.Int64N(int64(2*c.Jitter)+1)) - c.Jitter
	}
	due := depart.Add(max(delay, 0))
	if due.Before(d.lastDue) {
		due = d.lastDue
	}
	d.lastDue = due
	return due, true
}

// UDP's and TCP's protocol numbers in the IPv4 and IPv6 headers.
const (
	ipProtoUDP = 17
	ipProtoTCP = 6
)

// isUDP reports whether pkt is an IPv4 or IPv6 packet carrying UDP (an
// IPv6 extension header in front of it is not looked through).
func isUDP(pkt []byte) bool {
	if len(pkt) < 1 {
		return false
	}
	switch pkt[0] >> 4 {
	case 4:
		return len(pkt) >= 20 && pkt[9] == ipProtoUDP
	case 6:
		return len(pkt) >= 40 && pkt[6] == ipProtoUDP
	}
	return false
}

// routineWrite writes each packet of d's delay line to dst when it is due.
func (l *Link) routineWrite(d *direction, dst Port) {
	defer l.wg.Done()
	defer l.pin()()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for p := range d.line {
		if wait := time.Until(p.due); wait > 0 {
			timer.Reset(wait)
			select {
			case <-timer.C:
			case <-l.done:
				putBuf(p.buf)
				l.drain(d)
				return
			}
		}
		if _, err := dst.Write((*p.buf)[:p.n]); err != nil {
			d.writeErrors.Add(1)
		} else {
			d.delivered.Add(1)
		}
		putBuf(p.buf)
	}
}

// drain empties d's delay line until its read routine closes it.
func (l *Link) drain(d *direction) {
	for p := range d.line {
		putBuf(p.buf)
	}
}

// tcpPayload is the number of data bytes of pkt when it is an IPv4 or IPv6
// packet carrying a TCP segment, and 0 otherwise (an IPv6 extension header
// in front of it is not looked through, and a truncated or inconsistent
// header counts as no data).
func tcpPayload(pkt []byte) int {
	if len(pkt) < 1 {
		return 0
	}
	var ipHeader, ipTotal int
	switch pkt[0] >> 4 {
	case 4:
		if len(pkt) < 20 || pkt[9] != ipProtoTCP {
			return 0
		}
		ipHeader = int(pkt[0]&0x0f) * 4
		ipTotal = int(binary.BigEndian.Uint16(pkt[2:4]))
	case 6:
		if len(pkt) < 40 || pkt[6] != ipProtoTCP {
			return 0
		}
		ipHeader = 40
		ipTotal = 40 + int(binary.BigEndian.Uint16(pkt[4:6]))
	default:
		return 0
	}
	if ipHeader < 20 || len(pkt) < ipHeader+13 || ipTotal > len(pkt) {
		return 0
	}
	tcpHeader := int(pkt[ipHeader+12]>>4) * 4
	return max(ipTotal-ipHeader-tcpHeader, 0)
}
