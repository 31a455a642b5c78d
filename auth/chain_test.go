package auth

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"net/url"
	"testing"

	"github.com/pqtunnel/pqtunnel/internal/testutil/testca"
)

func TestChainPQ(t *testing.T) {
	ca := testca.NewRoot(t, "x root", testca.MLDSA65)
	leaf := ca.Issue(t, testca.Leaf{CN: "x leaf", DNS: []string{"x.test"}, Key: testca.MLDSA65})
	chains, err := leaf.Leaf.Verify(x509.VerifyOptions{Roots: ca.Pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	if err != nil {
		t.Fatal(err)
	}
	if pq, why := ChainPQ(chains[0]); !pq {
		t.Fatalf("ChainPQ(ML-DSA chain) = false, %s", why)
	}
	if pq, why := ChainPQ(nil); pq || why == "" {
		t.Errorf("ChainPQ(nil) = %v, %q", pq, why)
	}
	if pq, _ := ChainPQ([]*x509.Certificate{chains[0][0], testca.New(t, "ecdsa").Cert}); pq {
		t.Error("ChainPQ accepted an ECDSA root")
	}
}

func TestCertName(t *testing.T) {
	tests := []struct {
		cert *x509.Certificate
		want string
	}{
		{&x509.Certificate{Subject: pkix.Name{CommonName: "cn"}, DNSNames: []string{"d"}, URIs: []*url.URL{{Scheme: "spiffe", Host: "x"}}}, "spiffe://x"},
		{&x509.Certificate{Subject: pkix.Name{CommonName: "cn"}, DNSNames: []string{"d", "e"}}, "d"},
		{&x509.Certificate{Subject: pkix.Name{CommonName: "cn"}}, "cn"},
	}
	for _, tt := range tests {
		if got := CertName(tt.cert); got != tt.want {
			t.Errorf("CertName = %q, want %q", got, tt.want)
		}
	}
}
