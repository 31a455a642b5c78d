// Package testutil holds what the tests of several packages, the
// integration tests and the benchmark harness share: a TCP echo origin, a
// connected loopback TCP pair, free ports, and the start, output capture
// and reaping of child processes. It imports nothing of pqtunnel but
// internal/childproc, so that any package's tests can use it; only tests
// and the harness under integration/ may import it.
//
// Certificates for tests are in the sibling package testca, a pinned pair
// of hybridtls stores in pinned.
package testutil
