package auth

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/mldsa"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"fmt"
)

// ChainMLDSA87 reports whether every key of chain is ML-DSA-87 and every
// certificate below the root is signed with ML-DSA-87, as CNSA 2.0 asks;
// a pinned identity's chain is its certificate alone, whose Ed25519
// self-signature nobody relies on.
func ChainMLDSA87(chain []*x509.Certificate) (ok bool, why string) {
	return checkChain(chain,
		func(k *mldsa.PublicKey) bool { return k.Parameters() == mldsa.MLDSA87() },
		func(a x509.SignatureAlgorithm) bool { return a == x509.MLDSA87 })
}

// ChainPQ reports whether a verified chain (leaf first, trusted root last)
// is post-quantum end to end: every key in it is ML-DSA, so every signature
// from the leaf's CertificateVerify up to the root is ML-DSA. The root's
// signature on itself is not checked by anyone and does not count. When
// the chain is not, why says which certificate is classical.
func ChainPQ(chain []*x509.Certificate) (pq bool, why string) {
	return checkChain(chain, func(*mldsa.PublicKey) bool { return true }, isMLDSASignature)
}

// checkChain reports whether every key of chain is an ML-DSA key that
// keyOK accepts and every certificate below the root carries a signature
// sigOK accepts; when not, why names the first certificate at fault.
func checkChain(chain []*x509.Certificate, keyOK func(*mldsa.PublicKey) bool, sigOK func(x509.SignatureAlgorithm) bool) (ok bool, why string) {
	if len(chain) == 0 {
		return false, "no verified chain"
	}
	for i, c := range chain {
		if k, isML := c.PublicKey.(*mldsa.PublicKey); !isML || !keyOK(k) {
			return false, fmt.Sprintf("%s %q: %s key", chainRole(i, len(chain)), CertName(c), KeyName(c.PublicKey))
		}
		if i < len(chain)-1 && !sigOK(c.SignatureAlgorithm) {
			return false, fmt.Sprintf("%s %q: signed with %s", chainRole(i, len(chain)), CertName(c), c.SignatureAlgorithm)
		}
	}
	return true, ""
}

func chainRole(i, n int) string {
	switch i {
	case 0:
		return "leaf"
	case n - 1:
		return "root"
	}
	return "intermediate"
}

func isMLDSASignature(a x509.SignatureAlgorithm) bool {
	return a == x509.MLDSA44 || a == x509.MLDSA65 || a == x509.MLDSA87
}

// CertName is how messages, and CA mode's peer names, name a
// certificate: its first URI, else its first DNS name, else its common name.
func CertName(c *x509.Certificate) string {
	switch {
	case len(c.URIs) > 0:
		return c.URIs[0].String()
	case len(c.DNSNames) > 0:
		return c.DNSNames[0]
	}
	return c.Subject.CommonName
}

// KeyName names a certificate's public key type for messages: ML-DSA-65,
// Ed25519, ECDSA P-256, RSA-2048.
func KeyName(pub any) string {
	switch k := pub.(type) {
	case *mldsa.PublicKey:
		return k.Parameters().String()
	case ed25519.PublicKey:
		return "Ed25519"
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case *rsa.PublicKey:
		return fmt.Sprintf("RSA-%d", k.Size()*8)
	}
	return fmt.Sprintf("%T", pub)
}

// SignatureScheme is the TLS 1.3 CertificateVerify scheme a certificate's
// key allows: crypto/tls refuses any other from its holder. Zero for keys
// with several possible schemes (RSA).
func SignatureScheme(cert *x509.Certificate) tls.SignatureScheme {
	switch k := cert.PublicKey.(type) {
	case *mldsa.PublicKey:
		switch k.Parameters() {
		case mldsa.MLDSA44():
			return tls.MLDSA44
		case mldsa.MLDSA65():
			return tls.MLDSA65
		case mldsa.MLDSA87():
			return tls.MLDSA87
		}
	case ed25519.PublicKey:
		return tls.Ed25519
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return tls.ECDSAWithP256AndSHA256
		case elliptic.P384():
			return tls.ECDSAWithP384AndSHA384
		case elliptic.P521():
			return tls.ECDSAWithP521AndSHA512
		}
	}
	return 0
}

// SignatureSchemeName is the standard name of a scheme for logs:
// ML-DSA-65, Ed25519, ECDSA-P256-SHA256; "unknown" for zero.
func SignatureSchemeName(s tls.SignatureScheme) string {
	switch s {
	case tls.MLDSA44:
		return "ML-DSA-44"
	case tls.MLDSA65:
		return "ML-DSA-65"
	case tls.MLDSA87:
		return "ML-DSA-87"
	case tls.Ed25519:
		return "Ed25519"
	case tls.ECDSAWithP256AndSHA256:
		return "ECDSA-P256-SHA256"
	case tls.ECDSAWithP384AndSHA384:
		return "ECDSA-P384-SHA384"
	case tls.ECDSAWithP521AndSHA512:
		return "ECDSA-P521-SHA512"
	case 0:
		return "unknown"
	}
	return s.String()
}
