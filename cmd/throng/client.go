package main

import (
	"context"
	"errors"
	"flag"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/throng-ws/throng/client"
)

func clientCommand() *ffcli.Command {
	fs := flag.NewFlagSet("throng client", flag.ContinueOnError)
	url := fs.String("url", "ws://127.0.0.1:8080/ws", "the server's /ws URL")
	token := fs.String("token", "", "JWT for the server (sent as Authorization: Bearer)")
	room := fs.String("room", "", "room to join (required)")
	name := fs.String("name", "", "name shown to the room (empty: the token's user id)")
	maxAttempts := fs.Int("max-attempts", client.DefaultMaxAttempts, "reconnect attempts in a row before giving up (negative: never reconnect)")
	maxDelay := fs.Duration("max-delay", client.DefaultMaxDelay, "longest wait between reconnect attempts")
	return &ffcli.Command{
		Name:       "client",
		ShortUsage: "throng client --url ws://HOST:PORT/ws --token T --room R [--name N]",
		ShortHelp:  "chat in a room: stdin lines are sent, the room's events are printed",
		LongHelp: "client joins a room and stays in it, reconnecting with backoff and joining again\n" +
			"after a drop. Each line read from stdin is sent to the room; messages, joins, leaves\n" +
			"and errors are printed one per line. The end of stdin leaves the room.",
		FlagSet: fs,
		Options: envOptions,
		Exec: func(ctx context.Context, _ []string) error {
			if *room == "" {
				return errors.New("client: --room is required")
			}
			ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return client.RunChat(ctx, client.ChatConfig{
				URL:  *url,
				Room: *room,
				Name: *name,
				Options: client.Options{
					Token:       *token,
					MaxAttempts: *maxAttempts,
					MaxDelay:    *maxDelay,
				},
				In:          os.Stdin,
				Out:         os.Stdout,
				SendTimeout: 5 * time.Second,
			})
		},
	}
}
