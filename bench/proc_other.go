//go:build !linux

package bench

import (
	"errors"
	"time"
)

var errNoProc = errors.New("bench: server measurements need Linux's /proc")

func procRSS(int) (int64, error)         { return 0, errNoProc }
func procCPU(int) (time.Duration, error) { return 0, errNoProc }
func selfCPU() time.Duration             { return 0 }
func raiseFileLimit()                    {}

type procStat struct {
	rss    int64
	exited bool
}

func procState(int) (procStat, error) { return procStat{}, errNoProc }
func procChildren(int) []int          { return nil }
