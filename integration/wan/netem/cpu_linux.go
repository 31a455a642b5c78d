package netem

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// pin locks the calling routine to its thread, so that its CPU time can be
// read per thread, and returns a function to call when it ends.
func (l *Link) pin() func() {
	runtime.LockOSThread()
	tid := unix.Gettid()
	l.mu.Lock()
	// The thread may have run other goroutines before: count from now.
	l.threads[tid] = threadCPU(tid)
	l.mu.Unlock()
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		l.exitedCPU += threadCPU(tid) - l.threads[tid]
		delete(l.threads, tid)
		// The thread stays locked: it exits with the routine.
	}
}

// CPU is the CPU time the link's routines have used: each runs on an OS
// thread of its own, whose time the kernel counts. Work that the Go runtime
// does on other threads for them (the network poller, garbage collection)
// is not included.
func (l *Link) CPU() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	total := l.exitedCPU
	for tid, base := range l.threads {
		total += threadCPU(tid) - base
	}
	return total
}

// threadCPU reads the time a thread of this process has run, from
// /proc/self/task/TID/schedstat (nanoseconds on the CPU, first field).
func threadCPU(tid int) time.Duration {
	b, err := os.ReadFile("/proc/self/task/" + strconv.Itoa(tid) + "/schedstat")
	if err != nil {
		return 0 // the thread is gone; its time was taken when it ended
	}
	f, _, _ := strings.Cut(string(b), " ")
	ns, err := strconv.ParseInt(f, 10, 64)
	if err != nil {
		return 0
	}
	return time.Duration(ns)
}
