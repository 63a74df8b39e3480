package auth

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
)

// minRSABits is the smallest RSA modulus accepted. RFC 7518 §3.3 says a key
// of 2048 bits or larger MUST be used with RS*, and Go's crypto/rsa refuses
// keys under 1024 bits at verification time anyway; rejecting small keys in
// New turns "every handshake fails with bad_signature" into one clear
// startup error.
const minRSABits = 2048

// The algorithm sets per key kind are passed to jwt.WithValidMethods, which
// is what stops "alg: none" and algorithm confusion (an HS256 token whose
// HMAC secret is the server's public key bytes): a token whose alg is not in
// the set for the configured key is rejected before any key is used. They are
// functions, not package variables, so no caller can mutate a shared slice.

func hmacMethods() []string    { return []string{"HS256", "HS384", "HS512"} }
func rsaMethods() []string     { return []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"} }
func ed25519Methods() []string { return []string{"EdDSA"} }

// ecdsaMethods pins ES* to the curve of the key, so an ES384 token against a
// P-256 key is reported as bad_algorithm rather than as a signature that
// happens not to verify.
func ecdsaMethods(k *ecdsa.PublicKey) ([]string, error) {
	switch k.Curve {
	case elliptic.P256():
		return []string{"ES256"}, nil
	case elliptic.P384():
		return []string{"ES384"}, nil
	case elliptic.P521():
		return []string{"ES512"}, nil
	}
	return nil, fmt.Errorf("ECDSA curve %s has no JWS algorithm (want P-256, P-384 or P-521)", k.Curve.Params().Name)
}

// LoadPublicKeyFile reads a PEM public key from path and checks that it is one
// New accepts, so a bad -jwt-public-key flag fails at startup with the file
// name in the message rather than at the first handshake. It returns the file
// contents unchanged, ready for Options.PublicKeyPEM.
func LoadPublicKeyFile(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("auth: read public key: %w", err)
	}
	if _, _, err := parsePublicKey(b); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrBadPublicKey, path, err)
	}
	return b, nil
}

// parsePublicKey decodes the first PEM block of b into a verification key in
// the form golang-jwt expects (*rsa.PublicKey, *ecdsa.PublicKey or
// ed25519.PublicKey) and the algorithms that key may verify. Errors carry no
// "auth:" prefix; callers wrap them with ErrBadPublicKey.
//
// It accepts "PUBLIC KEY" (PKIX, any supported type), "RSA PUBLIC KEY"
// (PKCS #1) and "CERTIFICATE" (the certificate's key; the certificate itself
// is not validated, it is only a container some key tooling emits).
func parsePublicKey(b []byte) (key any, methods []string, err error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, nil, errors.New("no PEM block found")
	}
	var pub any
	switch {
	case block.Type == "PUBLIC KEY":
		pub, err = x509.ParsePKIXPublicKey(block.Bytes)
	case block.Type == "RSA PUBLIC KEY":
		pub, err = x509.ParsePKCS1PublicKey(block.Bytes)
	case block.Type == "CERTIFICATE":
		var cert *x509.Certificate
		if cert, err = x509.ParseCertificate(block.Bytes); err == nil {
			pub = cert.PublicKey
		}
	case strings.Contains(block.Type, "PRIVATE KEY"):
		// Say so explicitly: handing the server its signing key is an easy
		// mistake, and the server must never hold it.
		return nil, nil, fmt.Errorf("PEM block is %q, a private key; configure the public key instead", block.Type)
	default:
		return nil, nil, fmt.Errorf("unsupported PEM block type %q (want PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE)", block.Type)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("parse %s: %w", block.Type, err)
	}

	switch k := pub.(type) {
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < minRSABits {
			return nil, nil, fmt.Errorf("RSA key is %d bits, need at least %d", n, minRSABits)
		}
		return k, rsaMethods(), nil
	case *ecdsa.PublicKey:
		m, err := ecdsaMethods(k)
		if err != nil {
			return nil, nil, err
		}
		return k, m, nil
	case ed25519.PublicKey:
		return k, ed25519Methods(), nil
	}
	return nil, nil, fmt.Errorf("unsupported public key type %T (want RSA, ECDSA or Ed25519)", pub)
}
