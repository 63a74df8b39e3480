package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Token is what Sign puts in a token.
type Token struct {
	// Subject is the sub claim, the user id. Required.
	Subject string
	// Name is the optional name claim, a display name.
	Name string
	// Issuer and Audience are the iss and aud claims, if set.
	Issuer   string
	Audience []string
	// TTL sets exp to IssuedAt plus TTL. If zero, the token has no exp (which a
	// Verifier refuses unless Options.AllowNoExp).
	TTL time.Duration
	// IssuedAt is the iat claim. If zero, time.Now is used. Truncated to
	// whole seconds, as NumericDates are.
	IssuedAt time.Time
	// Extra are further claims. They may not replace the ones above, nor nbf
	// and jti's neighbours exp and iat.
	Extra map[string]any
}

// reservedClaims are the claims Token's own fields set.
var reservedClaims = []string{"sub", "name", "iss", "aud", "exp", "iat", "nbf"}

// Sign signs t with key under alg: an HMAC secret ([]byte) for HS256/384/512,
// or a private key (*rsa.PrivateKey, *ecdsa.PrivateKey, ed25519.PrivateKey)
// for RS*, PS*, ES* and EdDSA. An empty alg is HS256 for a secret and the
// key's natural algorithm otherwise (DefaultAlgorithm).
func Sign(t Token, alg string, key any) (string, error) {
	switch {
	case t.Subject == "":
		return "", ErrEmptySubject
	case t.TTL < 0:
		return "", ErrNegativeTTL
	}
	if secret, ok := key.([]byte); ok && len(secret) == 0 {
		return "", ErrEmptySecret
	}
	if alg == "" {
		var err error
		if alg, err = DefaultAlgorithm(key); err != nil {
			return "", err
		}
	}
	method := jwt.GetSigningMethod(alg)
	if method == nil || alg == "none" {
		return "", fmt.Errorf("auth: unknown algorithm %q", alg)
	}
	if err := keyFits(alg, key); err != nil {
		return "", err
	}
	now := t.IssuedAt
	if now.IsZero() {
		now = time.Now()
	}
	now = now.Truncate(time.Second)
	c := jwt.MapClaims{}
	for k, v := range t.Extra {
		if slices.Contains(reservedClaims, k) {
			return "", fmt.Errorf("auth: extra claim %q is set by its own option", k)
		}
		c[k] = v
	}
	c["sub"] = t.Subject
	c["iat"] = now.Unix()
	if t.TTL > 0 {
		c["exp"] = now.Add(t.TTL).Unix()
	}
	if t.Name != "" {
		c["name"] = t.Name
	}
	if t.Issuer != "" {
		c["iss"] = t.Issuer
	}
	switch len(t.Audience) {
	case 0:
	case 1:
		c["aud"] = t.Audience[0]
	default:
		c["aud"] = t.Audience
	}
	s, err := jwt.NewWithClaims(method, c).SignedString(key)
	if err != nil {
		return "", fmt.Errorf("auth: sign token: %w", err)
	}
	return s, nil
}

// DefaultAlgorithm is the algorithm Sign uses for key when none is named:
// HS256 for a secret, RS256 for RSA, ES256/384/512 by the ECDSA curve, EdDSA
// for Ed25519.
func DefaultAlgorithm(key any) (string, error) {
	switch k := key.(type) {
	case []byte:
		return "HS256", nil
	case *rsa.PrivateKey:
		return "RS256", nil
	case *ecdsa.PrivateKey:
		m, err := ecdsaMethods(&k.PublicKey)
		if err != nil {
			return "", err
		}
		return m[0], nil
	case ed25519.PrivateKey:
		return "EdDSA", nil
	}
	return "", fmt.Errorf("auth: unsupported signing key %T", key)
}

// keyFits checks that alg is one the key may sign with, so that a wrong
// --alg is named rather than failing inside the JWT library.
func keyFits(alg string, key any) error {
	var ok []string
	switch k := key.(type) {
	case []byte:
		ok = hmacMethods()
	case *rsa.PrivateKey:
		ok = rsaMethods()
	case *ecdsa.PrivateKey:
		m, err := ecdsaMethods(&k.PublicKey)
		if err != nil {
			return err
		}
		ok = m
	case ed25519.PrivateKey:
		ok = ed25519Methods()
	default:
		return fmt.Errorf("auth: unsupported signing key %T", key)
	}
	if !slices.Contains(ok, alg) {
		return fmt.Errorf("auth: algorithm %s does not fit this key (it signs %v)", alg, ok)
	}
	return nil
}

// LoadPrivateKeyFile reads a PEM private key (PKCS #8 "PRIVATE KEY", PKCS #1
// "RSA PRIVATE KEY" or SEC 1 "EC PRIVATE KEY") for Sign.
func LoadPrivateKeyFile(path string) (crypto.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("auth: read private key: %w", err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, fmt.Errorf("auth: %s: no PEM block found", path)
	}
	var k any
	switch block.Type {
	case "PRIVATE KEY":
		k, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("auth: %s: PEM block %q is not a private key (want PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)", path, block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("auth: %s: %w", path, err)
	}
	switch k := k.(type) {
	case *rsa.PrivateKey:
		if n := k.N.BitLen(); n < minRSABits {
			return nil, fmt.Errorf("auth: %s: RSA key is %d bits, need at least %d", path, n, minRSABits)
		}
		return k, nil
	case *ecdsa.PrivateKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() && k.Curve != elliptic.P521() {
			return nil, fmt.Errorf("auth: %s: ECDSA curve %s has no JWS algorithm", path, k.Curve.Params().Name)
		}
		return k, nil
	case ed25519.PrivateKey:
		return k, nil
	}
	return nil, errors.New("auth: " + path + ": unsupported private key type")
}
