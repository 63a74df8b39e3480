package handoff

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"sync/atomic"
	"time"
)

// Upgrader starts the binary on disk with this process's arguments and
// environment, and hands it the Source's listeners and connections.
type Upgrader struct {
	// Exe is the binary to start: the path this process was started from,
	// resolved when it started, so a binary installed over it since is the
	// one that runs.
	Exe string
	// Args are its arguments, os.Args[1:] for the same settings.
	Args []string
	// Env is its environment; if nil, os.Environ().
	Env []string
	// Source is the server whose connections move.
	Source Source
	// Options bound the waits. Stop is set by Upgrade.
	Options SendOptions
	// Logger receives the upgrade's log lines. If nil, slog.Default().
	Logger *slog.Logger

	running atomic.Bool
	stats   Stats
}

// Stats count upgrades, for metrics.
type Stats struct {
	Started    atomic.Uint64
	Committed  atomic.Uint64
	RolledBack atomic.Uint64 // failed after the new process started; every connection kept
	Refused    atomic.Uint64 // asked while another ran
	Conns      atomic.Int64  // connections in the last committed handoff
	Nanos      atomic.Int64  // the last committed handoff's frozen time
	MaxBatch   atomic.Int64  // the largest batch of the last committed handoff, bytes
	Running    atomic.Bool
}

// Stats returns the upgrader's counters.
func (u *Upgrader) Stats() *Stats { return &u.stats }

// Upgrade runs one upgrade. It returns nil once the new process owns every
// connection (this process should then exit), or an error: ErrInProgress if
// another upgrade is running, else why the upgrade failed, after every
// connection was taken back.
func (u *Upgrader) Upgrade(ctx context.Context) (Result, error) {
	log := u.Logger
	if log == nil {
		log = slog.Default()
	}
	if !u.running.CompareAndSwap(false, true) {
		u.stats.Refused.Add(1)
		log.Warn("upgrade: refused, another upgrade is in progress")
		return Result{}, ErrInProgress
	}
	defer u.running.Store(false)
	u.stats.Running.Store(true)
	defer u.stats.Running.Store(false)
	u.stats.Started.Add(1)
	log.Info("upgrade: starting the new process", "exe", u.Exe)
	begin := time.Now()
	cmd, c, err := u.start()
	if err != nil {
		u.stats.RolledBack.Add(1)
		log.Error("upgrade: failed, keeping every connection", "err", err)
		return Result{}, err
	}
	defer c.Close()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cmd.Process.Kill()
		cmd.Wait()
	}
	o := u.Options
	o.Stop = stop
	res, err := Send(ctx, c, u.Source, o)
	if err != nil {
		stop()
		u.stats.RolledBack.Add(1)
		log.Error("upgrade: failed, keeping every connection", "err", err, "new_pid", cmd.Process.Pid,
			"exit", cmd.ProcessState)
		return res, err
	}
	newPID := cmd.Process.Pid
	cmd.Process.Release() // it is not our child to wait for: it replaces us
	u.stats.Committed.Add(1)
	u.stats.Conns.Store(int64(res.Conns))
	u.stats.Nanos.Store(int64(res.Frozen))
	u.stats.MaxBatch.Store(int64(res.MaxBatch))
	log.Info("upgrade: handed over", "new_pid", newPID, "conns", res.Conns, "batches", res.Batches,
		"state_bytes", res.Bytes, "app_state_bytes", res.StateBytes, "app_state_chunks", res.StateChunks,
		"frozen", res.Frozen, "total", time.Since(begin))
	return res, nil
}

// start runs the new process with the child's end of a socket pair as
// descriptor 3.
func (u *Upgrader) start() (*exec.Cmd, *Conn, error) {
	fds, err := socketpair()
	if err != nil {
		return nil, nil, fmt.Errorf("handoff: socketpair: %w", err)
	}
	child := os.NewFile(uintptr(fds[1]), "handoff-child")
	defer child.Close()
	c, err := NewConn(fds[0])
	if err != nil {
		return nil, nil, err
	}
	env := u.Env
	if env == nil {
		env = os.Environ()
	}
	cmd := exec.Command(u.Exe, u.Args...)
	cmd.Env = append(env[:len(env):len(env)], EnvFD+"=3")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.ExtraFiles = []*os.File{child}
	if err := cmd.Start(); err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("handoff: start %s: %w", u.Exe, err)
	}
	return cmd, c, nil
}
