package bench

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// clockTicks is USER_HZ, the unit of /proc/PID/stat times. It is 100 on every
// Linux architecture Go supports; reading sysconf(_SC_CLK_TCK) would need cgo.
const clockTicks = 100

// procRSS reads a process's resident set size from /proc/PID/status.
func procRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("bench: server rss: %w", err)
	}
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		v, ok := bytes.CutPrefix(line, []byte("VmRSS:"))
		if !ok {
			continue
		}
		f := bytes.Fields(v)
		if len(f) < 1 {
			break
		}
		kb, err := strconv.ParseInt(string(f[0]), 10, 64)
		if err != nil {
			break
		}
		return kb << 10, nil
	}
	return 0, fmt.Errorf("bench: no VmRSS in /proc/%d/status", pid)
}

// procCPU reads a process's CPU time in nanoseconds: the sum over its threads
// of the first field of /proc/PID/task/TID/schedstat, time on a CPU. Clock
// ticks (/proc/PID/stat) are 10ms, too coarse for a short step's CPU per
// delivery; they are the fallback where schedstat is missing.
func procCPU(pid int) (time.Duration, error) {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err == nil {
		var sum time.Duration
		n := 0
		for _, t := range tasks {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, t.Name()))
			if err != nil {
				continue // the thread has exited
			}
			f := bytes.Fields(b)
			if len(f) < 1 {
				continue
			}
			ns, err := strconv.ParseInt(string(f[0]), 10, 64)
			if err != nil {
				continue
			}
			sum += time.Duration(ns)
			n++
		}
		if n > 0 {
			return sum, nil
		}
	}
	return procStatCPU(pid)
}

// procStatCPU reads a process's user plus system CPU time from /proc/PID/stat,
// in clock ticks.
func procStatCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("bench: server cpu: %w", err)
	}
	// The command name, field 2, may hold spaces and parentheses: fields are
	// counted from after its last ')'. utime and stime are fields 14 and 15.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("bench: malformed /proc/%d/stat", pid)
	}
	f := bytes.Fields(b[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("bench: malformed /proc/%d/stat", pid)
	}
	ut, err1 := strconv.ParseInt(string(f[11]), 10, 64)
	st, err2 := strconv.ParseInt(string(f[12]), 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("bench: malformed /proc/%d/stat", pid)
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// selfCPU is this process's user plus system CPU time.
func selfCPU() time.Duration {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// raiseFileLimit lifts the soft open-file limit to the hard one, as every
// connection is a descriptor.
func raiseFileLimit() {
	var rl unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &rl) == nil && rl.Cur < rl.Max {
		rl.Cur = rl.Max
		unix.Setrlimit(unix.RLIMIT_NOFILE, &rl)
	}
}

// procStat is what the upgrade scenario samples of a server process.
type procStat struct {
	rss    int64
	exited bool // a zombie: it has exited and waits for its parent
}

// procState reads a process's RSS and whether it has exited. A process that
// is gone is an error.
func procState(pid int) (procStat, error) {
	if pid <= 0 {
		return procStat{}, fmt.Errorf("bench: no process %d", pid)
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return procStat{}, fmt.Errorf("bench: process %d: %w", pid, err)
	}
	var st procStat
	for line := range bytes.SplitSeq(b, []byte("\n")) {
		if v, ok := bytes.CutPrefix(line, []byte("State:")); ok {
			f := bytes.Fields(v)
			st.exited = len(f) > 0 && (f[0][0] == 'Z' || f[0][0] == 'X')
		}
		if v, ok := bytes.CutPrefix(line, []byte("VmRSS:")); ok {
			if f := bytes.Fields(v); len(f) > 0 {
				kb, _ := strconv.ParseInt(string(f[0]), 10, 64)
				st.rss = kb << 10
			}
		}
	}
	return st, nil
}

// procChildren lists a process's children, from every thread's children file.
func procChildren(pid int) []int {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return nil
	}
	var out []int
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, t.Name()))
		if err != nil {
			continue
		}
		for f := range bytes.FieldsSeq(b) {
			if k, err := strconv.Atoi(string(f)); err == nil {
				out = append(out, k)
			}
		}
	}
	return out
}
