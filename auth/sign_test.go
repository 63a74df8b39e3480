package auth

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestSignVerifies: tokens Sign makes with each kind of key pass a Verifier
// configured with the public half, iss, aud and extra claims included.
func TestSignVerifies(t *testing.T) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		priv any
		pub  any
		alg  string // want
	}{
		{"rsa", rsaKey, &rsaKey.PublicKey, "RS256"},
		{"ecdsa", ecKey, &ecKey.PublicKey, "ES384"},
		{"ed25519", edKey, edKey.Public(), "EdDSA"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			der, _ := x509.MarshalPKCS8PrivateKey(tc.priv)
			keyFile := filepath.Join(dir, tc.name+".pem")
			os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
			priv, err := LoadPrivateKeyFile(keyFile)
			if err != nil {
				t.Fatal(err)
			}
			if alg, _ := DefaultAlgorithm(priv); alg != tc.alg {
				t.Fatalf("DefaultAlgorithm = %s, want %s", alg, tc.alg)
			}
			tok, err := Sign(Token{Subject: "alice", Name: "Alice", Issuer: "idp", Audience: []string{"chat"}, TTL: time.Hour,
				Extra: map[string]any{"role": "admin"}}, "", priv)
			if err != nil {
				t.Fatal(err)
			}
			pubDER, _ := x509.MarshalPKIXPublicKey(tc.pub)
			v, err := New(Options{PublicKeyPEM: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), Issuer: "idp", Audience: "chat"})
			if err != nil {
				t.Fatal(err)
			}
			c, err := v.Verify(tok)
			if err != nil || c.Subject != "alice" || c.Name != "Alice" || c.ExpiresAt.IsZero() {
				t.Fatalf("Verify = %+v, %v", c, err)
			}
			// A wrong issuer is refused: the claim is really there.
			v2, _ := New(Options{PublicKeyPEM: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), Issuer: "other"})
			if _, err := v2.Verify(tok); ReasonOf(err) != ReasonBadIssuer {
				t.Fatalf("wrong issuer: %v", err)
			}
		})
	}
	if _, err := Sign(Token{Subject: "a", TTL: time.Hour}, "RS256", []byte("0123456789abcdef")); err == nil {
		t.Error("RS256 with an HMAC secret was signed")
	}
	if _, err := Sign(Token{Subject: "a", TTL: time.Hour, Extra: map[string]any{"exp": 1}}, "", []byte("0123456789abcdef")); err == nil {
		t.Error("an extra claim replaced exp")
	}
	if _, err := Sign(Token{Subject: "a", TTL: time.Hour}, "none", []byte("0123456789abcdef")); err == nil {
		t.Error("alg none was signed")
	}
}
