package server

import (
	"strings"
	"testing"

	"github.com/gorilla/websocket"
)

func TestEchoTextAndBinary(t *testing.T) {
	ts := startServer(t, Options{})
	c := dial(t, ts.URL("/echo"), nil)
	for _, tc := range []struct {
		op   int
		data string
	}{
		{websocket.TextMessage, "hello"},
		{websocket.BinaryMessage, "\x00\x01\xff"},
		{websocket.TextMessage, strings.Repeat("é", 20000)},
	} {
		if err := c.WriteMessage(tc.op, []byte(tc.data)); err != nil {
			t.Fatal(err)
		}
		op, b, err := c.ReadMessage()
		if err != nil {
			t.Fatal(err)
		}
		if op != tc.op || string(b) != tc.data {
			t.Fatalf("echo: got op %d len %d, want op %d len %d", op, len(b), tc.op, len(tc.data))
		}
	}
}
