package chat

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/throng-ws/throng/server"
)

// rawChat is a chat client on a raw socket that offers permessage-deflate and
// reads frames with their RSV1 bit, inflating with the standard library.
func rawChat(t *testing.T, ts *testServer, offer string) *rawConn {
	t.Helper()
	c := rawConnect(t, ts.Addr)
	req := "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
	if offer != "" {
		req += "Sec-WebSocket-Extensions: " + offer + "\r\n"
	}
	c.Write([]byte(req + "\r\n"))
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v %v", resp, err)
	}
	return c
}

// next reads one message: its text, inflated if it came compressed, and
// whether it did.
func (c *rawConn) next() (string, bool) {
	c.t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var h [2]byte
	if _, err := io.ReadFull(c.br, h[:]); err != nil {
		c.t.Fatal(err)
	}
	n := uint64(h[1] & 0x7f)
	switch n {
	case 126:
		var e [2]byte
		io.ReadFull(c.br, e[:])
		n = uint64(binary.BigEndian.Uint16(e[:]))
	case 127:
		var e [8]byte
		io.ReadFull(c.br, e[:])
		n = binary.BigEndian.Uint64(e[:])
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(c.br, p); err != nil {
		c.t.Fatal(err)
	}
	if h[0]&0x40 == 0 {
		return string(p), false
	}
	r := flate.NewReader(io.MultiReader(bytes.NewReader(p), bytes.NewReader([]byte{0, 0, 0xff, 0xff, 1, 0, 0, 0xff, 0xff})))
	out, err := io.ReadAll(r)
	if err != nil {
		c.t.Fatalf("inflate: %v", err)
	}
	return string(out), true
}

// TestChatBroadcastDeflated puts members with and without compression in one
// room: each gets every message once, the compressing ones compressed (when
// it is long enough to be worth it), from one compressed encoding per
// broadcast.
func TestChatBroadcastDeflated(t *testing.T) {
	ts := startChatServer(t, server.Options{Compression: server.CompressionOn}, nil)
	z := rawChat(t, ts, "permessage-deflate; client_max_window_bits")
	plain := rawChat(t, ts, "")
	small := rawChat(t, ts, "permessage-deflate; server_max_window_bits=10")
	d := websocket.Dialer{EnableCompression: true}
	g, _, err := d.Dial(ts.URL("/ws"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	g.SetReadDeadline(time.Now().Add(5 * time.Second))
	readText(t, g) // connected
	for _, c := range []*rawConn{z, plain, small} {
		c.next() // connected
	}
	join := []byte(`{"type":"join","roomId":"lobby","userName":"Member"}`)
	for i, c := range []*rawConn{z, plain, small} {
		c.send(0x1, join)
		if m, _ := c.next(); !strings.Contains(m, `"joined"`) {
			t.Fatalf("join: %s", m)
		}
		for _, o := range []*rawConn{z, plain, small}[:i] {
			o.next() // user-joined
		}
	}
	g.WriteMessage(websocket.TextMessage, join)
	readText(t, g)
	for _, c := range []*rawConn{z, plain, small} {
		c.next()
	}
	if n := ts.Rooms.Deflaters("lobby"); n != 2 {
		t.Fatalf("Deflaters %d, want 2 (the full-window members)", n)
	}
	before := ts.Server.Stats().DeflateMsgsOut
	content := strings.Repeat("compressed once for everyone ", 8)
	g.WriteMessage(websocket.TextMessage, []byte(`{"type":"chat","roomId":"lobby","content":"`+content+`"}`))
	want := ""
	for _, tc := range []struct {
		name       string
		c          *rawConn
		compressed bool
	}{{"deflate", z, true}, {"plain", plain, false}, {"small window", small, false}} {
		m, compressed := tc.c.next()
		if compressed != tc.compressed || !strings.Contains(m, content) {
			t.Fatalf("%s: compressed %v, message %s", tc.name, compressed, m)
		}
		if want == "" {
			want = m
		} else if m != want {
			t.Fatalf("%s: %s, others %s", tc.name, m, want)
		}
	}
	if m := readText(t, g); m != want {
		t.Fatalf("gorilla: %s", m)
	}
	// Counted after the write, so perhaps after the client read it.
	waitFor(t, "two messages counted compressed (the raw member's and gorilla's)", func() bool {
		return ts.Server.Stats().DeflateMsgsOut-before == 2
	})
}
