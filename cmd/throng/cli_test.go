package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestCLIHelpAndErrors runs the command line in process: help goes to stdout
// once, mistakes are one line on stderr with exit 2.
func TestCLIHelpAndErrors(t *testing.T) {
	for _, tc := range []struct {
		args       []string
		code       int
		stdout     string // a substring, or "" for empty
		stderr     string // a substring, or "" for empty
		stderrOnce bool   // stderr is one line
	}{
		{[]string{"--help"}, 0, "SUBCOMMANDS", "", false},
		{[]string{"serve", "--help"}, 0, "-ws-addr", "", false},
		{[]string{"help", "serve"}, 0, "-ws-addr", "", false},
		{[]string{"help", "bench", "echo"}, 0, "-inflight 1", "", false},
		{[]string{"help", "nope"}, 2, "", `no help for "nope"`, true},
		{[]string{"nope"}, 2, "", `unknown subcommand "nope"`, true},
		{[]string{"serve", "--no-such-flag"}, 2, "", "throng serve: flag provided but not defined: -no-such-flag (see throng serve --help)", true},
		{[]string{"bench", "echo", "--conns", "-5", "--url", "ws://127.0.0.1:22001"}, 2, "", "--conns must not be negative", true},
		{[]string{"bench", "echo", "--rate", "0", "--url", "ws://127.0.0.1:22001"}, 2, "", "--rate must be more than 0", true},
		{[]string{"token", "--jwt-secret", "0123456789abcdef0123456789abcdef"}, 2, "", "token: missing --sub", true},
		{[]string{"version"}, 0, "throng ", "", false},
		{[]string{"--version"}, 0, "throng ", "", false},
	} {
		var out, errb bytes.Buffer
		code := run(context.Background(), tc.args, &out, &errb)
		name := strings.Join(tc.args, " ")
		if code != tc.code {
			t.Errorf("%s: exit %d, want %d (stderr %q)", name, code, tc.code, errb.String())
		}
		if tc.stdout == "" && out.Len() > 0 || !strings.Contains(out.String(), tc.stdout) {
			t.Errorf("%s: stdout %q, want %q", name, out.String(), tc.stdout)
		}
		if tc.stderr == "" && errb.Len() > 0 || !strings.Contains(errb.String(), tc.stderr) {
			t.Errorf("%s: stderr %q, want %q", name, errb.String(), tc.stderr)
		}
		if tc.stderrOnce && strings.Count(errb.String(), "\n") != 1 {
			t.Errorf("%s: stderr is not one line: %q", name, errb.String())
		}
		if strings.Count(out.String(), "USAGE") > 1 {
			t.Errorf("%s: usage printed twice", name)
		}
	}
	// bench echo lists only its own flags, with the defaults it runs with.
	var out bytes.Buffer
	run(context.Background(), []string{"bench", "echo", "--help"}, &out, &out)
	for _, want := range []string{"-duration 10s", "-conns 100", "-inflight 1", "-size 64"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("bench echo --help lacks %q", want)
		}
	}
	for _, not := range []string{"-step-size", "-room-size", "-hold", "(0: 10s)", "-target 0"} {
		if strings.Contains(out.String(), not) {
			t.Errorf("bench echo --help shows %q:\n%s", not, out.String())
		}
	}
}
