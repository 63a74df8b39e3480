// Package buildinfo names the build that is running: the module's version and
// the VCS revision the binary was built from, as the Go toolchain stamps them,
// for `throng version`, /api/stats and the throng_build_info metric.
package buildinfo

import (
	"runtime"
	"runtime/debug"
)

// Info describes the running build.
type Info struct {
	// Version is the main module's version: a tag such as v1.2.3, a pseudo
	// version, or "(devel)" for a build from a work tree.
	Version string `json:"version"`
	// Revision is the VCS commit, with "+dirty" if the tree had changes;
	// empty when the build carries no VCS stamp (go run, go test).
	Revision string `json:"revision,omitempty"`
	// Time is the commit's time, RFC 3339, when stamped.
	Time string `json:"time,omitempty"`
	// Go is the toolchain's version.
	Go string `json:"go"`
}

// Read returns the running build's Info.
func Read() Info {
	i := Info{Version: "(devel)", Go: runtime.Version()}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return i
	}
	if v := bi.Main.Version; v != "" {
		i.Version = v
	}
	var dirty bool
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			i.Revision = s.Value
		case "vcs.time":
			i.Time = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if dirty && i.Revision != "" {
		i.Revision += "+dirty"
	}
	return i
}

// String is one line: "throng v1.2.3 (abc123…, 2026-01-02T…) go1.26".
func (i Info) String() string {
	s := "throng " + i.Version
	switch {
	case i.Revision != "" && i.Time != "":
		s += " (" + i.Revision + ", " + i.Time + ")"
	case i.Revision != "":
		s += " (" + i.Revision + ")"
	}
	return s + " " + i.Go
}
