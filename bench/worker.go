package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"time"
)

// WorkerEnv names the environment variable that turns a re-executed throng into
// a bench worker: it holds the worker's configuration as JSON. The worker reads
// commands as JSON lines on stdin and writes replies as JSON lines on stdout;
// closing its stdin stops it.
const WorkerEnv = "THRONG_BENCH_WORKER_SPEC"

// part is a share of the load: an agent in this process, or one in a worker
// process. The coordinator talks to every part the same way.
type part interface {
	do(ctx context.Context, cmd command) reply
	stop() error
}

type localPart struct{ a *agent }

func (p localPart) do(ctx context.Context, cmd command) reply { return p.a.do(ctx, cmd) }
func (p localPart) stop() error                               { p.a.close(); return nil }

// remotePart is a worker process. Commands may overlap (a snapshot while an echo
// run is going on), so each carries an id and its reply is routed back by it.
type remotePart struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	inMu sync.Mutex // serializes command lines

	mu      sync.Mutex
	nextID  uint64
	waiting map[uint64]chan reply // guarded by mu
	err     error                 // guarded by mu: why the reader stopped

	readerDone chan struct{}
}

// startWorker starts a worker process running argv with cfg.
func startWorker(argv []string, cfg agentConfig) (*remotePart, error) {
	spec, err := json.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	c := exec.Command(argv[0], argv[1:]...)
	c.Env = append(os.Environ(), WorkerEnv+"="+string(spec))
	c.Stderr = os.Stderr
	in, err := c.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := c.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := c.Start(); err != nil {
		return nil, fmt.Errorf("bench: start worker: %w", err)
	}
	rp := &remotePart{cmd: c, in: in, waiting: make(map[uint64]chan reply), readerDone: make(chan struct{})}
	go rp.read(out)
	return rp, nil
}

func (rp *remotePart) read(out io.Reader) {
	defer close(rp.readerDone)
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	var err error
	for sc.Scan() {
		var r reply
		if err = json.Unmarshal(sc.Bytes(), &r); err != nil {
			err = fmt.Errorf("bench: worker reply: %w", err)
			break
		}
		rp.mu.Lock()
		ch := rp.waiting[r.ID]
		delete(rp.waiting, r.ID)
		rp.mu.Unlock()
		if ch != nil {
			ch <- r
		}
	}
	if err == nil {
		err = sc.Err()
	}
	if err == nil {
		err = errors.New("bench: worker exited")
	}
	rp.mu.Lock()
	rp.err = err
	for id, ch := range rp.waiting {
		ch <- reply{ID: id, Err: err.Error()}
		delete(rp.waiting, id)
	}
	rp.mu.Unlock()
}

func (rp *remotePart) do(ctx context.Context, cmd command) reply {
	ch := make(chan reply, 1)
	rp.mu.Lock()
	if rp.err != nil {
		err := rp.err
		rp.mu.Unlock()
		return reply{Err: err.Error()}
	}
	rp.nextID++
	cmd.ID = rp.nextID
	rp.waiting[cmd.ID] = ch
	rp.mu.Unlock()
	line, _ := json.Marshal(cmd)
	rp.inMu.Lock()
	_, err := rp.in.Write(append(line, '\n'))
	rp.inMu.Unlock()
	if err != nil {
		rp.mu.Lock()
		delete(rp.waiting, cmd.ID)
		rp.mu.Unlock()
		return reply{Err: fmt.Sprintf("bench: send to worker: %v", err)}
	}
	select {
	case r := <-ch:
		return r
	case <-ctx.Done():
		// The worker has the same deadline on its side and will answer soon;
		// the reply is dropped when it comes.
		return reply{Err: ctx.Err().Error()}
	}
}

// stop closes the worker's stdin, which makes it close its connections and
// exit, and waits for it; a worker that hangs is killed.
func (rp *remotePart) stop() error {
	rp.inMu.Lock()
	rp.in.Close()
	rp.inMu.Unlock()
	done := make(chan error, 1)
	go func() {
		<-rp.readerDone
		done <- rp.cmd.Wait()
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(15 * time.Second):
		rp.cmd.Process.Kill()
		return <-done
	}
}

// RunWorker is a worker process's main: spec is the value of WorkerEnv. It
// runs commands from in, each on its own goroutine as a snapshot may arrive
// while a long command runs, and writes replies to out, until in ends.
func RunWorker(ctx context.Context, spec string, in io.Reader, out io.Writer) error {
	var cfg agentConfig
	if err := json.Unmarshal([]byte(spec), &cfg); err != nil {
		return fmt.Errorf("bench: worker spec: %w", err)
	}
	a, err := newAgent(cfg)
	if err != nil {
		return err
	}
	defer a.close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var outMu sync.Mutex
	enc := json.NewEncoder(out)
	var wg sync.WaitGroup
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var cmd command
		if err := json.Unmarshal(sc.Bytes(), &cmd); err != nil {
			cancel()
			wg.Wait()
			return fmt.Errorf("bench: worker command: %w", err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := a.do(ctx, cmd)
			outMu.Lock()
			enc.Encode(r)
			outMu.Unlock()
		}()
	}
	cancel()
	wg.Wait()
	a.closeAll(context.Background())
	return sc.Err()
}

// WorkerMain runs a worker if this process was started as one, and reports
// whether it was, with the exit code. Both `throng bench` and test binaries call
// it first thing.
func WorkerMain() (isWorker bool, code int) {
	spec := os.Getenv(WorkerEnv)
	if spec == "" {
		return false, 0
	}
	if err := RunWorker(context.Background(), spec, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "throng bench worker:", err)
		return true, 1
	}
	return true, 0
}
