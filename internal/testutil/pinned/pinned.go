// Package pinned gives tests two pqtunnel sides that accept each other by
// their pins: fresh hybrid identities (auth/pinned) and hybridtls stores
// built on them. Only tests may import it; hybridtls's own tests, which it
// cannot serve (it imports hybridtls), build theirs from the same calls.
// Tests that also use auth/pinned import this package as pinnedtest.
package pinned

import (
	"testing"

	"github.com/pqtunnel/pqtunnel/auth/pinned"
	"github.com/pqtunnel/pqtunnel/hybridtls"
)

// Identities returns two new hybrid identities.
func Identities(t testing.TB) (a, b *pinned.Identity) {
	t.Helper()
	a, err := pinned.GenerateIdentity()
	if err != nil {
		t.Fatal(err)
	}
	b, err = pinned.GenerateIdentity()
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
	a, err := hybridtls.NewStore(p, &pinned.Authenticator{Identity: ida, Peers: []pinned.Pin{idb.Pin}})
	if err != nil {
		t.Fatal(err)
	}
	b, err = hybridtls.NewStore(p, &pinned.Authenticator{Identity: idb, Peers: []pinned.Pin{ida.Pin}})
	if err != nil {
		t.Fatal(err)
	}
	return a, b
}
