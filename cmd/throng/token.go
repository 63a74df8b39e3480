package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"time"

	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/throng-ws/throng/auth"
)

func tokenCommand() *ffcli.Command {
	fs := flag.NewFlagSet("throng token", flag.ContinueOnError)
	secret := fs.String("secret", "", "HMAC secret (also THRONG_SECRET)")
	sub := fs.String("sub", "", "subject: the user id")
	ttl := fs.Duration("ttl", time.Hour, "lifetime, more than 0: every token carries exp")
	name := fs.String("name", "", "optional display name claim")
	alg := fs.String("alg", "HS256", "HS256, HS384 or HS512")
	return &ffcli.Command{
		Name:       "token",
		ShortUsage: "throng token --secret S --sub ID [--ttl 1h] [--name NAME]",
		ShortHelp:  "print a signed JWT for a user",
		FlagSet:    fs,
		Options:    envOptions,
		Exec: func(ctx context.Context, _ []string) error {
			if *secret == "" || *sub == "" {
				return errors.New("token: --secret and --sub are required")
			}
			if *ttl <= 0 {
				// A token without exp never expires; the server refuses it
				// unless --jwt-allow-no-exp.
				return fmt.Errorf("token: --ttl must be more than 0, not %v", *ttl)
			}
			tok, err := auth.Mint([]byte(*secret), *alg, *sub, *ttl, *name, time.Now())
			if err != nil {
				return err
			}
			fmt.Println(tok)
			return nil
		},
	}
}
