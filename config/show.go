package config

import (
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/throng-ws/throng/internal/redact"
)

// Sources of a setting's value, as WriteEffective names them.
const (
	SourceFlag    = "flag"
	SourceEnv     = "env"
	SourceFile    = "file"
	SourceDefault = "default"
)

// secretFlags are never printed, only whether they are set.
var secretFlags = map[string]bool{"jwt-secret": true, "api-key": true}

// EnvName is the environment variable of a flag: ws-addr is THRONG_WS_ADDR.
func EnvName(flagName string) string {
	return EnvPrefix + "_" + strings.ToUpper(strings.NewReplacer("-", "_", ".", "_").Replace(flagName))
}

// Source tells where fs's flag name got its value, once fs is parsed from
// args, environ and the --config file: ff sets a flag from the command line
// first, then from the environment, then from the file, each only if the
// earlier ones left it unset.
func Source(fs *flag.FlagSet, name string, args, environ []string) string {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	if !set {
		return SourceDefault
	}
	for _, a := range args {
		if a == "--" {
			break
		}
		a = strings.TrimLeft(a, "-")
		a, _, _ = strings.Cut(a, "=")
		if a == name {
			return SourceFlag
		}
	}
	env := EnvName(name) + "="
	for _, e := range environ {
		if strings.HasPrefix(e, env) {
			return SourceEnv
		}
	}
	return SourceFile
}

// WriteEffective writes every setting of fs with its value and source, one a
// line, secrets shown only as set or not and URLs' credentials redacted.
// args are the command line's arguments (os.Args[1:] if nil).
func WriteEffective(w io.Writer, fs *flag.FlagSet, args, environ []string) {
	if args == nil {
		args = os.Args[1:]
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SETTING\tVALUE\tSOURCE\tENV")
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name == "sample" {
			return
		}
		v := f.Value.String()
		switch {
		case secretFlags[f.Name] && v != "":
			v = fmt.Sprintf("(set, %d bytes)", len(v))
		case v == "":
			v = `""`
		default:
			v = redact.String(v)
		}
		fmt.Fprintf(tw, "--%s\t%s\t%s\t%s\n", f.Name, v, Source(fs, f.Name, args, environ), EnvName(f.Name))
	})
	tw.Flush()
}

// WriteSample writes a TOML config file with every setting of fs at its
// default, commented out, each under its help text: a file to start from.
func WriteSample(w io.Writer, fs *flag.FlagSet) {
	fmt.Fprintln(w, "# throng serve settings. Each key is a flag's name without the dashes;")
	fmt.Fprintln(w, "# a flag or THRONG_* variable wins over the file. Uncomment what you change.")
	fmt.Fprintln(w, "# Use it with: throng serve --config throng.toml")
	fs.VisitAll(func(f *flag.Flag) {
		if f.Name == "config" || f.Name == "sample" {
			return
		}
		fmt.Fprintln(w)
		for _, l := range wrap(f.Usage, 76) {
			fmt.Fprintln(w, "# "+l)
		}
		fmt.Fprintf(w, "# %s = %s\n", f.Name, tomlValue(f.DefValue))
	})
}

// tomlValue writes a default as TOML: numbers and booleans bare, the rest
// (durations and sizes included) as strings, which every flag parses.
func tomlValue(v string) string {
	if v == "true" || v == "false" {
		return v
	}
	if _, err := strconv.ParseInt(v, 10, 64); err == nil {
		return v
	}
	if _, err := strconv.ParseFloat(v, 64); err == nil && !strings.ContainsAny(v, "eEnN") {
		return v
	}
	return strconv.Quote(v)
}

func wrap(s string, width int) []string {
	var lines []string
	var cur strings.Builder
	for _, w := range strings.Fields(s) {
		if cur.Len() > 0 && cur.Len()+1+len(w) > width {
			lines = append(lines, cur.String())
			cur.Reset()
		}
		if cur.Len() > 0 {
			cur.WriteByte(' ')
		}
		cur.WriteString(w)
	}
	if cur.Len() > 0 {
		lines = append(lines, cur.String())
	}
	return lines
}
