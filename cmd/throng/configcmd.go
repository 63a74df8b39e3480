package main

import (
	"context"
	"fmt"
	"os"

	"github.com/peterbourgon/ff/v3/ffcli"

	"github.com/throng-ws/throng/config"
)

func configCommand() *ffcli.Command {
	var c config.Serve
	fs := c.FlagSet()
	sample := fs.Bool("sample", false, "write a commented sample config file (TOML; every setting at its default) instead")
	return &ffcli.Command{
		Name:       "config",
		ShortUsage: "throng config [serve's flags] [--sample]",
		ShortHelp:  "print the effective settings of serve, each with its source (flag, env, file, default)",
		LongHelp: "config takes the same flags, THRONG_* variables and --config file as serve, and prints\n" +
			"each setting's value and where it came from, secrets redacted. It checks them as serve would\n" +
			"and exits 1 if serve would refuse them. --sample prints a config file to start from.",
		FlagSet: fs,
		Options: config.Options(fs),
		Exec: func(ctx context.Context, args []string) error {
			if len(args) > 0 {
				return usageError{fmt.Sprintf("config: unexpected argument %q", args[0])}
			}
			if *sample {
				config.WriteSample(os.Stdout, fs)
				return nil
			}
			c.DevLoopback(fs)
			config.WriteEffective(os.Stdout, fs, nil, os.Environ())
			return c.Validate()
		},
	}
}
