package auth

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fixedNow is the instant every test's injected clock reports. Whole seconds,
// because JWT NumericDates are.
func fixedNow() time.Time { return time.Date(2026, 3, 14, 15, 9, 26, 0, time.UTC) }

func fixedClock() func() time.Time {
	now := fixedNow()
	return func() time.Time { return now }
}

// keySet holds one key pair per supported public-key family, PEM-encoded the
// way an operator would hand the public half to throng.
type keySet struct {
	rsa            *rsa.PrivateKey
	rsaPEM         []byte
	ec256, ec384   *ecdsa.PrivateKey
	ec256PEM       []byte
	ec384PEM       []byte
	ed, edOther    ed25519.PrivateKey
	edPEM          []byte
	ec256OtherPriv *ecdsa.PrivateKey
}

func newKeySet(t testing.TB) *keySet {
	t.Helper()
	var (
		k   keySet
		err error
	)
	if k.rsa, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		t.Fatal(err)
	}
	if k.ec256, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		t.Fatal(err)
	}
	if k.ec256OtherPriv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		t.Fatal(err)
	}
	if k.ec384, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader); err != nil {
		t.Fatal(err)
	}
	if _, k.ed, err = ed25519.GenerateKey(rand.Reader); err != nil {
		t.Fatal(err)
	}
	if _, k.edOther, err = ed25519.GenerateKey(rand.Reader); err != nil {
		t.Fatal(err)
	}
	k.rsaPEM = pemPublic(t, &k.rsa.PublicKey)
	k.ec256PEM = pemPublic(t, &k.ec256.PublicKey)
	k.ec384PEM = pemPublic(t, &k.ec384.PublicKey)
	k.edPEM = pemPublic(t, k.ed.Public())
	return &k
}

func pemPublic(t testing.TB, pub any) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

func pemPrivate(t testing.TB, priv any) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func sign(t testing.TB, m jwt.SigningMethod, key any, c jwt.Claims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(m, c).SignedString(key)
	if err != nil {
		t.Fatalf("sign %s: %v", m.Alg(), err)
	}
	return s
}

// claims returns sub=alice, iat=now, exp=now+1h, then applies overrides as
// key/value pairs; a nil value deletes the claim.
func claims(kv ...any) jwt.MapClaims {
	now := fixedNow()
	c := jwt.MapClaims{"sub": "alice", "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
	for i := 0; i+1 < len(kv); i += 2 {
		k := kv[i].(string)
		if kv[i+1] == nil {
			delete(c, k)
		} else {
			c[k] = kv[i+1]
		}
	}
	return c
}

func unix(d time.Duration) int64 { return fixedNow().Add(d).Unix() }

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

func TestVerify(t *testing.T) {
	k := newKeySet(t)
	secret := []byte("0123456789abcdef0123456789abcdef")
	hs := Options{Secret: secret}
	rs := Options{PublicKeyPEM: k.rsaPEM}
	es256 := Options{PublicKeyPEM: k.ec256PEM}
	es384 := Options{PublicKeyPEM: k.ec384PEM}
	ed := Options{PublicKeyPEM: k.edPEM}
	withIss := func(o Options, iss string) Options { o.Issuer = iss; return o }
	withAud := func(o Options, aud string) Options { o.Audience = aud; return o }
	withLeeway := func(o Options, d time.Duration) Options { o.Leeway = d; return o }

	hs256 := func(c jwt.Claims) string { return sign(t, jwt.SigningMethodHS256, secret, c) }
	valid := hs256(claims())
	parts := strings.Split(valid, ".")

	none := func(c jwt.Claims) string { return sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, c) }
	// The classic confusion attack: the server's public key is public, so
	// an attacker HMACs a token with its PEM bytes and hopes the verifier
	// hands those same bytes to HS256.
	confused := sign(t, jwt.SigningMethodHS256, k.rsaPEM, claims("sub", "admin"))

	cases := []struct {
		name  string
		opts  Options
		token string
		want  Reason
		// Checked only when want == ReasonNone.
		wantClaims Claims
	}{
		{name: "hs256", opts: hs, token: valid, wantClaims: Claims{Subject: "alice", ExpiresAt: fixedNow().Add(time.Hour), IssuedAt: fixedNow()}},
		{name: "hs384", opts: hs, token: sign(t, jwt.SigningMethodHS384, secret, claims())},
		{name: "hs512", opts: hs, token: sign(t, jwt.SigningMethodHS512, secret, claims())},
		{name: "rs256", opts: rs, token: sign(t, jwt.SigningMethodRS256, k.rsa, claims())},
		{name: "rs512", opts: rs, token: sign(t, jwt.SigningMethodRS512, k.rsa, claims())},
		{name: "ps256", opts: rs, token: sign(t, jwt.SigningMethodPS256, k.rsa, claims())},
		{name: "es256", opts: es256, token: sign(t, jwt.SigningMethodES256, k.ec256, claims())},
		{name: "es384", opts: es384, token: sign(t, jwt.SigningMethodES384, k.ec384, claims())},
		{name: "eddsa", opts: ed, token: sign(t, jwt.SigningMethodEdDSA, k.ed, claims())},
		{name: "name claim", opts: hs, token: hs256(claims("sub", "bob", "name", "Bob B.")),
			wantClaims: Claims{Subject: "bob", Name: "Bob B.", ExpiresAt: fixedNow().Add(time.Hour), IssuedAt: fixedNow()}},
		{name: "no exp is refused", opts: hs, token: hs256(claims("exp", nil)), want: ReasonNoExpiry},
		{name: "no exp is refused before a bad issuer", opts: withIss(hs, "i"), token: hs256(claims("exp", nil)), want: ReasonNoExpiry},
		{name: "no exp with AllowNoExp", opts: Options{Secret: secret, AllowNoExp: true}, token: hs256(claims("exp", nil)),
			wantClaims: Claims{Subject: "alice", IssuedAt: fixedNow()}},
		{name: "no iat", opts: hs, token: hs256(claims("iat", nil)),
			wantClaims: Claims{Subject: "alice", ExpiresAt: fixedNow().Add(time.Hour)}},

		// Time.
		{name: "expired", opts: hs, token: hs256(claims("exp", unix(-2*time.Minute))), want: ReasonExpired},
		{name: "expired within default leeway", opts: hs, token: hs256(claims("exp", unix(-10*time.Second)))},
		{name: "expired at exactly the leeway", opts: hs, token: hs256(claims("exp", unix(-DefaultLeeway))), want: ReasonExpired},
		{name: "expired within custom leeway", opts: withLeeway(hs, 5*time.Minute), token: hs256(claims("exp", unix(-2*time.Minute)))},
		{name: "negative leeway means none", opts: withLeeway(hs, -1), token: hs256(claims("exp", unix(-time.Second))), want: ReasonExpired},
		{name: "nbf in future", opts: hs, token: hs256(claims("nbf", unix(2*time.Minute))), want: ReasonNotYetValid},
		{name: "nbf within leeway", opts: hs, token: hs256(claims("nbf", unix(10*time.Second)))},
		{name: "iat in future", opts: hs, token: hs256(claims("iat", unix(2*time.Minute))), want: ReasonNotYetValid},
		{name: "iat within leeway", opts: hs, token: hs256(claims("iat", unix(10*time.Second)))},

		// Signatures and algorithms.
		{name: "wrong secret", opts: hs, token: sign(t, jwt.SigningMethodHS256, []byte("some-other-secret-of-32-bytes!!!"), claims()), want: ReasonBadSignature},
		{name: "payload swapped", opts: hs, token: parts[0] + "." + b64(`{"sub":"admin"}`) + "." + parts[2], want: ReasonBadSignature},
		{name: "wrong ec key", opts: es256, token: sign(t, jwt.SigningMethodES256, k.ec256OtherPriv, claims()), want: ReasonBadSignature},
		{name: "wrong ed25519 key", opts: ed, token: sign(t, jwt.SigningMethodEdDSA, k.edOther, claims()), want: ReasonBadSignature},
		{name: "hs token for public key", opts: rs, token: valid, want: ReasonBadAlgorithm},
		{name: "rs token for secret", opts: hs, token: sign(t, jwt.SigningMethodRS256, k.rsa, claims()), want: ReasonBadAlgorithm},
		{name: "es token for rsa key", opts: rs, token: sign(t, jwt.SigningMethodES256, k.ec256, claims()), want: ReasonBadAlgorithm},
		{name: "es384 token for p256 key", opts: es256, token: sign(t, jwt.SigningMethodES384, k.ec384, claims()), want: ReasonBadAlgorithm},
		{name: "alg none for secret", opts: hs, token: none(claims()), want: ReasonBadAlgorithm},
		{name: "alg none for rsa", opts: rs, token: none(claims()), want: ReasonBadAlgorithm},
		{name: "alg confusion", opts: rs, token: confused, want: ReasonBadAlgorithm},
		{name: "unknown alg", opts: hs, token: b64(`{"alg":"XS999","typ":"JWT"}`) + "." + parts[1] + "." + parts[2], want: ReasonBadAlgorithm},
		{name: "no alg", opts: hs, token: b64(`{"typ":"JWT"}`) + "." + parts[1] + "." + parts[2], want: ReasonBadAlgorithm},

		// Claims.
		{name: "missing sub", opts: hs, token: hs256(claims("sub", nil)), want: ReasonNoSubject},
		{name: "empty sub", opts: hs, token: hs256(claims("sub", "")), want: ReasonNoSubject},
		{name: "iss match", opts: withIss(hs, "https://id.example"), token: hs256(claims("iss", "https://id.example"))},
		{name: "iss mismatch", opts: withIss(hs, "https://id.example"), token: hs256(claims("iss", "https://evil.example")), want: ReasonBadIssuer},
		{name: "iss missing", opts: withIss(hs, "https://id.example"), token: valid, want: ReasonBadIssuer},
		{name: "iss ignored when not configured", opts: hs, token: hs256(claims("iss", "anyone"))},
		{name: "aud match string", opts: withAud(hs, "throng"), token: hs256(claims("aud", "throng"))},
		{name: "aud match in list", opts: withAud(hs, "throng"), token: hs256(claims("aud", []string{"billing", "throng"}))},
		{name: "aud mismatch", opts: withAud(hs, "throng"), token: hs256(claims("aud", []string{"billing"})), want: ReasonBadAudience},
		{name: "aud missing", opts: withAud(hs, "throng"), token: valid, want: ReasonBadAudience},
		{name: "iss ok aud missing", opts: withAud(withIss(hs, "i"), "throng"), token: hs256(claims("iss", "i")), want: ReasonBadAudience},
		{name: "expired beats bad issuer", opts: withIss(hs, "i"), token: hs256(claims("iss", "x", "exp", unix(-time.Hour))), want: ReasonExpired},

		// Shape.
		{name: "empty", opts: hs, token: "", want: ReasonMissing},
		{name: "garbage", opts: hs, token: "not a jwt", want: ReasonMalformed},
		{name: "two segments", opts: hs, token: parts[0] + "." + parts[1], want: ReasonMalformed},
		{name: "bad base64", opts: hs, token: "!!!." + parts[1] + "." + parts[2], want: ReasonMalformed},
		{name: "bad json claims", opts: hs, token: parts[0] + "." + b64(`{"sub":`) + "." + parts[2], want: ReasonMalformed},
		{name: "exp wrong type", opts: hs, token: hs256(claims("exp", "tomorrow")), want: ReasonMalformed},
		{name: "name wrong type", opts: hs, token: hs256(claims("name", 42)), want: ReasonMalformed},
		// Correctly signed, so the size limit is the only thing refusing it.
		{name: "oversize", opts: hs, token: hs256(claims("name", strings.Repeat("x", MaxTokenSize))), want: ReasonMalformed},
	}

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := tc.opts
			o.Now = fixedClock()
			v, err := New(o)
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			got, err := v.Verify(tc.token)
			if r := ReasonOf(err); r != tc.want {
				t.Fatalf("Verify reason = %v (err %v), want %v", r, err, tc.want)
			}
			if tc.want != ReasonNone {
				var ae *Error
				if !errors.As(err, &ae) {
					t.Fatalf("Verify error %T is not *Error", err)
				}
				if prefix := "auth: " + tc.want.String() + ": "; !strings.HasPrefix(err.Error(), prefix) {
					t.Errorf("error %q does not start with %q", err, prefix)
				}
				if got != (Claims{}) {
					t.Errorf("claims on failure = %+v, want zero", got)
				}
				return
			}
			if got.Subject == "" {
				t.Error("accepted token with empty Subject")
			}
			if tc.wantClaims != (Claims{}) && !claimsEqual(got, tc.wantClaims) {
				t.Errorf("claims = %+v, want %+v", got, tc.wantClaims)
			}
		})
	}

	// The confusion token must be a real forgery (valid HMAC under the PEM
	// bytes), or the "alg confusion" case above proves nothing.
	naive, err := New(Options{Secret: k.rsaPEM, Now: fixedClock()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := naive.Verify(confused); err != nil {
		t.Fatalf("confusion token does not verify as HS256 with the PEM as secret: %v", err)
	}
}

func claimsEqual(a, b Claims) bool {
	return a.Subject == b.Subject && a.Name == b.Name && a.ExpiresAt.Equal(b.ExpiresAt) && a.IssuedAt.Equal(b.IssuedAt)
}

// TestDeadline checks the one expiry rule: a token that Verify accepted at the
// handshake stays accepted, and Claims.Expired stays false, until exactly
// Claims.Deadline, when both turn. A token 2s past exp within a 30s leeway
// passes the handshake and must then live until exp+30s, not be closed at once.
func TestDeadline(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	for _, tc := range []struct {
		name   string
		leeway time.Duration // Options.Leeway
		want   time.Duration // effective leeway
		exp    time.Duration // exp relative to the handshake
	}{
		{"expired 2s ago, default leeway", 0, DefaultLeeway, -2 * time.Second},
		{"valid, default leeway", 0, DefaultLeeway, time.Hour},
		{"custom leeway", 5 * time.Minute, 5 * time.Minute, -time.Minute},
		{"no leeway", -1, 0, time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := fixedNow()
			v, err := New(Options{Secret: secret, Leeway: tc.leeway, Now: func() time.Time { return clock }})
			if err != nil {
				t.Fatal(err)
			}
			if v.Leeway() != tc.want {
				t.Fatalf("Leeway() = %v, want %v", v.Leeway(), tc.want)
			}
			tok := sign(t, jwt.SigningMethodHS256, secret, claims("exp", unix(tc.exp)))
			c, err := v.Verify(tok)
			if err != nil {
				t.Fatalf("handshake: %v", err)
			}
			exp := fixedNow().Add(tc.exp)
			if !c.ExpiresAt.Equal(exp) || !c.Deadline.Equal(exp.Add(tc.want)) {
				t.Fatalf("ExpiresAt %v Deadline %v, want %v and %v", c.ExpiresAt, c.Deadline, exp, exp.Add(tc.want))
			}
			for _, at := range []struct {
				now     time.Time
				expired bool
			}{
				{fixedNow(), false},
				{c.Deadline.Add(-time.Second), false},
				{c.Deadline, true},
				{c.Deadline.Add(time.Second), true},
			} {
				clock = at.now
				_, err := v.Verify(tok)
				if refused := ReasonOf(err) == ReasonExpired; refused != at.expired || c.Expired(at.now) != at.expired {
					t.Errorf("at deadline%+v: Verify %v, Expired %v; want expired=%v in both",
						at.now.Sub(c.Deadline), err, c.Expired(at.now), at.expired)
				}
			}
		})
	}
}

func TestVerifyErrorUnwrapsJWT(t *testing.T) {
	secret := []byte("s")
	v, err := New(Options{Secret: secret, Now: fixedClock()})
	if err != nil {
		t.Fatal(err)
	}
	_, err = v.Verify(sign(t, jwt.SigningMethodHS256, secret, claims("exp", unix(-time.Hour))))
	if !errors.Is(err, jwt.ErrTokenExpired) {
		t.Fatalf("err = %v, want it to wrap jwt.ErrTokenExpired", err)
	}
}

func TestNewCopiesSecret(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	tok := sign(t, jwt.SigningMethodHS256, secret, claims())
	v, err := New(Options{Secret: secret, Now: fixedClock()})
	if err != nil {
		t.Fatal(err)
	}
	secret[0] ^= 0xff
	if _, err := v.Verify(tok); err != nil {
		t.Fatalf("caller mutating Secret after New changed the Verifier: %v", err)
	}
}

func TestReasonString(t *testing.T) {
	want := map[Reason]string{
		ReasonNone:         "none",
		ReasonMissing:      "missing",
		ReasonMalformed:    "malformed",
		ReasonExpired:      "expired",
		ReasonNotYetValid:  "not_yet_valid",
		ReasonBadSignature: "bad_signature",
		ReasonBadAlgorithm: "bad_algorithm",
		ReasonBadIssuer:    "bad_issuer",
		ReasonBadAudience:  "bad_audience",
		ReasonNoSubject:    "no_subject",
		ReasonNoExpiry:     "no_expiry",
		Reason(200):        "reason(200)",
	}
	for r, s := range want {
		if got := r.String(); got != s {
			t.Errorf("Reason(%d).String() = %q, want %q", uint8(r), got, s)
		}
	}
}

func TestReasonOf(t *testing.T) {
	cases := []struct {
		name string
		err  error
		want Reason
	}{
		{"nil", nil, ReasonNone},
		{"direct", &Error{Reason: ReasonExpired}, ReasonExpired},
		{"wrapped", wrap(&Error{Reason: ReasonBadIssuer, Err: errors.New("x")}), ReasonBadIssuer},
		{"foreign error is never success", errors.New("boom"), ReasonMalformed},
	}
	for _, tc := range cases {
		if got := ReasonOf(tc.err); got != tc.want {
			t.Errorf("%s: ReasonOf = %v, want %v", tc.name, got, tc.want)
		}
	}
	if got := (&Error{Reason: ReasonMissing}).Error(); got != "auth: missing" {
		t.Errorf("Error() without detail = %q", got)
	}
}

func wrap(err error) error { return errors.Join(errors.New("handshake"), err) }

func TestMint(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	now := fixedNow()
	for _, alg := range []string{"", "HS256", "HS384", "HS512"} {
		t.Run("alg="+alg, func(t *testing.T) {
			tok, err := Mint(secret, alg, "carol", 10*time.Minute, "Carol", now.Add(300*time.Millisecond))
			if err != nil {
				t.Fatal(err)
			}
			wantAlg := alg
			if wantAlg == "" {
				wantAlg = "HS256"
			}
			hdr, _ := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[0])
			if !strings.Contains(string(hdr), `"alg":"`+wantAlg+`"`) {
				t.Errorf("header = %s, want alg %s", hdr, wantAlg)
			}
			v, err := New(Options{Secret: secret, Now: fixedClock()})
			if err != nil {
				t.Fatal(err)
			}
			c, err := v.Verify(tok)
			if err != nil {
				t.Fatal(err)
			}
			want := Claims{Subject: "carol", Name: "Carol", IssuedAt: now, ExpiresAt: now.Add(10 * time.Minute)}
			if !claimsEqual(c, want) {
				t.Errorf("claims = %+v, want %+v", c, want)
			}
		})
	}

	t.Run("no ttl no name", func(t *testing.T) {
		tok, err := Mint(secret, "", "dave", 0, "", now)
		if err != nil {
			t.Fatal(err)
		}
		payload, _ := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[1])
		if s := string(payload); strings.Contains(s, `"exp"`) || strings.Contains(s, `"name"`) {
			t.Errorf("payload = %s, want no exp and no name", s)
		}
		// By default a token without exp is refused.
		strict, err := New(Options{Secret: secret, Now: fixedClock()})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := strict.Verify(tok); ReasonOf(err) != ReasonNoExpiry {
			t.Errorf("Verify without AllowNoExp: %v, want no_expiry", err)
		}
		// With AllowNoExp, far in the future: a token without exp never expires.
		v, err := New(Options{Secret: secret, AllowNoExp: true, Now: func() time.Time { return now.AddDate(10, 0, 0) }})
		if err != nil {
			t.Fatal(err)
		}
		if c, err := v.Verify(tok); err != nil || !c.ExpiresAt.IsZero() || !c.Deadline.IsZero() || c.Expired(now.AddDate(10, 0, 0)) {
			t.Errorf("Verify = %+v, %v; want accepted with zero ExpiresAt and Deadline", c, err)
		}
	})

	t.Run("expires", func(t *testing.T) {
		tok, err := Mint(secret, "", "erin", time.Minute, "", now)
		if err != nil {
			t.Fatal(err)
		}
		v, err := New(Options{Secret: secret, Now: func() time.Time { return now.Add(time.Minute + DefaultLeeway) }})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := v.Verify(tok); ReasonOf(err) != ReasonExpired {
			t.Errorf("Verify after ttl+leeway: %v, want expired", err)
		}
	})

	errCases := []struct {
		name   string
		secret []byte
		alg    string
		sub    string
		ttl    time.Duration
		want   error
	}{
		{"rs256", secret, "RS256", "a", 0, ErrMintAlgorithm},
		{"none", secret, "none", "a", 0, ErrMintAlgorithm},
		{"unknown", secret, "HS1", "a", 0, ErrMintAlgorithm},
		{"empty secret", nil, "", "a", 0, ErrEmptySecret},
		{"empty sub", secret, "", "", 0, ErrEmptySubject},
		{"negative ttl", secret, "", "a", -time.Second, ErrNegativeTTL},
	}
	for _, tc := range errCases {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := Mint(tc.secret, tc.alg, tc.sub, tc.ttl, "", now)
			if !errors.Is(err, tc.want) || tok != "" {
				t.Errorf("Mint = %q, %v; want error %v", tok, err, tc.want)
			}
		})
	}
}

func TestNewValidation(t *testing.T) {
	k := newKeySet(t)
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p224, err := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaPKCS1 := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k.rsa)})

	cases := []struct {
		name    string
		opts    Options
		wantErr error  // nil means New must succeed
		wantMsg string // substring of the error message
	}{
		{name: "no key", opts: Options{}, wantErr: ErrNoKey},
		{name: "empty secret", opts: Options{Secret: []byte{}}, wantErr: ErrNoKey},
		{name: "both keys", opts: Options{Secret: []byte("s"), PublicKeyPEM: k.rsaPEM}, wantErr: ErrTwoKeys},
		{name: "one byte secret", opts: Options{Secret: []byte("s")}},
		{name: "not pem", opts: Options{PublicKeyPEM: []byte("hello")}, wantErr: ErrBadPublicKey, wantMsg: "no PEM block"},
		{name: "corrupt der", opts: Options{PublicKeyPEM: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte{1, 2, 3}})}, wantErr: ErrBadPublicKey, wantMsg: "parse PUBLIC KEY"},
		{name: "pkcs8 private key", opts: Options{PublicKeyPEM: pemPrivate(t, k.ed)}, wantErr: ErrBadPublicKey, wantMsg: "private key"},
		{name: "pkcs1 private key", opts: Options{PublicKeyPEM: rsaPKCS1}, wantErr: ErrBadPublicKey, wantMsg: "private key"},
		{name: "other block", opts: Options{PublicKeyPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte{1}})}, wantErr: ErrBadPublicKey, wantMsg: "unsupported PEM block"},
		{name: "small rsa", opts: Options{PublicKeyPEM: pemPublic(t, &small.PublicKey)}, wantErr: ErrBadPublicKey, wantMsg: "1024 bits"},
		{name: "p224", opts: Options{PublicKeyPEM: pemPublic(t, &p224.PublicKey)}, wantErr: ErrBadPublicKey, wantMsg: "P-224"},
		{name: "pkcs1 public key", opts: Options{PublicKeyPEM: pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(&k.rsa.PublicKey)})}},
		{name: "certificate", opts: Options{PublicKeyPEM: selfSigned(t, k.ed)}},
		{name: "rsa", opts: Options{PublicKeyPEM: k.rsaPEM}},
		{name: "ecdsa", opts: Options{PublicKeyPEM: k.ec384PEM}},
		{name: "ed25519", opts: Options{PublicKeyPEM: k.edPEM}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v, err := New(tc.opts)
			if tc.wantErr == nil {
				if err != nil || v == nil {
					t.Fatalf("New = %v, %v; want success", v, err)
				}
				return
			}
			if !errors.Is(err, tc.wantErr) || v != nil {
				t.Fatalf("New = %v, %v; want %v", v, err, tc.wantErr)
			}
			if !strings.HasPrefix(err.Error(), "auth: ") || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("error %q: want prefix \"auth: \" and substring %q", err, tc.wantMsg)
			}
		})
	}

	// A key accepted via a certificate must actually verify tokens.
	v, err := New(Options{PublicKeyPEM: selfSigned(t, k.ed), Now: fixedClock()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(sign(t, jwt.SigningMethodEdDSA, k.ed, claims())); err != nil {
		t.Errorf("EdDSA token against certificate key: %v", err)
	}
}

func selfSigned(t testing.TB, priv ed25519.PrivateKey) []byte {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "throng test"},
		NotBefore:    fixedNow().Add(-time.Hour),
		NotAfter:     fixedNow().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, priv.Public(), priv)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func TestLoadPublicKeyFile(t *testing.T) {
	k := newKeySet(t)
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}

	good := write("pub.pem", k.ec256PEM)
	b, err := LoadPublicKeyFile(good)
	if err != nil {
		t.Fatalf("LoadPublicKeyFile(valid): %v", err)
	}
	if string(b) != string(k.ec256PEM) {
		t.Error("LoadPublicKeyFile did not return the file contents")
	}
	v, err := New(Options{PublicKeyPEM: b, Now: fixedClock()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(sign(t, jwt.SigningMethodES256, k.ec256, claims())); err != nil {
		t.Errorf("Verify with loaded key: %v", err)
	}

	_, err = LoadPublicKeyFile(filepath.Join(dir, "absent.pem"))
	if !errors.Is(err, fs.ErrNotExist) || !strings.HasPrefix(err.Error(), "auth: ") {
		t.Errorf("missing file: err = %v, want auth-prefixed fs.ErrNotExist", err)
	}

	priv := write("priv.pem", pemPrivate(t, k.ed))
	_, err = LoadPublicKeyFile(priv)
	if !errors.Is(err, ErrBadPublicKey) || !strings.Contains(err.Error(), priv) || !strings.Contains(err.Error(), "private key") {
		t.Errorf("private key file: err = %v, want ErrBadPublicKey naming %s and saying private key", err, priv)
	}

	junk := write("junk.pem", []byte("not a key"))
	if _, err := LoadPublicKeyFile(junk); !errors.Is(err, ErrBadPublicKey) {
		t.Errorf("junk file: err = %v, want ErrBadPublicKey", err)
	}
}

// TestVerifyConcurrent exists for -race: one Verifier shared by many
// handshakes, accepting and refusing at once.
func TestVerifyConcurrent(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	v, err := New(Options{Secret: secret, Now: fixedClock(), Issuer: "i", Audience: "a"})
	if err != nil {
		t.Fatal(err)
	}
	good := sign(t, jwt.SigningMethodHS256, secret, claims("iss", "i", "aud", "a"))
	bad := sign(t, jwt.SigningMethodHS256, secret, claims("iss", "i", "aud", "a", "exp", unix(-time.Hour)))
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 200 {
				if _, err := v.Verify(good); err != nil {
					t.Errorf("good token: %v", err)
					return
				}
				if _, err := v.Verify(bad); ReasonOf(err) != ReasonExpired {
					t.Errorf("bad token: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
}

func FuzzVerify(f *testing.F) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	valid := sign(f, jwt.SigningMethodHS256, secret, claims("name", "x"))
	f.Add(valid)
	f.Add("")
	f.Add("a.b.c")
	f.Add(valid[:len(valid)/2])
	f.Add(sign(f, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, claims()))
	v, err := New(Options{Secret: secret, Now: fixedClock()})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, token string) {
		c, err := v.Verify(token)
		if err == nil {
			if c.Subject == "" {
				t.Fatalf("accepted %q with empty subject", token)
			}
			return
		}
		if _, ok := errors.AsType[*Error](err); !ok {
			t.Fatalf("error %T is not *Error", err)
		}
		if r := ReasonOf(err); r == ReasonNone || strings.HasPrefix(r.String(), "reason(") {
			t.Fatalf("refused %q with reason %v", token, r)
		}
	})
}

func BenchmarkVerifyHS256(b *testing.B) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	tok, err := Mint(secret, "HS256", "user-12345", time.Hour, "Some User", fixedNow())
	if err != nil {
		b.Fatal(err)
	}
	v, err := New(Options{Secret: secret, Now: fixedClock()})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(tok)))
	for b.Loop() {
		if _, err := v.Verify(tok); err != nil {
			b.Fatal(err)
		}
	}
}

// TestPooledHMAC: the HMAC methods registered for the process verify a
// Verifier's tokens with pooled hashes, each algorithm from its own pool, a
// token signed under another secret or with a flipped signature byte is
// refused under concurrent use, and a plain []byte key (anyone else in the
// process using golang-jwt) is still verified by golang-jwt's own method.
func TestPooledHMAC(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	other := []byte("fedcba9876543210fedcba9876543210")
	v, err := New(Options{Secret: secret, Now: fixedClock()})
	if err != nil {
		t.Fatal(err)
	}
	type tc struct {
		tok  string
		want Reason
	}
	var cases []tc
	for _, m := range []*jwt.SigningMethodHMAC{jwt.SigningMethodHS256, jwt.SigningMethodHS384, jwt.SigningMethodHS512} {
		if _, ok := jwt.GetSigningMethod(m.Alg()).(pooledHMAC); !ok {
			t.Fatalf("%s: the registered method is %T, not the pooled one", m.Alg(), jwt.GetSigningMethod(m.Alg()))
		}
		good := sign(t, m, secret, claims())
		flipped := []byte(good)
		flipped[len(flipped)-2] ^= 1 // inside the signature's last full byte
		cases = append(cases,
			tc{good, ReasonNone},
			tc{sign(t, m, other, claims()), ReasonBadSignature},
			tc{string(flipped), ReasonBadSignature})
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 300 {
				c := cases[(g+i)%len(cases)]
				if _, err := v.Verify(c.tok); ReasonOf(err) != c.want {
					t.Errorf("case %d: %v, want reason %v", (g+i)%len(cases), err, c.want)
					return
				}
			}
		})
	}
	wg.Wait()

	good := sign(t, jwt.SigningMethodHS256, secret, claims())
	keyfunc := func(key []byte) jwt.Keyfunc { return func(*jwt.Token) (any, error) { return key, nil } }
	p := jwt.NewParser(jwt.WithTimeFunc(fixedClock()))
	if _, err := p.Parse(good, keyfunc(secret)); err != nil {
		t.Fatalf("a []byte key: %v", err)
	}
	if _, err := p.Parse(good, keyfunc(other)); !errors.Is(err, jwt.ErrSignatureInvalid) {
		t.Fatalf("a wrong []byte key: %v, want an invalid signature", err)
	}
}
