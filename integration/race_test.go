//go:build race

package integration

// raceEnabled says the test binary was built with -race, so the pqtunnel
// binary under test is built with it too.
const raceEnabled = true
