package main

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestHTTPListenerBounds runs the binary with small HTTP listener bounds and
// checks they are in force: the cap is exported with the shedding counters,
// and an idle keep-alive connection is closed after --http-idle-timeout.
func TestHTTPListenerBounds(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary; skipped with -short")
	}
	if runtime.GOOS != "linux" {
		t.Skip("the server's event loops need linux")
	}
	bin := buildThrong(t)
	p := startThrong(t, bin, cleanEnv("THRONG_HTTP_MAX_CONNS=3"), "serve", "--dev",
		"--ws-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--http-idle-timeout", "300ms")
	_, httpAddr := p.servingAddrs(t)

	resp, err := http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	http.DefaultClient.CloseIdleConnections()
	for _, want := range []string{"throng_http_max_connections 3", "throng_http_shed_connections_total 0", "throng_http_accept_fd_errors_total 0"} {
		if !strings.Contains(string(body), want+"\n") {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	c, err := net.Dial("tcp", httpAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
	br := bufio.NewReader(c)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err = http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	_, err = br.ReadByte()
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		t.Fatal("idle keep-alive connection still open 3s after a 300ms --http-idle-timeout")
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := p.wait(t); err != nil {
		t.Fatalf("exit: %v", err)
	}
}
