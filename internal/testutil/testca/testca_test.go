package testca

import (
	"crypto/mldsa"
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"
)

// TestIssueVerifiesThroughIntermediates issues a leaf under an ML-DSA
// intermediate of a classical root and checks that the chain it presents,
// read back from the files Save writes, verifies against the root's pool
// for the names and usages asked for.
func TestIssueVerifiesThroughIntermediates(t *testing.T) {
	dir := t.TempDir()
	root := New(t, "root").Save(t, dir)
	inter := root.Intermediate(t, "inter", MLDSA87)
	leaf := inter.Issue(t, Leaf{DNS: []string{"a.test"}, URIs: []string{"spiffe://test/a"}, Key: MLDSA65}).Save(t, dir, "leaf")

	if leaf.Leaf.Subject.CommonName != "a.test" {
		t.Errorf("CN = %q, want the first DNS name", leaf.Leaf.Subject.CommonName)
	}
	if _, ok := leaf.PrivateKey.(*mldsa.PrivateKey); !ok {
		t.Errorf("leaf key is %T, want ML-DSA", leaf.PrivateKey)
	}
	loaded, err := tls.LoadX509KeyPair(leaf.CertPath, leaf.KeyPath)
	if err != nil {
		t.Fatal(err)
	}
	if len(loaded.Certificate) != 2 {
		t.Fatalf("the certificate file holds %d certificates, want leaf and intermediate", len(loaded.Certificate))
	}
	inters := x509.NewCertPool()
	im, err := x509.ParseCertificate(loaded.Certificate[1])
	if err != nil {
		t.Fatal(err)
	}
	inters.AddCert(im)
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := loaded.Leaf.Verify(x509.VerifyOptions{Roots: root.Pool, Intermediates: inters, DNSName: "a.test", KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			t.Errorf("verify for %v: %v", usage, err)
		}
	}
	if root.Path == "" {
		t.Error("Save left Path empty")
	}
}

// TestIssueValidity checks that the zero validity is current and that an
// explicit one is kept.
func TestIssueValidity(t *testing.T) {
	ca := New(t, "root")
	now := time.Now()
	if c := ca.Issue(t, Leaf{DNS: []string{"a.test"}}).Leaf; !c.NotBefore.Before(now) || !c.NotAfter.After(now) {
		t.Errorf("default validity %s to %s does not cover now", c.NotBefore, c.NotAfter)
	}
	expired := ca.Issue(t, Leaf{DNS: []string{"a.test"}, NotBefore: now.Add(-48 * time.Hour), NotAfter: now.Add(-24 * time.Hour)}).Leaf
	if _, err := expired.Verify(x509.VerifyOptions{Roots: ca.Pool, DNSName: "a.test"}); err == nil {
		t.Error("a leaf that expired a day ago verifies")
	}
}
