package client

import (
	"strings"
	"testing"
	"time"
)

// TestCompression: the client negotiates permessage-deflate by default, and
// long messages travel compressed both ways; NoCompression leaves it out.
func TestCompression(t *testing.T) {
	ts := startServer(t, serverConfig{auth: true, compression: true})
	e := newEvents()
	a := dialT(t, ts.URL(), e.options(Options{Token: ts.token("alice", time.Hour)}))
	ctx := ctxT(t)
	if _, err := a.Join(ctx, "lobby", "Alice"); err != nil {
		t.Fatal(err)
	}
	if st := ts.stats(); st.DeflateOpen != 1 {
		t.Fatalf("%d connections negotiated compression, want 1", st.DeflateOpen)
	}
	content := strings.Repeat("a long message worth compressing ", 12)
	if err := a.Send(ctx, "lobby", content); err != nil {
		t.Fatal(err)
	}
	if m := waitFor[Message](t, e, "message", nil); m.Content != content {
		t.Fatalf("message %q", m.Content)
	}
	// The server counts a message after writing it, perhaps after the
	// client read it.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		st := ts.stats()
		if st.DeflateMsgsIn == 1 && st.DeflateMsgsOut == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("compressed in %d, out %d; want 1 each", st.DeflateMsgsIn, st.DeflateMsgsOut)
		}
	}

	b := dialT(t, ts.URL(), newEvents().options(Options{Token: ts.token("bob", time.Hour), NoCompression: true}))
	if _, err := b.Join(ctx, "other", "Bob"); err != nil {
		t.Fatal(err)
	}
	if st := ts.stats(); st.DeflateOpen != 1 || st.Open != 2 {
		t.Fatalf("%d of %d connections negotiated compression, want 1 of 2", st.DeflateOpen, st.Open)
	}
}
