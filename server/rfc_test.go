package server

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"
	"github.com/gorilla/websocket"

	"github.com/throng-ws/throng/wsframe"
)

// The tests in this file check RFC 6455's rules for a server over loopback
// sockets: illegal input goes through rawConn, which writes exactly the bytes a
// test asks for, and legal traffic through gorilla/websocket as an independent
// peer. Every failure is checked for its exact close code and for the end of the
// TCP stream that must follow the server's close frame.

// Opcodes, as the raw client writes them.
const (
	rfcCont   byte = 0x0
	rfcText   byte = 0x1
	rfcBinary byte = 0x2
	rfcClose  byte = 0x8
	rfcPing   byte = 0x9
	rfcPong   byte = 0xa
)

// RSV bits as frame's rsv argument, which it shifts into bits 6..4.
const (
	rfcRSV1 byte = 4
	rfcRSV2 byte = 2
	rfcRSV3 byte = 1
)

// rfcFinal is a masked final client frame; rfcFirst is one with FIN clear, the
// first of a fragmented message.
func rfcFinal(op byte, payload string) []byte { return frame(true, 0, op, []byte(payload), true) }
func rfcFirst(op byte, payload string) []byte { return frame(false, 0, op, []byte(payload), true) }

// rfcNext is a masked continuation frame.
func rfcNext(fin bool, payload string) []byte { return frame(fin, 0, rfcCont, []byte(payload), true) }

// rfcRequest is an upgrade request for /echo, for tests that write it
// themselves.
const rfcRequest = "GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
	"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"

// rfcCloseBody is a close frame body: a code and a reason.
func rfcCloseBody(code uint16, reason string) string {
	return string(binary.BigEndian.AppendUint16(nil, code)) + reason
}

// rfcWrite writes the frames in one write. A server that has failed the
// connection may already have closed it, so write errors are left for the
// reads that follow to explain.
func rfcWrite(c *rawConn, frames ...[]byte) error {
	_, err := c.Write(bytes.Join(frames, nil))
	return err
}

// rfcExpectFrame reads the next server frame and checks it is a final frame of
// op with payload.
func rfcExpectFrame(t *testing.T, c *rawConn, op byte, payload string) {
	t.Helper()
	gotOp, fin, p, err := c.readFrame()
	if err != nil {
		t.Fatalf("want frame op %#x (%d bytes): %v", op, len(payload), err)
	}
	if gotOp != op || !fin || string(p) != payload {
		t.Fatalf("frame op %#x fin %v payload %s, want op %#x fin true payload %s",
			gotOp, fin, rfcTrunc(p), op, rfcTrunc([]byte(payload)))
	}
}

// rfcExpectClose reads the next server frame, which must be a close frame with
// code (1005 for an empty body), and then the end of the stream.
func rfcExpectClose(t *testing.T, c *rawConn, code int) {
	t.Helper()
	op, fin, p, err := c.readFrame()
	if err != nil {
		t.Fatalf("want close %d: %v", code, err)
	}
	if op != rfcClose || !fin {
		t.Fatalf("want close %d, got frame op %#x fin %v payload %s", code, op, fin, rfcTrunc(p))
	}
	got := 1005
	if len(p) >= 2 {
		got = int(binary.BigEndian.Uint16(p))
	}
	if got != code || len(p) == 1 {
		t.Fatalf("close body %q (code %d), want code %d", p, got, code)
	}
	if !utf8.Valid(p[min(2, len(p)):]) {
		t.Fatalf("close reason %q is not UTF-8", p[2:])
	}
	c.expectEOF()
}

// rfcTrunc quotes p for a failure message, cut short if long.
func rfcTrunc(p []byte) string {
	if len(p) > 40 {
		return fmt.Sprintf("%q...(%d bytes)", p[:40], len(p))
	}
	return fmt.Sprintf("%q", p)
}

// rfcOut is a frame the server is expected to send.
type rfcOut struct {
	op      byte
	payload string
}

// rfcFailCase is input that must make the server fail the connection with code.
type rfcFailCase struct {
	name   string
	frames [][]byte
	// before are frames the server must send before its close frame.
	before []rfcOut
	code   int
}

func rfcRunFailCases(t *testing.T, o Options, cases []rfcFailCase) {
	t.Helper()
	ts := startServer(t, o)
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := rawDial(t, ts.Addr, "/echo")
			rfcWrite(c, tc.frames...)
			for _, f := range tc.before {
				rfcExpectFrame(t, c, f.op, f.payload)
			}
			rfcExpectClose(t, c, tc.code)
		})
	}
}

func TestRFCUnmaskedFrame(t *testing.T) {
	var cases []rfcFailCase
	for _, tc := range []struct {
		name    string
		fin     bool
		op      byte
		payload string
	}{
		{"text", true, rfcText, "hello"},
		{"binary", true, rfcBinary, "\x00\x01"},
		{"empty text", true, rfcText, ""},
		{"first fragment", false, rfcText, "hel"},
		{"ping", true, rfcPing, "p"},
		{"pong", true, rfcPong, "p"},
		{"close", true, rfcClose, rfcCloseBody(1000, "")},
	} {
		cases = append(cases, rfcFailCase{
			name:   tc.name,
			frames: [][]byte{frame(tc.fin, 0, tc.op, []byte(tc.payload), false)},
			code:   1002,
		})
	}
	// Masking is checked on every frame, not just the first.
	cases = append(cases, rfcFailCase{
		name:   "after a masked message",
		frames: [][]byte{rfcFinal(rfcText, "ok"), frame(true, 0, rfcText, []byte("no"), false)},
		before: []rfcOut{{rfcText, "ok"}},
		code:   1002,
	}, rfcFailCase{
		name:   "continuation",
		frames: [][]byte{rfcFirst(rfcText, "a"), frame(true, 0, rfcCont, []byte("b"), false)},
		code:   1002,
	})
	rfcRunFailCases(t, Options{}, cases)
}

func TestRFCFragmentedEcho(t *testing.T) {
	ts := startServer(t, Options{})
	for _, tc := range []struct {
		name   string
		frames [][]byte
		want   []rfcOut // the frames the server sends back, in order
	}{
		{
			name:   "text in three",
			frames: [][]byte{rfcFirst(rfcText, "Hel"), rfcNext(false, "lo, "), rfcNext(true, "world")},
			want:   []rfcOut{{rfcText, "Hello, world"}},
		},
		{
			name:   "binary in three",
			frames: [][]byte{rfcFirst(rfcBinary, "\x00\x01"), rfcNext(false, "\xff\xfe"), rfcNext(true, "\x80")},
			want:   []rfcOut{{rfcBinary, "\x00\x01\xff\xfe\x80"}},
		},
		{
			name:   "empty fragments",
			frames: [][]byte{rfcFirst(rfcText, ""), rfcNext(false, "a"), rfcNext(false, ""), rfcNext(true, "")},
			want:   []rfcOut{{rfcText, "a"}},
		},
		{
			name: "pings between fragments",
			frames: [][]byte{
				rfcFirst(rfcText, "Hel"), rfcFinal(rfcPing, "p1"), rfcNext(false, "lo, "),
				rfcFinal(rfcPing, ""), rfcFinal(rfcPong, "unsolicited"), rfcNext(true, "world"),
			},
			want: []rfcOut{{rfcPong, "p1"}, {rfcPong, ""}, {rfcText, "Hello, world"}},
		},
		{
			name:   "ping between binary fragments",
			frames: [][]byte{rfcFirst(rfcBinary, "\x01"), rfcFinal(rfcPing, "x"), rfcNext(true, "\x02")},
			want:   []rfcOut{{rfcPong, "x"}, {rfcBinary, "\x01\x02"}},
		},
		{
			name: "messages before and after",
			frames: [][]byte{
				rfcFinal(rfcText, "one"), rfcFirst(rfcText, "t"), rfcNext(true, "wo"), rfcFinal(rfcBinary, "3"),
			},
			want: []rfcOut{{rfcText, "one"}, {rfcText, "two"}, {rfcBinary, "3"}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := rawDial(t, ts.Addr, "/echo")
			if err := rfcWrite(c, tc.frames...); err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				rfcExpectFrame(t, c, w.op, w.payload)
			}
			// The connection is still open and in a clean state.
			c.send(rfcText, []byte("after"))
			rfcExpectFrame(t, c, rfcText, "after")
		})
	}
}

// TestRFCFragmentedEchoGorilla sends a message big enough for gorilla to split
// into many continuation frames.
func TestRFCFragmentedEchoGorilla(t *testing.T) {
	ts := startServer(t, Options{})
	d := websocket.Dialer{WriteBufferSize: 256}
	c, _, err := d.Dial(ts.URL("/echo"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	msg := strings.Repeat("fragmented €𝄞 ", 300)
	w, err := c.NextWriter(websocket.TextMessage)
	if err != nil {
		t.Fatal(err)
	}
	// Write a byte at a time so that characters straddle frame boundaries.
	for i := range len(msg) {
		if _, err := w.Write([]byte{msg[i]}); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if got := readText(t, c); got != msg {
		t.Fatalf("echo of %d bytes: got %d bytes", len(msg), len(got))
	}
}

func TestRFCFragmentationErrors(t *testing.T) {
	rfcRunFailCases(t, Options{}, []rfcFailCase{
		{name: "continuation first", frames: [][]byte{rfcNext(true, "x")}, code: 1002},
		{name: "non-final continuation first", frames: [][]byte{rfcNext(false, "x")}, code: 1002},
		{name: "continuation after a whole message",
			frames: [][]byte{rfcFinal(rfcText, "a"), rfcNext(true, "b")},
			before: []rfcOut{{rfcText, "a"}}, code: 1002},
		{name: "continuation after a fragmented message",
			frames: [][]byte{rfcFirst(rfcText, "a"), rfcNext(true, "b"), rfcNext(true, "c")},
			before: []rfcOut{{rfcText, "ab"}}, code: 1002},
		{name: "text inside text", frames: [][]byte{rfcFirst(rfcText, "a"), rfcFinal(rfcText, "b")}, code: 1002},
		{name: "binary inside text", frames: [][]byte{rfcFirst(rfcText, "a"), rfcFinal(rfcBinary, "b")}, code: 1002},
		{name: "fragment inside binary", frames: [][]byte{rfcFirst(rfcBinary, "a"), rfcNext(false, "b"), rfcFirst(rfcBinary, "c")}, code: 1002},
		{name: "text inside text after ping",
			frames: [][]byte{rfcFirst(rfcText, "a"), rfcFinal(rfcPing, "p"), rfcFirst(rfcText, "b")},
			before: []rfcOut{{rfcPong, "p"}}, code: 1002},
	})
}

func TestRFCControlFrames(t *testing.T) {
	big := strings.Repeat("x", 126)
	var cases []rfcFailCase
	for _, op := range []byte{rfcPing, rfcPong, rfcClose} {
		payload := big
		if op == rfcClose {
			payload = rfcCloseBody(1000, big[2:])
		}
		cases = append(cases,
			rfcFailCase{name: fmt.Sprintf("op %#x payload 126", op), frames: [][]byte{rfcFinal(op, payload)}, code: 1002},
			rfcFailCase{name: fmt.Sprintf("op %#x not final", op), frames: [][]byte{rfcFirst(op, "")}, code: 1002},
		)
	}
	cases = append(cases,
		rfcFailCase{name: "ping payload 65535", frames: [][]byte{rfcFinal(rfcPing, strings.Repeat("y", 65535))}, code: 1002},
		// A control frame that breaks the rules inside a fragmented message.
		rfcFailCase{name: "fragmented ping inside message",
			frames: [][]byte{rfcFirst(rfcText, "a"), rfcFirst(rfcPing, "p"), rfcNext(true, "p2")},
			code:   1002},
	)
	rfcRunFailCases(t, Options{}, cases)
}

func TestRFCReservedBits(t *testing.T) {
	var cases []rfcFailCase
	for _, rsv := range []struct {
		name string
		bits byte
	}{{"RSV1", rfcRSV1}, {"RSV2", rfcRSV2}, {"RSV3", rfcRSV3}, {"all", rfcRSV1 | rfcRSV2 | rfcRSV3}} {
		for _, op := range []byte{rfcText, rfcBinary, rfcPing, rfcClose} {
			payload := "x"
			if op == rfcClose {
				payload = rfcCloseBody(1000, "")
			}
			cases = append(cases, rfcFailCase{
				name:   fmt.Sprintf("%s op %#x", rsv.name, op),
				frames: [][]byte{frame(true, rsv.bits, op, []byte(payload), true)},
				code:   1002,
			})
		}
		cases = append(cases, rfcFailCase{
			name:   rsv.name + " on continuation",
			frames: [][]byte{rfcFirst(rfcText, "a"), frame(true, rsv.bits, rfcCont, []byte("b"), true)},
			code:   1002,
		})
	}
	rfcRunFailCases(t, Options{}, cases)
}

func TestRFCReservedOpcodes(t *testing.T) {
	var cases []rfcFailCase
	for _, op := range []byte{3, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf} {
		cases = append(cases,
			rfcFailCase{name: fmt.Sprintf("op %#x", op), frames: [][]byte{rfcFinal(op, "")}, code: 1002},
			rfcFailCase{name: fmt.Sprintf("op %#x with payload", op), frames: [][]byte{rfcFinal(op, "payload")}, code: 1002},
			rfcFailCase{name: fmt.Sprintf("op %#x inside message", op),
				frames: [][]byte{rfcFirst(rfcText, "a"), rfcFinal(op, "")}, code: 1002},
		)
	}
	rfcRunFailCases(t, Options{}, cases)
}

func TestRFCInvalidUTF8(t *testing.T) {
	var cases []rfcFailCase
	for _, s := range []string{
		"\xff",
		"hello\xfe",
		"\x80",                    // lone continuation byte
		"\xc0\xaf",                // overlong '/'
		"\xe0\x80\xaf",            // overlong '/'
		"\xf0\x80\x80\xaf",        // overlong '/'
		"\xed\xa0\x80",            // surrogate U+D800
		"\xed\xbf\xbf",            // surrogate U+DFFF
		"\xf4\x90\x80\x80",        // U+110000
		"\xf8\x88\x80\x80\x80",    // five bytes
		"κόσμε\xed\xa0\x80edited", // bad in the middle
		"\xe2\x82",                // truncated at the end
		"€\xf0\x9d\x84",           // truncated at the end
	} {
		cases = append(cases, rfcFailCase{name: fmt.Sprintf("%q", s), frames: [][]byte{rfcFinal(rfcText, s)}, code: 1007})
	}
	cases = append(cases,
		// Each of these fails at a fragment without FIN: the rest of the message
		// is never sent, so the server must not wait for it.
		rfcFailCase{name: "bad first fragment", frames: [][]byte{rfcFirst(rfcText, "ok\xff")}, code: 1007},
		rfcFailCase{name: "bad continuation", frames: [][]byte{rfcFirst(rfcText, "ok"), rfcNext(false, "\x80")}, code: 1007},
		rfcFailCase{name: "surrogate across fragments", frames: [][]byte{rfcFirst(rfcText, "a\xed"), rfcNext(false, "\xa0")}, code: 1007},
		rfcFailCase{name: "past U+10FFFF across fragments", frames: [][]byte{rfcFirst(rfcText, "\xf4"), rfcNext(false, "\x90")}, code: 1007},
		rfcFailCase{name: "overlong across fragments", frames: [][]byte{rfcFirst(rfcText, "\xe0"), rfcNext(false, "\x80")}, code: 1007},
		rfcFailCase{name: "past U+10FFFF in one fragment", frames: [][]byte{rfcFirst(rfcText, "ok\xf4\x90")}, code: 1007},
		rfcFailCase{name: "ASCII inside a character", frames: [][]byte{rfcFirst(rfcText, "\xf0\x9d"), rfcNext(false, "\x84A")}, code: 1007},
		rfcFailCase{name: "invalid lead byte at fragment end", frames: [][]byte{rfcFirst(rfcText, "ok\xc1")}, code: 1007},
		// Truncated at the end of a fragmented message.
		rfcFailCase{name: "truncated at message end",
			frames: [][]byte{rfcFirst(rfcText, "ok"), rfcNext(false, "\xe2"), rfcNext(true, "\x82")}, code: 1007},
		rfcFailCase{name: "bad after a ping",
			frames: [][]byte{rfcFirst(rfcText, "ok"), rfcFinal(rfcPing, "p"), rfcNext(false, "\xff")},
			before: []rfcOut{{rfcPong, "p"}}, code: 1007},
		// Binary messages are not UTF-8 checked; the text message after one is.
		rfcFailCase{name: "binary then bad text",
			frames: [][]byte{rfcFinal(rfcBinary, "\xff"), rfcFinal(rfcText, "\xff")},
			before: []rfcOut{{rfcBinary, "\xff"}}, code: 1007},
		rfcFailCase{name: "close reason", frames: [][]byte{rfcFinal(rfcClose, rfcCloseBody(1000, "bye\xff"))}, code: 1007},
		rfcFailCase{name: "close reason surrogate", frames: [][]byte{rfcFinal(rfcClose, rfcCloseBody(1001, "\xed\xa0\x80"))}, code: 1007},
	)
	rfcRunFailCases(t, Options{}, cases)
}

func TestRFCValidUTF8AcrossFragments(t *testing.T) {
	ts := startServer(t, Options{})
	for _, s := range []string{"€", "𝄞", "é", "a€b𝄞cé\U0010ffff\u0800"} {
		// Every way of cutting s into two fragments, and one byte per fragment.
		splits := [][]string{}
		for i := 0; i <= len(s); i++ {
			splits = append(splits, []string{s[:i], s[i:]})
		}
		var bytewise []string
		for i := range len(s) {
			bytewise = append(bytewise, s[i:i+1])
		}
		splits = append(splits, bytewise)
		for _, parts := range splits {
			t.Run(fmt.Sprintf("%q", parts), func(t *testing.T) {
				c := rawDial(t, ts.Addr, "/echo")
				var frames [][]byte
				for i, p := range parts {
					op := rfcCont
					if i == 0 {
						op = rfcText
					}
					frames = append(frames, frame(i == len(parts)-1, 0, op, []byte(p), true))
				}
				if err := rfcWrite(c, frames...); err != nil {
					t.Fatal(err)
				}
				rfcExpectFrame(t, c, rfcText, s)
			})
		}
	}
}

func TestRFCMessageSize(t *testing.T) {
	for _, tc := range []struct {
		o     Options
		limit int
	}{
		{Options{}, DefaultMaxMessageSize},
		{Options{MaxMessageSize: 1024}, 1024},
	} {
		t.Run(fmt.Sprint("limit=", tc.limit), func(t *testing.T) {
			ts := startServer(t, tc.o)
			n := tc.limit
			at := strings.Repeat("a", n)

			t.Run("exactly at limit", func(t *testing.T) {
				c := rawDial(t, ts.Addr, "/echo")
				if err := rfcWrite(c, rfcFinal(rfcBinary, at)); err != nil {
					t.Fatal(err)
				}
				rfcExpectFrame(t, c, rfcBinary, at)
				// Fragments summing to the limit, with a control frame between.
				if err := rfcWrite(c, rfcFirst(rfcText, at[:n/2]), rfcFinal(rfcPing, ""), rfcNext(false, at[n/2:n-1]), rfcNext(true, at[n-1:])); err != nil {
					t.Fatal(err)
				}
				rfcExpectFrame(t, c, rfcPong, "")
				rfcExpectFrame(t, c, rfcText, at)
			})
			t.Run("at limit with gorilla", func(t *testing.T) {
				g := dial(t, ts.URL("/echo"), nil)
				if err := g.WriteMessage(websocket.TextMessage, []byte(at)); err != nil {
					t.Fatal(err)
				}
				if got := readText(t, g); got != at {
					t.Fatalf("echo: %d bytes, want %d", len(got), n)
				}
			})

			over := at + "b"
			rfcRunFailCases(t, tc.o, []rfcFailCase{
				{name: "one frame over", frames: [][]byte{rfcFinal(rfcText, over)}, code: 1009},
				{name: "fragments over", frames: [][]byte{rfcFirst(rfcText, at[:n/2]), rfcNext(false, at[n/2:]), rfcNext(true, "b")}, code: 1009},
				{name: "binary fragments over", frames: [][]byte{rfcFirst(rfcBinary, at), rfcNext(false, "b")}, code: 1009},
				{name: "after a message at limit",
					frames: [][]byte{rfcFinal(rfcBinary, at), rfcFinal(rfcBinary, over)},
					before: []rfcOut{{rfcBinary, at}}, code: 1009},
			})

			// The size is judged from the header: the server does not wait for a
			// payload it will not accept.
			for _, length := range []uint64{uint64(n) + 1, 1 << 40, 1<<63 - 1} {
				t.Run(fmt.Sprint("header only ", length), func(t *testing.T) {
					c := rawDial(t, ts.Addr, "/echo")
					h := []byte{0x80 | rfcBinary, 0x80 | 127}
					h = binary.BigEndian.AppendUint64(h, length)
					h = append(h, 1, 2, 3, 4)
					rfcWrite(c, h)
					rfcExpectClose(t, c, 1009)
				})
			}
			t.Run("fragment header only", func(t *testing.T) {
				c := rawDial(t, ts.Addr, "/echo")
				h := binary.BigEndian.AppendUint64([]byte{rfcCont, 0x80 | 127}, uint64(n))
				rfcWrite(c, rfcFirst(rfcText, "x"), h, []byte{1, 2, 3, 4})
				rfcExpectClose(t, c, 1009)
			})
		})
	}
}

func TestRFCCloseHandshake(t *testing.T) {
	ts := startServer(t, Options{})
	for _, tc := range []struct {
		name   string
		body   string
		frames [][]byte // sent before the close
		want   int      // the code the server answers with; 1005 is an empty body
	}{
		{name: "1000 bye", body: rfcCloseBody(1000, "bye"), want: 1000},
		{name: "1000", body: rfcCloseBody(1000, ""), want: 1000},
		{name: "1001", body: rfcCloseBody(1001, "going"), want: 1001},
		{name: "1003", body: rfcCloseBody(1003, ""), want: 1003},
		{name: "1007", body: rfcCloseBody(1007, ""), want: 1007},
		{name: "1011", body: rfcCloseBody(1011, ""), want: 1011},
		{name: "3000", body: rfcCloseBody(3000, ""), want: 3000},
		{name: "3999", body: rfcCloseBody(3999, ""), want: 3999},
		{name: "4000 app", body: rfcCloseBody(4000, "app"), want: 4000},
		{name: "4999", body: rfcCloseBody(4999, ""), want: 4999},
		{name: "no body", body: "", want: 1005},
		{name: "123-byte reason", body: rfcCloseBody(1000, strings.Repeat("é", 61)+"!"), want: 1000},
		{name: "inside a fragmented message", body: rfcCloseBody(1000, ""),
			frames: [][]byte{rfcFirst(rfcText, "never finished")}, want: 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := rawDial(t, ts.Addr, "/echo")
			if err := rfcWrite(c, append(tc.frames, rfcFinal(rfcClose, tc.body))...); err != nil {
				t.Fatal(err)
			}
			op, fin, p, err := c.readFrame()
			if err != nil {
				t.Fatal(err)
			}
			if op != rfcClose || !fin {
				t.Fatalf("got op %#x fin %v, want close", op, fin)
			}
			switch {
			case tc.want == 1005 && len(p) != 0:
				t.Fatalf("close body %q, want empty", p)
			case tc.want != 1005 && (len(p) < 2 || int(binary.BigEndian.Uint16(p)) != tc.want):
				t.Fatalf("close body %q, want code %d", p, tc.want)
			}
			c.expectEOF()
		})
	}

	// After the server's reply, frames are ignored and do not break the close.
	t.Run("data after close", func(t *testing.T) {
		c := rawDial(t, ts.Addr, "/echo")
		rfcWrite(c, rfcFinal(rfcClose, rfcCloseBody(1000, "")), rfcFinal(rfcText, "late"), rfcFinal(rfcPing, "late"))
		rfcExpectClose(t, c, 1000)
	})

	t.Run("gorilla", func(t *testing.T) {
		g := dial(t, ts.URL("/echo"), nil)
		msg := websocket.FormatCloseMessage(1000, "bye")
		if err := g.WriteControl(websocket.CloseMessage, msg, time.Now().Add(5*time.Second)); err != nil {
			t.Fatal(err)
		}
		expectClose(t, g, 1000)
	})

	var cases []rfcFailCase
	cases = append(cases, rfcFailCase{name: "one-byte body", frames: [][]byte{rfcFinal(rfcClose, "\x03")}, code: 1002})
	for _, code := range []uint16{0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535} {
		cases = append(cases, rfcFailCase{
			name:   fmt.Sprint("code ", code),
			frames: [][]byte{rfcFinal(rfcClose, rfcCloseBody(code, ""))},
			code:   1002,
		})
	}
	rfcRunFailCases(t, Options{}, cases)
}

func TestRFCPingPong(t *testing.T) {
	ts := startServer(t, Options{})
	full := make([]byte, 125)
	for i := range full {
		full[i] = byte(i * 7)
	}
	for _, p := range []string{"", "x", "hello", "\x00\xff\xfe", string(full)} {
		t.Run(fmt.Sprint(len(p)), func(t *testing.T) {
			c := rawDial(t, ts.Addr, "/echo")
			c.send(rfcPing, []byte(p))
			rfcExpectFrame(t, c, rfcPong, p)
		})
	}
	t.Run("several in one write", func(t *testing.T) {
		c := rawDial(t, ts.Addr, "/echo")
		rfcWrite(c, rfcFinal(rfcPing, "1"), rfcFinal(rfcPong, "ignored"), rfcFinal(rfcPing, "2"), rfcFinal(rfcPing, string(full)))
		rfcExpectFrame(t, c, rfcPong, "1")
		rfcExpectFrame(t, c, rfcPong, "2")
		rfcExpectFrame(t, c, rfcPong, string(full))
	})
	t.Run("gorilla", func(t *testing.T) {
		g := dial(t, ts.URL("/echo"), nil)
		pongs := make(chan string, 1)
		g.SetPongHandler(func(s string) error { pongs <- s; return nil })
		if err := g.WriteControl(websocket.PingMessage, full, time.Now().Add(5*time.Second)); err != nil {
			t.Fatal(err)
		}
		// The pong is handled inside ReadMessage, which then gets the echo.
		g.WriteMessage(websocket.TextMessage, []byte("sync"))
		if got := readText(t, g); got != "sync" {
			t.Fatalf("echo %q", got)
		}
		select {
		case got := <-pongs:
			if got != string(full) {
				t.Fatalf("pong %q, want %q", got, full)
			}
		default:
			t.Fatal("no pong before the echo")
		}
	})
}

// TestRFCFramesWithHandshake sends frames in the same write as the upgrade
// request: they must be read, not lost with the request's buffer.
func TestRFCFramesWithHandshake(t *testing.T) {
	ts := startServer(t, Options{})
	split := rfcFinal(rfcText, "split") // sent in two parts, cut inside the mask key
	for _, tc := range []struct {
		name   string
		frames [][]byte
		check  func(t *testing.T, c *rawConn)
	}{
		{"messages", [][]byte{rfcFinal(rfcText, "first"), rfcFinal(rfcPing, "p"), rfcFirst(rfcBinary, "a"), rfcNext(true, "b")},
			func(t *testing.T, c *rawConn) {
				rfcExpectFrame(t, c, rfcText, "first")
				rfcExpectFrame(t, c, rfcPong, "p")
				rfcExpectFrame(t, c, rfcBinary, "ab")
			}},
		{"partial frame", [][]byte{rfcFinal(rfcText, "whole"), split[:4]},
			func(t *testing.T, c *rawConn) {
				rfcExpectFrame(t, c, rfcText, "whole")
				if _, err := c.Write(split[4:]); err != nil {
					t.Fatal(err)
				}
				rfcExpectFrame(t, c, rfcText, "split")
			}},
		{"close", [][]byte{rfcFinal(rfcClose, rfcCloseBody(4001, ""))},
			func(t *testing.T, c *rawConn) { rfcExpectClose(t, c, 4001) }},
		{"protocol error", [][]byte{frame(true, 0, rfcText, []byte("x"), false)},
			func(t *testing.T, c *rawConn) { rfcExpectClose(t, c, 1002) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := rawConnect(t, ts.Addr)
			if err := rfcWrite(c, append([][]byte{[]byte(rfcRequest)}, tc.frames...)...); err != nil {
				t.Fatal(err)
			}
			resp, err := http.ReadResponse(c.br, nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusSwitchingProtocols {
				t.Fatalf("status %d", resp.StatusCode)
			}
			tc.check(t, c)
		})
	}
}

// TestRFCOneByteWrites sends the upgrade request and then every frame one byte
// per write, so the server sees headers, mask keys and payloads cut anywhere.
func TestRFCOneByteWrites(t *testing.T) {
	ts := startServer(t, Options{Loops: 1})
	c := rawConnect(t, ts.Addr)
	long := strings.Repeat("0123456789", 30) // a 16-bit length
	stream := bytes.Join([][]byte{
		[]byte(rfcRequest),
		rfcFinal(rfcText, "hello €"),
		rfcFinal(rfcBinary, long),
		rfcFinal(rfcPing, "ping"),
		rfcFirst(rfcText, "frag"), rfcNext(false, "ment\xe2"), rfcNext(true, "\x82\xac"),
		rfcFinal(rfcClose, rfcCloseBody(1000, "done")),
	}, nil)
	for i := range stream {
		if _, err := c.Write(stream[i : i+1]); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("status %d", resp.StatusCode)
	}
	rfcExpectFrame(t, c, rfcText, "hello €")
	rfcExpectFrame(t, c, rfcBinary, long)
	rfcExpectFrame(t, c, rfcPong, "ping")
	rfcExpectFrame(t, c, rfcText, "fragment€")
	rfcExpectClose(t, c, 1000)
}

// TestRFCStuckClientDoesNotBlock leaves one client in the middle of a frame, or
// of its upgrade request, on a one-loop server, and checks another client is
// served meanwhile and the first is served once it finishes.
func TestRFCStuckClientDoesNotBlock(t *testing.T) {
	ts := startServer(t, Options{Loops: 1})
	whole := rfcFinal(rfcText, strings.Repeat("z", 100))
	for _, cut := range []int{1, 2, 4, 6, 50} {
		t.Run(fmt.Sprint("cut=", cut), func(t *testing.T) {
			stuck := rawDial(t, ts.Addr, "/echo")
			if _, err := stuck.Write(whole[:cut]); err != nil {
				t.Fatal(err)
			}
			g := dial(t, ts.URL("/echo"), nil)
			for i := range 3 {
				msg := fmt.Sprint("other ", i)
				if err := g.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
					t.Fatal(err)
				}
				if got := readText(t, g); got != msg {
					t.Fatalf("echo %q, want %q", got, msg)
				}
			}
			if _, err := stuck.Write(whole[cut:]); err != nil {
				t.Fatal(err)
			}
			rfcExpectFrame(t, stuck, rfcText, strings.Repeat("z", 100))
		})
	}
	t.Run("mid handshake", func(t *testing.T) {
		stuck := rawConnect(t, ts.Addr)
		if _, err := stuck.Write([]byte(rfcRequest[:40])); err != nil {
			t.Fatal(err)
		}
		g := dial(t, ts.URL("/echo"), nil)
		if err := g.WriteMessage(websocket.TextMessage, []byte("other")); err != nil {
			t.Fatal(err)
		}
		if got := readText(t, g); got != "other" {
			t.Fatalf("echo %q", got)
		}
		if _, err := stuck.Write([]byte(rfcRequest[40:])); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(stuck.br, nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("status %d", resp.StatusCode)
		}
	})
}

func TestRFCLengthMSB(t *testing.T) {
	var cases []rfcFailCase
	for _, l := range []uint64{1 << 63, 1<<63 | 5, ^uint64(0)} {
		for _, op := range []byte{rfcText, rfcBinary, rfcCont} {
			h := []byte{0x80 | op, 0x80 | 127}
			h = binary.BigEndian.AppendUint64(h, l)
			cases = append(cases, rfcFailCase{
				name:   fmt.Sprintf("%#x op %#x", l, op),
				frames: [][]byte{h, {1, 2, 3, 4}},
				code:   1002,
			})
		}
		// Without its mask key yet: the length alone is enough to fail.
		h := []byte{0x80 | rfcBinary, 0x80 | 127}
		cases = append(cases, rfcFailCase{
			name:   fmt.Sprintf("%#x no mask key", l),
			frames: [][]byte{binary.BigEndian.AppendUint64(h, l)},
			code:   1002,
		})
	}
	rfcRunFailCases(t, Options{}, cases)
}

// TestRFCServerFramesUnmasked decodes the server's frame headers by hand for
// every length encoding: never masked, always final, the shortest length form.
func TestRFCServerFramesUnmasked(t *testing.T) {
	ts := startServer(t, Options{MaxMessageSize: 1 << 17})
	c := rawDial(t, ts.Addr, "/echo")
	check := func(op byte, n int) {
		t.Helper()
		var h [2]byte
		if _, err := io.ReadFull(c.br, h[:]); err != nil {
			t.Fatal(err)
		}
		if h[0] != 0x80|op {
			t.Fatalf("first byte %#x, want %#x", h[0], 0x80|op)
		}
		if h[1]&0x80 != 0 {
			t.Fatalf("length %d: server frame is masked", n)
		}
		var got int
		switch l := int(h[1] & 0x7f); {
		case l < 126:
			got = l
		case l == 126:
			if _, err := io.ReadFull(c.br, h[:]); err != nil {
				t.Fatal(err)
			}
			got = int(binary.BigEndian.Uint16(h[:]))
			if got < 126 {
				t.Fatalf("length %d in the 16-bit form", got)
			}
		default:
			var e [8]byte
			if _, err := io.ReadFull(c.br, e[:]); err != nil {
				t.Fatal(err)
			}
			got = int(binary.BigEndian.Uint64(e[:]))
			if got <= 0xffff {
				t.Fatalf("length %d in the 64-bit form", got)
			}
		}
		if got != n {
			t.Fatalf("length %d, want %d", got, n)
		}
		if _, err := c.br.Discard(n); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []int{0, 1, 125, 126, 127, 0xffff, 0x10000, 100_000} {
		c.send(rfcBinary, bytes.Repeat([]byte{'m'}, n))
		check(rfcBinary, n)
	}
	c.send(rfcPing, []byte("p"))
	check(rfcPong, 1)
	c.send(rfcClose, []byte(rfcCloseBody(1000, "")))
	check(rfcClose, 2)
	c.expectEOF()
}

// rfcUTF8Cases are strings for the streaming validator: valid ones of every
// length, and invalid ones of every kind RFC 3629 rules out.
var rfcUTF8Cases = []string{
	"", "a", "hello", "é", "€", "𝄞", "κόσμε", "a€b𝄞c", "\u007f", "\u0080", "\u07ff", "\u0800",
	"\ud7ff", "\ue000", "\uffff", "\U00010000", "\U0010ffff", "€€€€", "𝄞𝄞", "aé€𝄞",
	"\x80", "\xbf", "a\x80b", "\x80\x80\x80\x80", "€\x80", // lone continuation bytes
	"\xc0\x80", "\xc1\xbf", "\xe0\x80\x80", "\xe0\x9f\xbf", "\xf0\x80\x80\x80", "\xf0\x8f\xbf\xbf", // overlongs
	"\xed\xa0\x80", "\xed\xbf\xbf", "a\xed\xa0\x80b", "\xed\xa0\x80\xed\xb0\x80", // surrogates
	"\xf4\x90\x80\x80", "\xf7\xbf\xbf\xbf", "\xf5\x80\x80\x80", "\xf8\x88\x80\x80\x80", "\xfc\x84\x80\x80\x80\x80", // past U+10FFFF
	"\xfe", "\xff", "\xfe\xfe\xff\xff",
	"\xc2", "\xe2\x82", "\xf0\x9d\x84", "a\xe2\x82", "\xe2\x82a", "\xf0\x9d\x84a", "\xc2\xc2", // truncated
	"\xe2\x82\xac\x80", "\xf0\x9d\x84\x9e\x9e", // too many continuation bytes
	"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80\x65\x64\x69\x74\x65\x64",
}

// TestUTF8Stream feeds every string of rfcUTF8Cases in three pieces cut at every
// pair of points and compares the verdict with utf8.Valid on the whole. It also
// checks the stream fails at the first piece after which no continuation could
// make the text valid, and not earlier.
func TestUTF8Stream(t *testing.T) {
	for _, s := range rfcUTF8Cases {
		want := utf8.ValidString(s)
		for i := 0; i <= len(s); i++ {
			for j := i; j <= len(s); j++ {
				pieces := []string{s[:i], s[i:j], s[j:]}
				var st utf8Stream
				ok := true
				for k, p := range pieces {
					ok = st.write([]byte(p))
					if prefix := s[:len(s)-len(strings.Join(pieces[k+1:], ""))]; ok != rfcUTF8PrefixOK([]byte(prefix)) {
						t.Fatalf("%q cut at %d,%d: write of piece %d = %v, but prefix %q can be completed: %v",
							s, i, j, k, ok, prefix, !ok)
					}
					if !ok {
						break
					}
				}
				if got := ok && st.end(); got != want {
					t.Fatalf("%q cut at %d,%d: stream says %v, utf8.Valid %v", s, i, j, got, want)
				}
			}
		}
	}
}

func TestUTF8StreamReset(t *testing.T) {
	var st utf8Stream
	if !st.write([]byte("a\xe2\x82")) || st.end() {
		t.Fatal("an open character must keep the stream unfinished")
	}
	st.reset()
	if !st.end() || !st.write([]byte("\xe2\x82\xac")) || !st.end() {
		t.Fatal("reset must drop the open character")
	}
}

// rfcUTF8PrefixOK reports whether some bytes appended to b make it valid UTF-8. It
// is the streaming validator's specification, written without sharing its code:
// whatever completes a character is one byte of 0x80..0xBF (the only byte whose
// range depends on the lead) followed by 0x80s.
func rfcUTF8PrefixOK(b []byte) bool {
	for k := 0; k <= min(3, len(b)); k++ {
		if !utf8.Valid(b[:len(b)-k]) {
			continue
		}
		tail := b[len(b)-k:]
		if len(tail) == 0 {
			return true
		}
		for x := 0x80; x <= 0xbf; x++ {
			for m := 0; m <= 2; m++ {
				c := append(append(append([]byte{}, tail...), byte(x)), bytes.Repeat([]byte{0x80}, m)...)
				if utf8.Valid(c) {
					return true
				}
			}
		}
	}
	return false
}

func TestParseHeaderRoundTrip(t *testing.T) {
	ops := []ws.OpCode{ws.OpText, ws.OpBinary, ws.OpClose, ws.OpPing, ws.OpPong}
	for _, op := range ops {
		for _, n := range []int{0, 1, 125, 126, 127, 0xffff, 0x10000, 1 << 32, 1<<62 + 3} {
			var b [ws.MaxHeaderSize]byte
			size := putHeader(b[:], op, n)
			var want int
			switch {
			case n < 126:
				want = 2
			case n <= 0xffff:
				want = 4
			default:
				want = 10
			}
			if size != want {
				t.Fatalf("putHeader(%v, %d) = %d bytes, want %d", op, n, size, want)
			}
			for k := range size {
				if _, _, ok, err := wsframe.ParseHeader(b[:k]); ok || err != nil {
					t.Fatalf("ParseHeader of %d of %d bytes: ok %v err %v", k, size, ok, err)
				}
			}
			h, hsize, ok, err := wsframe.ParseHeader(b[:size])
			if !ok || err != nil {
				t.Fatalf("ParseHeader(%x): ok %v err %v", b[:size], ok, err)
			}
			if !h.Fin || h.Rsv != 0 || h.OpCode != op || h.Masked || h.Length != int64(n) || hsize != size {
				t.Fatalf("ParseHeader(putHeader(%v, %d)) = %+v", op, n, h)
			}
			// gobwas reads the same header from a stream.
			gh, err := ws.ReadHeader(bytes.NewReader(b[:size]))
			if err != nil || gh != h {
				t.Fatalf("ws.ReadHeader = %+v, %v; ParseHeader = %+v", gh, err, h)
			}
		}
	}
	// Client frames: masked, every RSV bit and opcode, the FIN bit either way.
	for _, fin := range []bool{true, false} {
		for rsv := range byte(8) {
			for op := range byte(16) {
				for _, n := range []int{0, 5, 126, 70000} {
					f := frame(fin, rsv, op, bytes.Repeat([]byte{1}, n), true)
					h, hsize, ok, err := wsframe.ParseHeader(f)
					if !ok || err != nil {
						t.Fatalf("ParseHeader: ok %v err %v", ok, err)
					}
					gh, err := ws.ReadHeader(bytes.NewReader(f))
					if err != nil || gh != h || hsize != len(f)-n {
						t.Fatalf("frame fin %v rsv %d op %d n %d: ParseHeader %+v, ws.ReadHeader %+v (%v)",
							fin, rsv, op, n, h, gh, err)
					}
				}
			}
		}
	}
	// A length with its top bit set is an error once the length is in, whether
	// or not the mask key has arrived.
	b := binary.BigEndian.AppendUint64([]byte{0x82, 0xff}, 1<<63)
	for _, p := range [][]byte{b, append(b, 1, 2, 3, 4)} {
		if _, _, _, err := wsframe.ParseHeader(p); !errors.Is(err, ws.ErrHeaderLengthMSB) {
			t.Fatalf("ParseHeader(%x): err %v, want ErrHeaderLengthMSB", p, err)
		}
	}
	if _, _, ok, err := wsframe.ParseHeader(b[:9]); ok || err != nil {
		t.Fatalf("ParseHeader of 9 bytes: ok %v err %v", ok, err)
	}
}

func TestAppendFrame(t *testing.T) {
	for _, n := range []int{0, 125, 126, 0xffff, 0x10000} {
		p := bytes.Repeat([]byte{'q'}, n)
		f := AppendFrame([]byte("prefix"), ws.OpText, p)
		if string(f[:6]) != "prefix" {
			t.Fatal("AppendFrame overwrote dst")
		}
		f = f[6:]
		r := bytes.NewReader(f)
		h, err := ws.ReadHeader(r)
		if err != nil || h.OpCode != ws.OpText || !h.Fin || h.Masked || h.Length != int64(n) {
			t.Fatalf("AppendFrame(%d): header %+v err %v", n, h, err)
		}
		if !bytes.Equal(f[len(f)-r.Len():], p) {
			t.Fatalf("AppendFrame(%d): payload differs", n)
		}
	}
}

// TestRFCCloseCrossingKeepsQueuedOutput has the server close (idle timeout)
// while a big echo is still queued behind a client that is not reading, and the
// client's own close cross it. RFC 6455 section 5.5.1 ends the TCP connection
// once a close has been both sent and received: the server's close frame, and
// the echo before it, must still arrive whole rather than be cut by a reset.
func TestRFCCloseCrossingKeepsQueuedOutput(t *testing.T) {
	clock := newFakeClock()
	// More than the socket buffers hold: the server's send buffer grows to
	// net.ipv4.tcp_wmem's 4 MiB at most, and the client's is kept small.
	const size = 8 << 20
	ts := startServer(t, Options{Loops: 1, Now: clock.Now, MaxMessageSize: size, MaxPending: 2 * size})
	c := rawDial(t, ts.Addr, "/echo")
	if err := c.Conn.(*net.TCPConn).SetReadBuffer(64 << 10); err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	msg := bytes.Repeat([]byte{'e'}, size)
	if _, err := c.Write(frame(true, 0, rfcBinary, msg, true)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the echo", func() bool { return ts.Stats().MessagesOut >= 1 })
	clock.Advance(DefaultIdleTimeout + time.Second)
	waitFor(t, "the idle close", func() bool { return ts.Stats().Closes[CloseIdle.String()] == 1 })
	c.send(rfcClose, []byte(rfcCloseBody(1000, "")))

	op, fin, p, err := c.readFrame()
	if err != nil || op != rfcBinary || !fin || !bytes.Equal(p, msg) {
		t.Fatalf("echo: op %#x fin %v %d bytes, err %v", op, fin, len(p), err)
	}
	rfcExpectClose(t, c, 1001)
}
