package poller

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// emfileChildEnv makes the test binary a server out of descriptors, for
// TestAcceptOutOfDescriptors: RLIMIT_NOFILE is the process's, so the server
// runs in a child where lowering it cannot break the other tests.
const emfileChildEnv = "THRONG_POLLER_EMFILE_CHILD"

// TestAcceptOutOfDescriptors connects to a server that has descriptors for
// only a few connections. The rest must be shed: each client sees its
// connection closed promptly instead of hanging in the listen queue, the
// poller counts them, warns at most once a second, and does not spin.
func TestAcceptOutOfDescriptors(t *testing.T) {
	if b := os.Getenv(emfileChildEnv); b != "" {
		if Backend(b) == testBackend {
			emfileChild()
		}
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestAcceptOutOfDescriptors$", "-test.count=1")
	cmd.Env = append(os.Environ(), emfileChildEnv+"="+string(testBackend))
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stdin.Close()
		cmd.Wait()
	}()
	out := bufio.NewReader(stdout)
	line := func() string {
		s, err := out.ReadString('\n')
		if err != nil {
			t.Fatalf("child: %v\n%s", err, stderr.String())
		}
		return strings.TrimSpace(s)
	}
	// The child's TestMain runs the suite for the other backends first, and
	// says PASS for them.
	var addr string
	for ok := false; !ok; {
		addr, ok = strings.CutPrefix(line(), "addr ")
	}
	stats := func() (shed, errs uint64, cpu time.Duration) {
		fmt.Fprintln(stdin, "stats")
		if _, err := fmt.Sscan(line(), &shed, &errs, &cpu); err != nil {
			t.Fatal(err)
		}
		return
	}

	const clients = 12
	served, closed := 0, 0
	for i := range clients {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			t.Fatalf("client %d: %v", i, err)
		}
		defer c.Close() // the served ones hold their descriptors to the end
		c.SetDeadline(time.Now().Add(2 * time.Second))
		c.Write([]byte("hi\n"))
		got := make([]byte, 3)
		_, err = io.ReadFull(c, got)
		switch {
		case err == nil && string(got) == "hi\n":
			served++
		case errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET):
			closed++
		default:
			t.Fatalf("client %d: read %q, %v: neither served nor closed", i, got, err)
		}
	}
	// The counters move just after the close the clients saw.
	shed, errs, cpu0 := stats()
	for end := time.Now().Add(time.Second); (shed < uint64(closed) || errs < shed) && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
		shed, errs, cpu0 = stats()
	}
	time.Sleep(500 * time.Millisecond)
	_, _, cpu1 := stats()
	t.Logf("served %d, closed %d; child shed %d, accept errors %d; %v of CPU while idle", served, closed, shed, errs, cpu1-cpu0)
	if served == 0 || closed == 0 {
		t.Fatalf("served %d, closed %d: want some of each", served, closed)
	}
	if shed < uint64(closed) || errs < shed {
		t.Fatalf("child counted %d shed and %d accept errors for %d closed clients", shed, errs, closed)
	}
	if cpu1-cpu0 > 100*time.Millisecond {
		t.Fatalf("child used %v of CPU in 500ms with nothing to do: spinning on the listener", cpu1-cpu0)
	}
	stdin.Close()
	cmd.Wait()
	if n := strings.Count(stderr.String(), "accept failed"); n < 1 || n > 3 {
		t.Fatalf("%d accept warnings for %d failures in about a second, want 1 to 3:\n%s", n, errs, stderr.String())
	}
}

// emfileChild serves line echo with three descriptors to spare, reports its
// counters when asked on stdin, and exits when stdin closes.
func emfileChild() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	p, err := New(&lineEcho{}, Options{Backend: testBackend, Loops: 1, Logger: log})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	addr, err := p.Listen("127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// One connection first, so that netpoll creates its pollers (which take
	// descriptors) before there are none to spare.
	if c, err := net.Dial("tcp", addr.String()); err == nil {
		c.Write([]byte("warm\n"))
		io.ReadFull(c, make([]byte, 5))
		c.Close()
	}
	time.Sleep(50 * time.Millisecond) // for the server side to close too
	fds, _ := os.ReadDir("/proc/self/fd")
	lim := unix.Rlimit{Cur: uint64(len(fds) + 3), Max: uint64(len(fds) + 3)}
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Printf("addr %s\n", addr)
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		var ru unix.Rusage
		unix.Getrusage(unix.RUSAGE_SELF, &ru)
		cpu := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		st := p.Stats()
		fmt.Printf("%d %d %d\n", st.Shed, st.AcceptErrors, int64(cpu))
	}
	p.Close()
	os.Exit(0)
}
