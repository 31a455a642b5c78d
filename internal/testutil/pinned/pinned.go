// Package pinned gives tests two pqtunnel sides that accept each other by
// their pins: fresh hybrid identities and hybridtls stores built on them.
// Only tests may import it; hybridtls's own tests, which it cannot serve
// (it imports hybridtls), build theirs from the same calls.
package pinned

import (
	"testing"

	"github.com/pqtunnel/pqtunnel/hybridtls"
)

// Identities returns two new hybrid identities.
func Identities(t testing.TB) (a, b *hybridtls.Identity) {
	t.Helper()
	a, err := hybridtls.GenerateIdentity()
	if err != nil {
		t.Fatal(err)
	}
	b, err = hybridtls.GenerateIdentity()
	if err != nil {
		t.Fatal(err)
	}
	return a, b
}

// Stores returns stores for two sides that accept each other's pin, under
// the strict default policy with alpn as the application protocol.
func Stores(t testing.TB, alpn string) (a, b *hybridtls.Store) {
	t.Helper()
	ida, idb := Identities(t)
	p := hybridtls.Policy{Mode: hybridtls.Strict, Groups: hybridtls.DefaultGroups, ALPN: alpn}
	a, err := hybridtls.NewStore(p, &hybridtls.Material{Identity: ida, Peers: []hybridtls.Pin{idb.Pin}})
	if err != nil {
		t.Fatal(err)
	}
	b, err = hybridtls.NewStore(p, &hybridtls.Material{Identity: idb, Peers: []hybridtls.Pin{ida.Pin}})
	if err != nil {
		t.Fatal(err)
	}
	return a, b
}
