package client

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer that RunChat's goroutines and the test share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitOutput waits until out contains want.
func waitOutput(t *testing.T, out *syncBuffer, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("output never showed %q; it is:\n%s", want, out.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRunChat drives `throng client`'s logic: stdin lines go to the room, the
// room's events come out one per line, and the end of stdin leaves the room.
func TestRunChat(t *testing.T) {
	ts := startServer(t, serverConfig{auth: true})
	inR, inW := io.Pipe()
	out := &syncBuffer{}
	done := make(chan error, 1)
	go func() {
		done <- RunChat(context.Background(), ChatConfig{
			URL:     ts.URL(),
			Room:    "lobby",
			Name:    "Cli",
			Options: Options{Token: ts.token("cli", time.Hour), BaseDelay: 10 * time.Millisecond},
			In:      inR,
			Out:     out,
		})
	}()
	waitOutput(t, out, "* joined lobby (1 here)")

	eb := newEvents()
	bob := dialT(t, ts.URL(), eb.options(Options{Token: ts.token("bob", time.Hour)}))
	ctx := ctxT(t)
	if _, err := bob.Join(ctx, "lobby", "Bob"); err != nil {
		t.Fatal(err)
	}
	waitOutput(t, out, "* Bob joined (2 here)")

	if err := bob.Send(ctx, "lobby", "hi from Bob"); err != nil {
		t.Fatal(err)
	}
	waitOutput(t, out, "] Bob: hi from Bob")

	io.WriteString(inW, "hello from stdin\n\n   \n")
	m := waitFor[Message](t, eb, "stdin line", func(m Message) bool { return m.UserName == "Cli" })
	if m.Content != "hello from stdin" {
		t.Fatalf("content = %q", m.Content)
	}

	// A server restart shows, and the session carries on.
	ts.restart(true)
	waitOutput(t, out, "! disconnected (close 1001: server shutting down); reconnecting")
	waitFor[Joined](t, eb, "Bob rejoins", func(j Joined) bool { return j.RoomID == "lobby" })
	waitOutput(t, out, "* joined lobby (")

	inW.Close()
	ul := waitFor[UserLeft](t, eb, "cli leaves", nil)
	if ul.UserName != "Cli" {
		t.Fatalf("user-left = %+v", ul)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("RunChat = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("RunChat did not return at the end of input")
	}
}

// TestRunChatErrors: a refused token and a missing room are reported.
func TestRunChatErrors(t *testing.T) {
	ts := startServer(t, serverConfig{auth: true})
	err := RunChat(ctxT(t), ChatConfig{URL: ts.URL(), Room: "r", Options: Options{Token: "bad"}, In: strings.NewReader(""), Out: io.Discard})
	if !errors.Is(err, ErrUnauthorized) {
		t.Fatalf("bad token: %v", err)
	}
	if err := RunChat(ctxT(t), ChatConfig{URL: ts.URL(), In: strings.NewReader(""), Out: io.Discard}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("no room: %v", err)
	}
	// Without a name the user id stands in.
	out := &syncBuffer{}
	err = RunChat(ctxT(t), ChatConfig{URL: ts.URL(), Room: "r", Options: Options{Token: ts.token("zed", time.Hour)}, In: strings.NewReader("x\n"), Out: out})
	if err != nil {
		t.Fatal(err)
	}
	waitOutput(t, out, "* joined r (1 here)")
}

// TestRunChatWaitsForLastReply: at the end of stdin, the error for the last
// line sent is printed before RunChat returns.
func TestRunChatWaitsForLastReply(t *testing.T) {
	ts := startServer(t, serverConfig{auth: true})
	out := &syncBuffer{}
	err := RunChat(ctxT(t), ChatConfig{URL: ts.URL(), Room: "r", Options: Options{Token: ts.token("yan", time.Hour)},
		In: strings.NewReader("fine\n" + strings.Repeat("y", 501) + "\n"), Out: out})
	if err != nil {
		t.Fatal(err)
	}
	if got := out.String(); !strings.Contains(got, "! invalid_message") {
		t.Fatalf("the last line's error was not printed before the end:\n%s", got)
	}
}
