package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/throng-ws/throng/auth"
)

// claimsFlag collects --claim key=value; a value that parses as JSON (a
// number, true, an object) is kept as such, anything else is a string.
type claimsFlag map[string]any

func (c claimsFlag) String() string { return "" }

func (c claimsFlag) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("%q is not key=value", s)
	}
	var j any
	if json.Unmarshal([]byte(v), &j) == nil {
		c[k] = j
	} else {
		c[k] = v
	}
	return nil
}

func tokenCommand() *ffcli.Command {
	fs := flag.NewFlagSet("throng token", flag.ContinueOnError)
	var secret string
	fs.StringVar(&secret, "jwt-secret", "", "HMAC secret for HS256/384/512, as serve's --jwt-secret (also THRONG_JWT_SECRET)")
	fs.StringVar(&secret, "secret", "", "the same as --jwt-secret")
	keyFile := fs.String("key", "", "PEM private key file for RS*, PS*, ES* or EdDSA (instead of --jwt-secret)")
	sub := fs.String("sub", "", "subject: the user id (required)")
	ttl := fs.Duration("ttl", time.Hour, "lifetime, more than 0: every token carries exp")
	name := fs.String("name", "", "optional display name claim")
	alg := fs.String("alg", "", "signing algorithm (empty: HS256 with a secret, the key's own with --key: RS256, ES256/384/512, EdDSA)")
	iss := fs.String("iss", "", "iss claim, for a server with --jwt-issuer")
	aud := fs.String("aud", "", "aud claim, comma-separated for several, for a server with --jwt-audience")
	claims := claimsFlag{}
	fs.Var(claims, "claim", "an extra claim key=value (JSON values kept as JSON); repeat for several")
	return &ffcli.Command{
		Name:       "token",
		ShortUsage: "throng token --sub ID [--jwt-secret S | --key private.pem] [--ttl 1h] [--name N] [--iss I] [--aud A] [--claim k=v]",
		ShortHelp:  "print a signed JWT for a user; `token verify` checks one",
		LongHelp: "token signs a JWT the server accepts. The secret comes from --jwt-secret or THRONG_JWT_SECRET,\n" +
			"as for serve; --key signs with a private key whose public half the server has (--jwt-public-key).",
		FlagSet:     fs,
		Options:     envOptions,
		Subcommands: []*ffcli.Command{tokenVerifyCommand()},
		Exec: func(ctx context.Context, args []string) error {
			if len(args) > 0 {
				return usageError{fmt.Sprintf("token: unexpected argument %q (did you mean token verify?)", args[0])}
			}
			var missing []string
			if *sub == "" {
				missing = append(missing, "--sub")
			}
			if secret == "" && *keyFile == "" {
				missing = append(missing, "--jwt-secret (or THRONG_JWT_SECRET) or --key")
			}
			if len(missing) > 0 {
				return usageError{"token: missing " + strings.Join(missing, " and ")}
			}
			if secret != "" && *keyFile != "" {
				return usageError{"token: --jwt-secret and --key: give one"}
			}
			if *ttl <= 0 {
				// A token without exp never expires; the server refuses it
				// unless --jwt-allow-no-exp.
				return usageError{fmt.Sprintf("token: --ttl must be more than 0, not %v", *ttl)}
			}
			var key any = []byte(secret)
			if *keyFile != "" {
				k, err := auth.LoadPrivateKeyFile(*keyFile)
				if err != nil {
					return err
				}
				key = k
			}
			t := auth.Token{Subject: *sub, Name: *name, Issuer: *iss, TTL: *ttl, Extra: claims}
			for _, a := range strings.Split(*aud, ",") {
				if a = strings.TrimSpace(a); a != "" {
					t.Audience = append(t.Audience, a)
				}
			}
			tok, err := auth.Sign(t, *alg, key)
			if err != nil {
				return err
			}
			fmt.Println(tok)
			return nil
		},
	}
}

func tokenVerifyCommand() *ffcli.Command {
	fs := flag.NewFlagSet("throng token verify", flag.ContinueOnError)
	var o auth.Options
	var secret, pubKey string
	fs.StringVar(&secret, "jwt-secret", "", "HMAC secret, as serve's (also THRONG_JWT_SECRET)")
	fs.StringVar(&pubKey, "jwt-public-key", "", "PEM public key file, as serve's (also THRONG_JWT_PUBLIC_KEY)")
	fs.StringVar(&o.Issuer, "jwt-issuer", "", "required iss, as serve's")
	fs.StringVar(&o.Audience, "jwt-audience", "", "required aud, as serve's")
	fs.DurationVar(&o.Leeway, "jwt-leeway", auth.DefaultLeeway, "clock skew allowed, as serve's")
	fs.BoolVar(&o.AllowNoExp, "jwt-allow-no-exp", false, "accept a token without exp, as serve's")
	return &ffcli.Command{
		Name:       "verify",
		ShortUsage: "throng token verify [--jwt-secret S | --jwt-public-key F] [--jwt-issuer I] [--jwt-audience A] TOKEN|-",
		ShortHelp:  "check a token offline against the server's settings (the same flags and THRONG_JWT_* variables as serve)",
		LongHelp: "verify checks TOKEN (or one read from stdin with -) as serve would at the handshake, and prints\n" +
			"its user, name and expiry as JSON. It exits 1 with the reason if serve would refuse it.",
		FlagSet: fs,
		Options: envOptions,
		Exec: func(ctx context.Context, args []string) error {
			if len(args) != 1 {
				return usageError{"token verify: give one token, or - to read it from stdin"}
			}
			tok := args[0]
			if tok == "-" {
				line, err := bufio.NewReader(os.Stdin).ReadString('\n')
				if err != nil && !errors.Is(err, io.EOF) {
					return err
				}
				tok = strings.TrimSpace(line)
			}
			switch {
			case secret != "" && pubKey != "":
				return usageError{"token verify: --jwt-secret and --jwt-public-key: give one"}
			case secret == "" && pubKey == "":
				return usageError{"token verify: missing --jwt-secret (or THRONG_JWT_SECRET) or --jwt-public-key"}
			case pubKey != "":
				pem, err := auth.LoadPublicKeyFile(pubKey)
				if err != nil {
					return err
				}
				o.PublicKeyPEM = pem
			default:
				o.Secret = []byte(secret)
			}
			v, err := auth.New(o)
			if err != nil {
				return err
			}
			c, err := v.Verify(tok)
			if err != nil {
				return fmt.Errorf("token verify: refused (%s): %w", auth.ReasonOf(err), err)
			}
			out := struct {
				Valid     bool      `json:"valid"`
				Subject   string    `json:"sub"`
				Name      string    `json:"name,omitempty"`
				IssuedAt  time.Time `json:"iat,omitzero"`
				ExpiresAt time.Time `json:"exp,omitzero"`
				// Deadline is exp plus the leeway: when serve closes a
				// connection that uses the token.
				Deadline time.Time `json:"deadline,omitzero"`
			}{true, c.Subject, c.Name, c.IssuedAt.UTC(), c.ExpiresAt.UTC(), c.Deadline.UTC()}
			b, _ := json.MarshalIndent(out, "", "  ")
			fmt.Println(string(b))
			return nil
		},
	}
}
