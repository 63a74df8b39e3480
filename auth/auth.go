// Package auth decides whether a WebSocket handshake may proceed by verifying
// the JWT the client presents. It is the only package in throng that knows
// about JWTs: which algorithms are acceptable, which claims are required and
// how much clock skew is tolerated are decided here, and the server sees only
// a Claims on success or a Reason it can count and turn into a close reason.
//
// The JWT itself is parsed and checked by github.com/golang-jwt/jwt/v5; this
// package only configures it strictly and classifies its errors. Where the
// token comes from (header, query parameter, subprotocol) is the server's
// business, not this package's.
package auth

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// DefaultLeeway is the clock skew tolerated on exp, nbf and iat when
// Options.Leeway is zero. Clients and the token issuer rarely share a clock;
// 30s absorbs ordinary NTP drift without meaningfully extending a token's life.
const DefaultLeeway = 30 * time.Second

// MaxTokenSize is the longest token Verify will parse. Real tokens are a few
// hundred bytes; the limit stops a client from making the server base64- and
// JSON-decode a huge blob on every handshake attempt.
const MaxTokenSize = 8 << 10

var (
	// ErrNoKey is returned by New when neither Options.Secret nor
	// Options.PublicKeyPEM is set. Running without verification must be a
	// decision made above this package (by not constructing a Verifier), never
	// the accidental result of an empty flag.
	ErrNoKey = errors.New("auth: no verification key: set Secret or PublicKeyPEM")

	// ErrTwoKeys is returned by New when both Options.Secret and
	// Options.PublicKeyPEM are set: accepting either would let a holder of the
	// shared secret mint tokens the public-key deployment meant to forbid.
	ErrTwoKeys = errors.New("auth: both Secret and PublicKeyPEM are set; set exactly one")

	// ErrBadPublicKey wraps every reason a PEM public key was refused by New
	// or LoadPublicKeyFile.
	ErrBadPublicKey = errors.New("auth: bad public key")

	// ErrMintAlgorithm is returned by Mint for anything but HS256, HS384 and
	// HS512: minting with a private key belongs to the token issuer, which is
	// not throng.
	ErrMintAlgorithm = errors.New("auth: Mint supports only HS256, HS384 and HS512")

	// ErrEmptySecret is returned by Mint for an empty secret, which would sign
	// a token anyone can forge.
	ErrEmptySecret = errors.New("auth: empty secret")

	// ErrEmptySubject is returned by Mint for an empty subject, which Verify
	// would refuse anyway.
	ErrEmptySubject = errors.New("auth: empty subject")

	// ErrNegativeTTL is returned by Mint for ttl < 0. A ttl <= 0 that silently
	// produced a token without exp would turn an arithmetic slip into a
	// credential that never expires.
	ErrNegativeTTL = errors.New("auth: negative ttl")
)

// Options configures a Verifier. Exactly one of Secret and PublicKeyPEM must
// be set; every other field's zero value is a sensible default.
type Options struct {
	// Secret is the shared key for HS256, HS384 and HS512 tokens. With a
	// Secret set, only those three algorithms are accepted. New copies it.
	Secret []byte

	// PublicKeyPEM is a PEM-encoded public key ("PUBLIC KEY", "RSA PUBLIC
	// KEY" or a "CERTIFICATE" carrying one). The key type fixes the accepted
	// algorithms: RSA (at least 2048 bits) accepts RS256/384/512 and
	// PS256/384/512; ECDSA accepts only the ES* matching its curve (P-256:
	// ES256, P-384: ES384, P-521: ES512); Ed25519 accepts EdDSA.
	PublicKeyPEM []byte

	// Issuer, if non-empty, must equal the token's iss claim; a token without
	// iss is then refused. If empty, iss is not checked.
	Issuer string

	// Audience, if non-empty, must be one of the token's aud values; a token
	// without aud is then refused. If empty, aud is not checked.
	Audience string

	// Leeway is the clock skew tolerated when checking exp, nbf and iat.
	// If zero, DefaultLeeway is used. If negative, no skew is tolerated.
	// The same leeway sets Claims.Deadline, so a connection lives exactly as
	// long as its token would still pass Verify.
	Leeway time.Duration

	// AllowNoExp accepts tokens without an exp claim, which then never
	// expire. If false (the default) such a token is refused with
	// ReasonNoExpiry: a credential without exp cannot be revoked short of
	// rotating the key, and a token refresh with one would lift the expiry
	// of a live connection.
	AllowNoExp bool

	// Now is the clock tokens are checked against. If nil, time.Now is used.
	// It exists so tests can pin time instead of sleeping.
	Now func() time.Time
}

// Claims is what a verified token says about the connecting client.
type Claims struct {
	// Subject is the token's sub claim. It is never empty: tokens without a
	// subject are refused, since the server keys connections by it.
	Subject string

	// Name is the optional "name" claim, a display name; empty if absent.
	Name string

	// ExpiresAt is the exp claim, or the zero Time if the token has none
	// (only with Options.AllowNoExp).
	ExpiresAt time.Time

	// Deadline is ExpiresAt plus the verifier's leeway: from this instant on
	// Verify refuses the token as expired. It is the one expiry rule for the
	// handshake, POST /token/verify and a live connection, which must be
	// closed once the clock reaches it (see Expired). Zero if the token has
	// no exp.
	Deadline time.Time

	// IssuedAt is the iat claim, or the zero Time if the token has none.
	IssuedAt time.Time
}

// Expired reports whether a connection authenticated by c must be closed at
// now: now has reached c.Deadline, so Verify would refuse the token too. It is
// false for a token without exp.
func (c Claims) Expired(now time.Time) bool {
	return !c.Deadline.IsZero() && !now.Before(c.Deadline)
}

// Reason says why a token was refused. It is small and comparable so the
// server can index a counter array by it and map it to a close reason.
type Reason uint8

const (
	// ReasonNone means the token was accepted.
	ReasonNone Reason = iota
	// ReasonMissing means no token was presented.
	ReasonMissing
	// ReasonMalformed means the token is not a well-formed JWT, is larger
	// than MaxTokenSize, or has claims of the wrong JSON type.
	ReasonMalformed
	// ReasonExpired means exp is in the past by more than the leeway.
	ReasonExpired
	// ReasonNotYetValid means nbf or iat is in the future by more than the
	// leeway.
	ReasonNotYetValid
	// ReasonBadSignature means the algorithm is acceptable but the signature
	// does not verify with the configured key.
	ReasonBadSignature
	// ReasonBadAlgorithm means the token's alg is unknown, "none", or not
	// one the configured key may verify (algorithm confusion lands here).
	ReasonBadAlgorithm
	// ReasonBadIssuer means Options.Issuer is set and iss is absent or
	// different.
	ReasonBadIssuer
	// ReasonBadAudience means Options.Audience is set and aud is absent or
	// does not contain it.
	ReasonBadAudience
	// ReasonNoSubject means the token verified but has no sub claim.
	ReasonNoSubject
	// ReasonNoExpiry means the token has no exp claim and
	// Options.AllowNoExp is false.
	ReasonNoExpiry

	// NumReasons is the number of reasons, for arrays of counters indexed by Reason.
	NumReasons
)

// String returns a short snake_case label suitable as a metrics label value.
func (r Reason) String() string {
	switch r {
	case ReasonNone:
		return "none"
	case ReasonMissing:
		return "missing"
	case ReasonMalformed:
		return "malformed"
	case ReasonExpired:
		return "expired"
	case ReasonNotYetValid:
		return "not_yet_valid"
	case ReasonBadSignature:
		return "bad_signature"
	case ReasonBadAlgorithm:
		return "bad_algorithm"
	case ReasonBadIssuer:
		return "bad_issuer"
	case ReasonBadAudience:
		return "bad_audience"
	case ReasonNoSubject:
		return "no_subject"
	case ReasonNoExpiry:
		return "no_expiry"
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// Error is the error Verify returns. Reason is for metrics and close codes;
// Err is the underlying detail (usually golang-jwt's error) for logs, and is
// never meant to be sent to the client.
type Error struct {
	Reason Reason
	Err    error
}

// Error formats as "auth: <reason>: <detail>".
func (e *Error) Error() string {
	if e.Err == nil {
		return "auth: " + e.Reason.String()
	}
	return "auth: " + e.Reason.String() + ": " + e.Err.Error()
}

// Unwrap exposes the detail so callers can still errors.Is against
// golang-jwt's sentinels if they need finer grain than Reason.
func (e *Error) Unwrap() error { return e.Err }

// ReasonOf returns the Reason carried by err. It returns ReasonNone for a nil
// error and ReasonMalformed for a non-nil error that carries no *Error, so a
// failure is never counted as a success.
func ReasonOf(err error) Reason {
	if err == nil {
		return ReasonNone
	}
	if e, ok := errors.AsType[*Error](err); ok {
		return e.Reason
	}
	return ReasonMalformed
}

// tokenClaims is what a token's payload is decoded into: the registered
// claims plus the one private claim throng uses. A concrete struct rather
// than jwt.MapClaims keeps decoding to one small allocation and makes a
// wrongly-typed claim a decode error instead of a runtime type switch.
type tokenClaims struct {
	jwt.RegisteredClaims
	Name string `json:"name,omitempty"`
}

// Verifier checks handshake tokens against one key. It is safe for
// concurrent use; everything in it is fixed by New.
type Verifier struct {
	parser   *jwt.Parser
	keyfunc  jwt.Keyfunc // built once so Verify does not allocate a method value per call
	key      any         // []byte, *rsa.PublicKey, *ecdsa.PublicKey or ed25519.PublicKey
	methods  []string    // algorithms key may verify; also given to the parser
	issuer   string
	audience string
	leeway   time.Duration // effective: never negative
	needExp  bool          // !Options.AllowNoExp
}

// New validates o and builds a Verifier. Configuration mistakes (no key, two
// keys, a PEM that is not a supported public key) are reported here, once,
// rather than as a stream of refused handshakes.
func New(o Options) (*Verifier, error) {
	v := &Verifier{issuer: o.Issuer, audience: o.Audience, needExp: !o.AllowNoExp}
	switch {
	case len(o.Secret) > 0 && len(o.PublicKeyPEM) > 0:
		return nil, ErrTwoKeys
	case len(o.Secret) > 0:
		v.key = &hmacKey{secret: bytes.Clone(o.Secret)}
		v.methods = hmacMethods()
	case len(o.PublicKeyPEM) > 0:
		key, methods, err := parsePublicKey(o.PublicKeyPEM)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadPublicKey, err)
		}
		v.key, v.methods = key, methods
	default:
		return nil, ErrNoKey
	}

	leeway := o.Leeway
	switch {
	case leeway == 0:
		leeway = DefaultLeeway
	case leeway < 0:
		leeway = 0
	}
	v.leeway = leeway
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(v.methods),
		jwt.WithLeeway(leeway),
		// iat is checked so a token stamped in the future (a skewed or
		// compromised issuer) is refused like an nbf in the future.
		jwt.WithIssuedAt(),
	}
	if v.needExp {
		opts = append(opts, jwt.WithExpirationRequired())
	}
	if o.Now != nil {
		opts = append(opts, jwt.WithTimeFunc(o.Now))
	}
	if o.Issuer != "" {
		opts = append(opts, jwt.WithIssuer(o.Issuer))
	}
	if o.Audience != "" {
		opts = append(opts, jwt.WithAudience(o.Audience))
	}
	v.parser = jwt.NewParser(opts...)
	v.keyfunc = v.lookupKey
	return v, nil
}

// lookupKey hands the parser the one configured key. The parser has already
// refused any alg outside v.methods; checking again here means removing
// WithValidMethods by mistake cannot reopen algorithm confusion.
func (v *Verifier) lookupKey(t *jwt.Token) (any, error) {
	if t.Method == nil || !slices.Contains(v.methods, t.Method.Alg()) {
		return nil, errors.New("algorithm not allowed for the configured key")
	}
	return v.key, nil
}

// Leeway is the clock skew the verifier tolerates: Options.Leeway, or
// DefaultLeeway if that was zero, or 0 if it was negative.
func (v *Verifier) Leeway() time.Duration { return v.leeway }

// Verify checks token (the bare compact JWT, without a "Bearer " prefix) and
// returns its claims. On failure the error is always an *Error; use ReasonOf
// to classify it.
//
// A token is accepted when its alg is allowed for the configured key, the
// signature verifies, exp holds within the leeway (now is before
// Claims.Deadline), nbf/iat (if present) hold within the leeway, iss/aud
// match when configured, and sub is non-empty. A token without exp is
// refused unless Options.AllowNoExp, and then never expires.
func (v *Verifier) Verify(token string) (Claims, error) {
	if token == "" {
		return Claims{}, &Error{Reason: ReasonMissing, Err: errors.New("no token presented")}
	}
	if len(token) > MaxTokenSize {
		return Claims{}, &Error{Reason: ReasonMalformed,
			Err: fmt.Errorf("token is %d bytes, limit is %d", len(token), MaxTokenSize)}
	}
	var c tokenClaims
	tok, err := v.parser.ParseWithClaims(token, &c, v.keyfunc)
	if err != nil {
		return Claims{}, &Error{Reason: v.classify(tok, &c, err), Err: err}
	}
	if c.Subject == "" {
		return Claims{}, &Error{Reason: ReasonNoSubject, Err: errors.New("token has no sub claim")}
	}
	out := Claims{Subject: c.Subject, Name: c.Name}
	if c.ExpiresAt != nil {
		out.ExpiresAt = c.ExpiresAt.Time
		out.Deadline = out.ExpiresAt.Add(v.leeway)
	}
	if c.IssuedAt != nil {
		out.IssuedAt = c.IssuedAt.Time
	}
	return out, nil
}

// classify maps golang-jwt's error to a Reason. The cases are ordered: a
// token that is both malformed and expired is malformed, and a forged
// signature is reported before any claim problem, because jwt checks the
// signature before the claims.
func (v *Verifier) classify(tok *jwt.Token, c *tokenClaims, err error) Reason {
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return ReasonMalformed
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		// Unknown or missing alg, or lookupKey refusing the alg.
		return ReasonBadAlgorithm
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		// jwt reports an alg outside WithValidMethods as an invalid
		// signature. Tell the two apart so "alg: none" and algorithm
		// confusion are counted as what they are.
		if tok != nil && tok.Method != nil && !slices.Contains(v.methods, tok.Method.Alg()) {
			return ReasonBadAlgorithm
		}
		return ReasonBadSignature
	case errors.Is(err, jwt.ErrTokenExpired):
		return ReasonExpired
	case errors.Is(err, jwt.ErrTokenNotValidYet), errors.Is(err, jwt.ErrTokenUsedBeforeIssued):
		return ReasonNotYetValid
	case errors.Is(err, jwt.ErrTokenInvalidIssuer):
		return ReasonBadIssuer
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return ReasonBadAudience
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		// jwt reports an absent exp, iss or aud as a missing claim rather
		// than a mismatch. nbf and sub are never marked required.
		if v.needExp && c.ExpiresAt == nil {
			return ReasonNoExpiry
		}
		if v.issuer != "" && c.Issuer == "" {
			return ReasonBadIssuer
		}
		return ReasonBadAudience
	}
	return ReasonMalformed
}

// Mint signs a token for sub with secret, for `throng token`, tests and the
// bench harness. alg is HS256, HS384 or HS512; empty means HS256. The token
// carries sub and iat (= now), exp (= now+ttl) only if ttl > 0, and name only
// if non-empty. A token without exp (ttl 0) is refused by a Verifier unless
// Options.AllowNoExp; `throng token` refuses to mint one. If now is the zero Time, time.Now() is used. Times are
// truncated to whole seconds, as JWT NumericDates are.
func Mint(secret []byte, alg string, sub string, ttl time.Duration, name string, now time.Time) (string, error) {
	if alg == "" {
		alg = "HS256"
	}
	if !slices.Contains(hmacMethods(), alg) {
		return "", fmt.Errorf("%w, not %q", ErrMintAlgorithm, alg)
	}
	method := jwt.GetSigningMethod(alg)
	switch {
	case len(secret) == 0:
		return "", ErrEmptySecret
	case sub == "":
		return "", ErrEmptySubject
	case ttl < 0:
		return "", ErrNegativeTTL
	}
	if now.IsZero() {
		now = time.Now()
	}
	c := tokenClaims{
		RegisteredClaims: jwt.RegisteredClaims{Subject: sub, IssuedAt: jwt.NewNumericDate(now)},
		Name:             name,
	}
	if ttl > 0 {
		c.ExpiresAt = jwt.NewNumericDate(now.Add(ttl))
	}
	s, err := jwt.NewWithClaims(method, c).SignedString(secret)
	if err != nil {
		return "", fmt.Errorf("auth: sign token: %w", err)
	}
	return s, nil
}
