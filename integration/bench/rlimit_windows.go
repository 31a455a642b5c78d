package main

// raiseFileLimit has nothing to raise on Windows, which has no
// RLIMIT_NOFILE: a process's sockets are bounded by memory, not a count.
func raiseFileLimit(want uint64) (uint64, error) { return want, nil }
