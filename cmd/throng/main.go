// Command throng is a WebSocket server for hundreds of thousands of mostly idle
// connections per node, and a load tester for it and its peers.
//
//	throng serve [flags]              run the server
//	throng token [flags]              print a signed JWT
//	throng bench <scenario> [flags]   load-test throng or a peer: idle, echo,
//	                                  broadcast, chat, churn, reconnect-storm
//	throng client [flags]             a terminal chat client for /ws
//
// Every flag can also be set through the environment: --ws-addr is
// THRONG_WS_ADDR.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/peterbourgon/ff/v3"
	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/throng-ws/throng/config"
)

func main() {
	root := &ffcli.Command{
		Name:       "throng",
		ShortUsage: "throng <subcommand> [flags]",
		LongHelp: "throng holds many mostly idle WebSocket connections on a few event loops.\n" +
			"Every flag can also be set as an environment variable: --ws-addr is THRONG_WS_ADDR.",
		Subcommands: []*ffcli.Command{serveCommand(), tokenCommand(), benchCommand(), clientCommand()},
		Exec: func(context.Context, []string) error {
			return flag.ErrHelp
		},
	}
	if err := root.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintln(os.Stderr, "throng:", err)
		os.Exit(2)
	}
	if err := root.Run(context.Background()); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, ffcli.DefaultUsageFunc(root))
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "throng:", err)
		os.Exit(1)
	}
}

// envOptions makes every flag of a subcommand readable as THRONG_<FLAG>.
var envOptions = []ff.Option{ff.WithEnvVarPrefix(config.EnvPrefix)}
