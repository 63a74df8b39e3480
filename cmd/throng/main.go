// Command throng is a WebSocket server for hundreds of thousands of mostly idle
// connections per node, and a load tester for it and its peers.
//
//	throng serve [flags]              run the server
//	throng token [flags]              print a signed JWT; token verify checks one
//	throng bench <scenario> [flags]   load-test throng or a peer: idle, echo,
//	                                  broadcast, chat, churn, reconnect-storm
//	throng client [flags]             a terminal chat client for /ws
//	throng config [flags]             the effective settings, or a sample file
//	throng version                    the build's version
//
// Every flag can also be set through the environment: --ws-addr is
// THRONG_WS_ADDR.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/peterbourgon/ff/v3"
	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/throng-ws/throng/config"
	"github.com/throng-ws/throng/internal/buildinfo"
)

func main() {
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr))
}

// usageError is a mistake in the command line: one line on stderr, exit 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// run runs the command line args and returns the exit status: 0, 1 for a
// failure, 2 for a mistake in the command line. Help goes to stdout, errors to
// stderr, each once.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var version bool
	rootFS := flag.NewFlagSet("throng", flag.ContinueOnError)
	rootFS.BoolVar(&version, "version", false, "print the version and exit")
	root := &ffcli.Command{
		Name:       "throng",
		ShortUsage: "throng <subcommand> [flags]",
		LongHelp: "throng holds many mostly idle WebSocket connections on a few event loops.\n" +
			"Every flag can also be set as an environment variable: --ws-addr is THRONG_WS_ADDR.\n" +
			"`throng help <subcommand>` or `throng <subcommand> --help` describes one.",
		FlagSet: rootFS,
		Subcommands: []*ffcli.Command{serveCommand(), tokenCommand(), benchCommand(), clientCommand(),
			configCommand(), versionCommand(stdout)},
	}
	root.Exec = func(_ context.Context, args []string) error {
		switch {
		case version:
			fmt.Fprintln(stdout, buildinfo.Read())
			return nil
		case len(args) == 0:
			fmt.Fprint(stderr, usage(root))
			return usageError{}
		}
		return usageError{fmt.Sprintf("unknown subcommand %q (see throng --help)", args[0])}
	}
	help := &ffcli.Command{
		Name:       "help",
		ShortUsage: "throng help [subcommand...]",
		ShortHelp:  "describe a subcommand",
		FlagSet:    flag.NewFlagSet("throng help", flag.ContinueOnError),
	}
	help.Exec = func(_ context.Context, args []string) error {
		c := root
		for _, a := range args {
			sub := find(c.Subcommands, a)
			if sub == nil {
				return usageError{fmt.Sprintf("no help for %q: %s has no subcommand %q (see %s --help)", strings.Join(args, " "), c.Name, a, c.FlagSet.Name())}
			}
			c = sub
		}
		fmt.Fprint(stdout, usage(c))
		return nil
	}
	root.Subcommands = append(root.Subcommands, help)

	// The flag package prints nothing itself: help and errors are written
	// below, once, to the right stream. failed is the command whose flags did
	// not parse.
	var failed *ffcli.Command
	walk(root, func(c *ffcli.Command) {
		c.FlagSet.SetOutput(io.Discard)
		c.UsageFunc = func(c *ffcli.Command) string { failed = c; return "" }
	})
	if err := root.Parse(args); err != nil {
		c := cmp(failed, root)
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, usage(c))
			return 0
		}
		fmt.Fprintf(stderr, "%s: %s (see %s --help)\n", c.FlagSet.Name(), strings.TrimPrefix(err.Error(), "error parsing commandline arguments: "), c.FlagSet.Name())
		return 2
	}
	err := root.Run(ctx)
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ue):
		if ue.msg != "" {
			fmt.Fprintln(stderr, "throng:", ue.msg)
		}
		return 2
	case errors.Is(err, flag.ErrHelp):
		// A command with subcommands run without one.
		fmt.Fprint(stderr, usage(cmp(failed, root)))
		return 2
	}
	fmt.Fprintln(stderr, "throng:", err)
	return 1
}

func cmp(c, def *ffcli.Command) *ffcli.Command {
	if c != nil {
		return c
	}
	return def
}

func find(cs []*ffcli.Command, name string) *ffcli.Command {
	for _, c := range cs {
		if strings.EqualFold(c.Name, name) {
			return c
		}
	}
	return nil
}

func walk(c *ffcli.Command, fn func(*ffcli.Command)) {
	if c.FlagSet == nil {
		c.FlagSet = flag.NewFlagSet("throng "+c.Name, flag.ContinueOnError)
	}
	fn(c)
	for _, s := range c.Subcommands {
		walk(s, fn)
	}
}

// usage is a command's help text.
func usage(c *ffcli.Command) string {
	return strings.TrimRight(ffcli.DefaultUsageFunc(c), "\n") + "\n"
}

func versionCommand(stdout io.Writer) *ffcli.Command {
	return &ffcli.Command{
		Name:       "version",
		ShortUsage: "throng version",
		ShortHelp:  "print the version: module version, VCS revision, Go version",
		FlagSet:    flag.NewFlagSet("throng version", flag.ContinueOnError),
		Exec: func(context.Context, []string) error {
			fmt.Fprintln(stdout, buildinfo.Read())
			return nil
		},
	}
}

// envOptions makes every flag of a subcommand readable as THRONG_<FLAG>.
var envOptions = []ff.Option{ff.WithEnvVarPrefix(config.EnvPrefix)}
