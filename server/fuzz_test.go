package server

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/throng-ws/throng/poller"

	"github.com/gobwas/ws"
)

// Every parser is fuzzed with its input cut into pieces at fuzz-chosen points,
// so that partial reads are exercised as they happen on a socket.

// fuzzCuts splits b into three pieces at two fuzz-chosen points.
func fuzzCuts(b []byte, i, j uint16) [][]byte {
	x, y := int(i)%(len(b)+1), int(j)%(len(b)+1)
	if x > y {
		x, y = y, x
	}
	return [][]byte{b[:x], b[x:y], b[y:]}
}

// FuzzUTF8Stream feeds utf8Stream three pieces cut at fuzz-chosen points. Its
// verdict must be utf8.Valid's on the whole, and each write must fail exactly
// when the text so far can no longer become valid.
func FuzzUTF8Stream(f *testing.F) {
	for _, s := range rfcUTF8Cases {
		f.Add([]byte(s), uint16(1), uint16(2))
	}
	f.Fuzz(func(t *testing.T, b []byte, i, j uint16) {
		var st utf8Stream
		ok, n := true, 0
		for _, p := range fuzzCuts(b, i, j) {
			n += len(p)
			ok = st.write(p)
			if want := rfcUTF8PrefixOK(b[:n]); ok != want {
				t.Fatalf("%x cut at %d,%d: write up to %d = %v, want %v", b, i, j, n, ok, want)
			}
			if !ok {
				break
			}
		}
		if got, want := ok && st.end(), utf8.Valid(b); got != want {
			t.Fatalf("%x cut at %d,%d: stream %v, utf8.Valid %v", b, i, j, got, want)
		}
	})
}

// fuzzServer starts a server for a fuzz target, shared by its inputs.
func fuzzServer(f *testing.F, o Options) string {
	f.Helper()
	o.Handlers = map[string]Handler{"/echo": echoHandler{}}
	if o.Loops == 0 {
		o.Loops = 1
	}
	s, err := newTestServer(o)
	if err != nil {
		f.Fatal(err)
	}
	addr, err := s.Listen("127.0.0.1:0")
	if err != nil {
		s.Close()
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })
	return addr.String()
}

// fuzzExchange connects to addr, writes the pieces, ends its side of the stream
// and returns everything the server sent until it ended the stream. A reset
// counts as the end: the server may close with input unread once it has failed
// the connection.
func fuzzExchange(t *testing.T, addr string, pieces [][]byte) []byte {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(2 * time.Second))
	for _, p := range pieces {
		if len(p) == 0 {
			continue
		}
		if _, err := nc.Write(p); err != nil {
			break // the server closed; what it sent is still to be read
		}
	}
	nc.(*net.TCPConn).CloseWrite()
	out, err := io.ReadAll(nc)
	if err != nil && !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("reading the server's answer after %d bytes: %v", len(out), err)
	}
	return out
}

// fuzzMaxMessage is FuzzFrames' message size limit, small for the fuzzer to
// reach it.
const fuzzMaxMessage = 1000

// FuzzFrames sends the upgrade request and then arbitrary bytes to /echo, cut
// in three writes, and compares what comes back, frame by frame, with what
// RFC 6455 says a server must answer: fuzzModel.
func FuzzFrames(f *testing.F) {
	if testBackend == poller.BackendNetpoll {
		// The fuzz client half-closes to mark the end of its input; netpoll
		// closes a connection at the peer's FIN, answer unsent.
		f.Skip("netpoll does not keep half-closed connections")
	}
	addr := fuzzServer(f, Options{MaxMessageSize: fuzzMaxMessage})
	for _, seed := range [][][]byte{
		{rfcFinal(rfcText, "hello")},
		{rfcFinal(rfcBinary, "\x00\xff"), rfcFinal(rfcPing, "p"), rfcFinal(rfcPong, "q")},
		{rfcFirst(rfcText, "a€"[:2]), rfcFinal(rfcPing, ""), rfcNext(false, "a€"[2:3]), rfcNext(true, "a€"[3:])},
		{rfcFirst(rfcBinary, "x"), rfcNext(true, "y"), rfcFinal(rfcClose, rfcCloseBody(1000, "bye"))},
		{rfcFinal(rfcClose, "")},
		{rfcFinal(rfcClose, rfcCloseBody(4000, "app"))},
		{rfcFinal(rfcClose, rfcCloseBody(5000, ""))},
		{rfcFinal(rfcClose, rfcCloseBody(1000, "\xff"))},
		{rfcFinal(rfcClose, "\x03")},
		{frame(true, 0, rfcText, []byte("unmasked"), false)},
		{frame(true, rfcRSV1, rfcText, []byte("x"), true)},
		{rfcFinal(0x3, "reserved")},
		{rfcFirst(rfcPing, "")},
		{rfcFinal(rfcPing, strings.Repeat("p", 126))},
		{rfcNext(true, "orphan")},
		{rfcFirst(rfcText, "a"), rfcFinal(rfcText, "b")},
		{rfcFinal(rfcText, "\xed\xa0\x80")},
		{rfcFirst(rfcText, "ok\xf4"), rfcNext(false, "\x90")},
		{rfcFirst(rfcText, "\xe2"), rfcNext(true, "\x82")},
		{rfcFinal(rfcBinary, strings.Repeat("b", fuzzMaxMessage))},
		{rfcFinal(rfcBinary, strings.Repeat("b", fuzzMaxMessage+1))},
		{rfcFirst(rfcText, strings.Repeat("t", fuzzMaxMessage/2)), rfcNext(true, strings.Repeat("t", fuzzMaxMessage/2+1))},
		{binary.BigEndian.AppendUint64([]byte{0x82, 0xff}, 1<<63)},
		{rfcFinal(rfcText, "partial")[:5]},
	} {
		f.Add(bytes.Join(seed, nil), uint16(len(rfcRequest)/2), uint16(len(rfcRequest)+3))
	}
	f.Fuzz(func(t *testing.T, data []byte, i, j uint16) {
		if len(data) > 1<<16 {
			// The client reads only after writing everything, so the answer must
			// fit in the socket buffers.
			return
		}
		in := append([]byte(rfcRequest), data...)
		out := fuzzExchange(t, addr, fuzzCuts(in, i, j))
		br := bufio.NewReader(bytes.NewReader(out))
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
			t.Fatalf("upgrade: %v %v", resp, err)
		}
		rest, _ := io.ReadAll(br)
		got, err := fuzzParseFrames(rest)
		if err != nil {
			t.Fatalf("server output %x: %v", rest, err)
		}
		want := fuzzModel(data, fuzzMaxMessage)
		if len(got) != len(want) {
			t.Fatalf("input %x:\nserver sent %v\nwant %v", data, got, want)
		}
		for k := range got {
			if got[k].op != want[k].op || (got[k].op != rfcClose && !bytes.Equal(got[k].payload, want[k].payload)) ||
				(got[k].op == rfcClose && got[k].code != want[k].code) {
				t.Fatalf("input %x: frame %d:\nserver sent %v\nwant %v", data, k, got, want)
			}
		}
	})
}

// fuzzFrame is one frame of the server's answer; code is a close frame's code,
// 1005 if its body is empty.
type fuzzFrame struct {
	op      byte
	payload []byte
	code    int
}

func (f fuzzFrame) String() string {
	if f.op == rfcClose {
		return fmt.Sprintf("close(%d)", f.code)
	}
	return fmt.Sprintf("op%#x(%s)", f.op, rfcTrunc(f.payload))
}

// fuzzParseFrames splits a server's output into frames, checking the rules a
// server's frames follow: unmasked, final, no reserved bits, a valid close body,
// and nothing after the close frame.
func fuzzParseFrames(b []byte) ([]fuzzFrame, error) {
	var fs []fuzzFrame
	for len(b) > 0 {
		if len(fs) > 0 && fs[len(fs)-1].op == rfcClose {
			return fs, fmt.Errorf("%d bytes after the close frame", len(b))
		}
		// gobwas/ws reads the server's headers, not the server's own parser.
		r := bytes.NewReader(b)
		h, err := ws.ReadHeader(r)
		if err != nil {
			return fs, fmt.Errorf("frame header %x: %v", b[:min(len(b), 14)], err)
		}
		size := len(b) - r.Len()
		if h.Masked || !h.Fin || h.Rsv != 0 {
			return fs, fmt.Errorf("frame header %+v", h)
		}
		if int64(len(b)-size) < h.Length {
			return fs, fmt.Errorf("frame of %d bytes cut at %d", h.Length, len(b)-size)
		}
		p := b[size : size+int(h.Length)]
		b = b[size+int(h.Length):]
		f := fuzzFrame{op: byte(h.OpCode), payload: p}
		if f.op == rfcClose {
			switch {
			case len(p) == 0:
				f.code = 1005
			case len(p) == 1 || !utf8.Valid(p[2:]):
				return fs, fmt.Errorf("close body %q", p)
			default:
				f.code = int(binary.BigEndian.Uint16(p))
			}
		}
		fs = append(fs, f)
	}
	return fs, nil
}

// fuzzModel is what an RFC 6455 server with an echo endpoint answers to the
// client bytes in: echoes, pongs, and a close frame if the input holds a
// close or breaks a rule before it ends. It is written from the RFC, apart
// from when the server may fail early: a text message as soon as it cannot
// become UTF-8, a message once its header shows it too big, a 64-bit length
// with its top bit set as soon as the length is in.
func fuzzModel(in []byte, maxMessage int) []fuzzFrame {
	var out []fuzzFrame
	fail := func(code int) []fuzzFrame { return append(out, fuzzFrame{op: rfcClose, code: code}) }
	var (
		msgOp byte // the fragmented message's opcode, or 0
		msg   []byte
	)
	for {
		if len(in) < 2 {
			return out
		}
		fin, rsv, op := in[0]&0x80 != 0, in[0]&0x70, in[0]&0x0f
		masked := in[1]&0x80 != 0
		n, length := 2, uint64(in[1]&0x7f)
		switch length {
		case 126:
			if len(in) < 4 {
				return out
			}
			n, length = 4, uint64(binary.BigEndian.Uint16(in[2:]))
		case 127:
			if len(in) < 10 {
				return out
			}
			n, length = 10, binary.BigEndian.Uint64(in[2:])
			if length>>63 != 0 {
				return fail(1002)
			}
		}
		var key [4]byte
		if masked {
			if len(in) < n+4 {
				return out
			}
			copy(key[:], in[n:])
			n += 4
		}
		control := op >= 8
		switch {
		case 3 <= op && op <= 7, op >= 0xb:
			return fail(1002)
		case control && (length > 125 || !fin):
			return fail(1002)
		case rsv != 0, !masked:
			return fail(1002)
		case msgOp != 0 && !control && op != rfcCont, msgOp == 0 && op == rfcCont:
			return fail(1002)
		case !control && length > uint64(maxMessage-len(msg)):
			return fail(1009)
		case uint64(len(in)-n) < length:
			return out
		}
		p := make([]byte, length)
		for k := range p {
			p[k] = in[n+k] ^ key[k%4]
		}
		in = in[n+int(length):]
		switch op {
		case rfcClose:
			switch {
			case len(p) == 0:
				return append(out, fuzzFrame{op: rfcClose, code: 1005})
			case len(p) == 1:
				return fail(1002)
			case !utf8.Valid(p[2:]):
				return fail(1007)
			}
			code := int(binary.BigEndian.Uint16(p))
			switch {
			case code >= 1000 && code <= 1003, code >= 1007 && code <= 1011, code >= 3000 && code <= 4999:
				return append(out, fuzzFrame{op: rfcClose, code: code})
			}
			return fail(1002)
		case rfcPing:
			out = append(out, fuzzFrame{op: rfcPong, payload: p})
		case rfcPong:
		default:
			if op != rfcCont {
				msgOp, msg = op, nil
			}
			msg = append(msg, p...)
			if msgOp == rfcText && !rfcUTF8PrefixOK(msg) {
				return fail(1007)
			}
			if fin {
				if msgOp == rfcText && !utf8.Valid(msg) {
					return fail(1007)
				}
				out = append(out, fuzzFrame{op: msgOp, payload: msg})
				msgOp, msg = 0, nil
			}
		}
	}
}

// FuzzHandshake sends arbitrary request bytes, cut in three writes, and then
// ends the client's side of the stream. The server must answer within two
// seconds with a switch to WebSocket or an HTTP error, or with nothing if the
// request never ended, and never crash.
func FuzzHandshake(f *testing.F) {
	if testBackend == poller.BackendNetpoll {
		// The fuzz client half-closes to mark the end of its input; netpoll
		// closes a connection at the peer's FIN, answer unsent.
		f.Skip("netpoll does not keep half-closed connections")
	}
	addr := fuzzServer(f, Options{})
	for _, req := range []string{
		rfcRequest,
		rfcRequest + string(rfcFinal(rfcText, "after")),
		strings.Replace(rfcRequest, "/echo", "/nope", 1),
		strings.Replace(rfcRequest, "GET", "POST", 1),
		strings.Replace(rfcRequest, "13", "8", 1),
		strings.Replace(rfcRequest, "Upgrade: websocket\r\n", "", 1),
		strings.Replace(rfcRequest, "Connection: Upgrade", "Connection: keep-alive", 1),
		strings.Replace(rfcRequest, "dGhlIHNhbXBsZSBub25jZQ==", "short", 1),
		strings.Replace(rfcRequest, "Host: x\r\n", "", 1),
		strings.Replace(rfcRequest, "HTTP/1.1", "HTTP/1.0", 1),
		strings.Replace(rfcRequest, "/echo", "/echo?token=a%zz&x", 1),
		strings.Replace(rfcRequest, "\r\n\r\n", "\r\nSec-WebSocket-Protocol: chat, bearer.tok\r\nOrigin: http://a\r\n\r\n", 1),
		strings.Replace(rfcRequest, "\r\n\r\n", "\r\nX: "+strings.Repeat("y", MaxRequestSize)+"\r\n\r\n", 1),
		"GET /echo HTTP/1.1\r\n",
		"GET / HTTP/1.1\r\n\r\n",
		"\r\n\r\n",
		"garbage\r\n\r\n",
		"GET /echo HTTP/1.1\nHost: x\n\n",
		"GET /echo HTTP/1.1\r\nUpgrade: websocket\r\n broken: continuation\r\n\r\n",
		"",
	} {
		f.Add([]byte(req), uint16(10), uint16(len(req)/2))
	}
	f.Fuzz(func(t *testing.T, req []byte, i, j uint16) {
		if len(req) > 4*MaxRequestSize {
			return
		}
		start := time.Now()
		out := fuzzExchange(t, addr, fuzzCuts(req, i, j))
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("answer took %v", d)
		}
		end := bytes.Index(req, []byte("\r\n\r\n"))
		complete := end >= 0 || len(req) > MaxRequestSize
		if len(out) == 0 {
			if complete {
				t.Fatalf("request %q: no answer", req)
			}
			return
		}
		if !complete {
			t.Fatalf("request %q never ended, answer %q", req, out)
		}
		resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(out)), nil)
		if err != nil {
			t.Fatalf("request %q: answer %q: %v", req, out, err)
		}
		switch {
		case resp.StatusCode == http.StatusSwitchingProtocols:
			if resp.Header.Get("Sec-WebSocket-Accept") == "" || !strings.EqualFold(resp.Header.Get("Upgrade"), "websocket") {
				t.Fatalf("request %q: 101 without an upgrade: %q", req, out)
			}
			if end+4 > MaxRequestSize {
				t.Fatalf("request of %d bytes upgraded", end+4)
			}
		case resp.StatusCode >= 400 && resp.StatusCode < 600:
			body, err := io.ReadAll(resp.Body)
			if err != nil || int64(len(body)) != resp.ContentLength || !resp.Close {
				t.Fatalf("request %q: error answer %q: body %q, %v", req, out, body, err)
			}
		default:
			t.Fatalf("request %q: status %d", req, resp.StatusCode)
		}
	})
}
