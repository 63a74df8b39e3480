package server

import (
	"fmt"
	"io"
	"net/http"
	"testing"
	"time"
)

// BenchmarkEcho measures one client's echo round trip over loopback through the
// whole server path: epoll, frame parse, unmask, echo write.
func BenchmarkEcho(b *testing.B) {
	for _, size := range []int{16, 1 << 10, 16 << 10} {
		b.Run(fmt.Sprintf("size=%d", size), func(b *testing.B) {
			ts := startServer(b, Options{Loops: 1})
			c := rawDialB(b, ts.Addr, "/echo")
			out := frame(true, 0, 0x2, make([]byte, size), true)
			hdr := 2
			if size >= 126 {
				hdr = 4
			}
			in := make([]byte, hdr+size)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if _, err := c.Write(out); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(c.br, in); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkHandshakeJWT measures complete authenticated upgrades: TCP connect,
// request with a bearer token, JWT verification, 101, close.
func BenchmarkHandshakeJWT(b *testing.B) {
	ts := startAuthServer(b, Options{})
	tok := ts.token("bench-user", time.Hour)
	req := []byte("GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n" +
		"Authorization: Bearer " + tok + "\r\n\r\n")
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		c := rawConnectB(b, ts.Addr)
		c.Write(req)
		resp, err := http.ReadResponse(c.br, nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			b.Fatalf("handshake: %v %v", err, resp)
		}
		c.Close()
	}
}
