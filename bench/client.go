package bench

import (
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/gobwas/ws"
	"golang.org/x/sys/unix"

	"github.com/throng-ws/throng/poller"
	"github.com/throng-ws/throng/wsframe"
)

// Errors a client connection can end with, handed to ClientHandler.OnClose.
var (
	// ErrHandshakeTimeout: no complete 101 response within the handshake timeout.
	ErrHandshakeTimeout = errors.New("bench: handshake timeout")
	// ErrBadHandshake: the response was not a valid WebSocket upgrade (wrong
	// Upgrade or Connection header, wrong Sec-WebSocket-Accept, unparsable).
	ErrBadHandshake = errors.New("bench: bad handshake response")
	// ErrProtocol: the server broke RFC 6455 (a masked frame, a bad header, a
	// message past MaxMessageSize).
	ErrProtocol = errors.New("bench: protocol error")
	// ErrCloseTimeout: the server did not answer our close frame in time.
	ErrCloseTimeout = errors.New("bench: close handshake timeout")
	// ErrAbnormalClosure: the TCP stream ended without a close frame.
	ErrAbnormalClosure = errors.New("bench: connection closed without close frame")
)

// StatusError is the OnClose cause when the server answered the upgrade with
// something other than 101.
type StatusError struct{ Code int }

func (e *StatusError) Error() string { return fmt.Sprintf("bench: handshake status %d", e.Code) }

// CloseError is the OnClose cause when the server sent a close frame.
type CloseError struct {
	Code   ws.StatusCode
	Reason string
}

func (e *CloseError) Error() string {
	return fmt.Sprintf("bench: closed by server: %d %s", e.Code, e.Reason)
}

// ClientHandler receives a client's connection events. Like the poller's, every
// method runs on the goroutine of the loop that owns the connection and must not
// block.
type ClientHandler interface {
	// OnOpen is called once the 101 response has been checked.
	OnOpen(c *Conn)
	// OnMessage is called with each complete data message; p is valid only
	// during the call.
	OnMessage(c *Conn, op ws.OpCode, p []byte)
	// OnPong is called with each pong's payload.
	OnPong(c *Conn, p []byte)
	// OnClose is called exactly once for every connection whose Dial returned
	// nil, whether it ever opened or not. err is nil for a close we asked for
	// (Close, Drop) that completed cleanly.
	OnClose(c *Conn, err error)
}

// ClientOptions configures a Client. Only URL is required.
type ClientOptions struct {
	// URL is the ws:// endpoint, such as ws://127.0.0.1:8080/ws. wss is not
	// supported: the harness measures servers, not TLS.
	URL string
	// URLs, if set, are several endpoints, such as the nodes of a cluster, in
	// place of URL: Dial sends connection id to URLs[id % len(URLs)].
	URLs []string
	// TokenInHeader sends tokens as "Authorization: Bearer" instead of the
	// ?token= query parameter.
	TokenInHeader bool
	// SourceIPs are local addresses to bind, in turn, so that many connections
	// to one server port do not run out of ephemeral ports. If empty, the
	// kernel chooses.
	SourceIPs []netip.Addr
	// Loops is the number of event loops. If zero, GOMAXPROCS is used.
	Loops int
	// HandshakeTimeout bounds connect plus upgrade. If zero,
	// DefaultHandshakeTimeout is used.
	HandshakeTimeout time.Duration
	// CloseTimeout bounds the wait for the server's answer to our close frame.
	// If zero, DefaultCloseTimeout is used.
	CloseTimeout time.Duration
	// MaxMessageSize bounds an incoming message. If zero, DefaultMaxMessageSize
	// is used.
	MaxMessageSize int
	// Origin, if set, is sent as the Origin header.
	Origin string
	// Compression offers permessage-deflate (RFC 7692) without context
	// takeover either way, and inflates the server's compressed messages.
	// The client sends its own messages plain, which the extension allows.
	Compression bool
}

// Client defaults.
const (
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultCloseTimeout     = 3 * time.Second
	DefaultMaxMessageSize   = 16 << 20
	// answerGrace is how long, after the close handshake, we wait for the
	// server to end TCP before resetting the connection ourselves.
	answerGrace = time.Second
	// maxResponseSize bounds the 101 response we are willing to buffer.
	maxResponseSize = 16 << 10
	clientTick      = 100 * time.Millisecond
)

// Client dials and runs many WebSocket client connections on one poller: a
// connection costs a struct and a socket, never a goroutine.
type Client struct {
	h    ClientHandler
	opts ClientOptions
	p    *poller.Poller
	eps  []endpoint // URL's, or one per URLs

	scratch  [][]byte // per loop, owned by that loop: the frame being encoded
	nextAddr atomic.Uint32
	loops    []clientLoop
}

// clientLoop is one loop's own state.
type clientLoop struct {
	inflater wsframe.Inflater // owned by the loop
	inflated []byte           // owned by the loop: the last message inflated
	wire     atomic.Uint64    // bytes read from the loop's sockets
	_        [64]byte         // keep the next loop's counter off this cache line
}

// endpoint is one server the client dials, with its upgrade request made
// ready but for the token and the key.
type endpoint struct {
	raddr  netip.AddrPort
	prefix []byte // "GET /path?query" up to where a token parameter goes
	rest   []byte // " HTTP/1.1\r\nHost: …" up to the key header's value
	query  bool   // the path already has a query, so a token is added with '&'
}

// Conn is one client connection. Its methods must be called on the goroutine of
// the loop that owns it: in a ClientHandler method or a job posted to Loop().
type Conn struct {
	cl *Client
	ep *endpoint
	pc *poller.Conn

	// ID is the caller's number for the connection.
	ID int
	// Data is the caller's per-connection state.
	Data any

	key     [24]byte
	started int64 // unix ns when Dial was called
	opened  int64 // unix ns when the upgrade completed
	state   connState
	// answered: the close handshake is complete, only the server's end of
	// TCP is awaited.
	answered bool
	// deflate: the server accepted permessage-deflate; fragZ: the
	// fragmented message in progress is compressed.
	deflate bool
	fragZ   bool
	fragOp  ws.OpCode
	frag    []byte
	err     error // why we closed it, handed to OnClose
	token   string
}

type connState uint8

const (
	stateDialing connState = iota
	stateUpgrading
	stateOpen
	stateClosing // our close frame is sent; waiting for the server's
	stateClosed
)

// NewClient validates o and starts the client's event loops. Call Close to stop
// them, which closes every connection.
func NewClient(h ClientHandler, o ClientOptions) (*Client, error) {
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if o.CloseTimeout <= 0 {
		o.CloseTimeout = DefaultCloseTimeout
	}
	if o.MaxMessageSize <= 0 {
		o.MaxMessageSize = DefaultMaxMessageSize
	}
	cl := &Client{h: h, opts: o}
	urls := o.URLs
	if len(urls) == 0 {
		urls = []string{o.URL}
	}
	for _, s := range urls {
		ep, err := newEndpoint(s, o.Origin, o.Compression)
		if err != nil {
			return nil, err
		}
		cl.eps = append(cl.eps, ep)
	}
	p, err := poller.New(cl, poller.Options{Loops: o.Loops, TickInterval: clientTick, NoDelay: true})
	if err != nil {
		return nil, err
	}
	cl.p = p
	cl.scratch = make([][]byte, len(p.Loops()))
	cl.loops = make([]clientLoop, len(p.Loops()))
	return cl, nil
}

func newEndpoint(s, origin string, compression bool) (endpoint, error) {
	var ep endpoint
	u, err := url.Parse(s)
	if err != nil {
		return ep, fmt.Errorf("bench: url: %w", err)
	}
	if u.Scheme != "ws" && u.Scheme != "http" {
		return ep, fmt.Errorf("bench: url %q: scheme must be ws", s)
	}
	if ep.raddr, err = resolve(u); err != nil {
		return ep, err
	}
	path := u.EscapedPath()
	if path == "" {
		path = "/"
	}
	ep.prefix = append(ep.prefix, "GET "+path...)
	if u.RawQuery != "" {
		ep.prefix = append(ep.prefix, "?"+u.RawQuery...)
		ep.query = true
	}
	rest := " HTTP/1.1\r\nHost: " + u.Host + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
	if origin != "" {
		rest += "Origin: " + origin + "\r\n"
	}
	if compression {
		rest += "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"
	}
	ep.rest = append(ep.rest, rest+"Sec-WebSocket-Key: "...)
	return ep, nil
}

func resolve(u *url.URL) (netip.AddrPort, error) {
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = "80"
	}
	pn, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("bench: url port %q: %w", port, err)
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return netip.AddrPortFrom(a.Unmap(), uint16(pn)), nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil || len(addrs) == 0 {
		return netip.AddrPort{}, fmt.Errorf("bench: resolve %q: %v", host, err)
	}
	best := addrs[0]
	for _, a := range addrs {
		if a.Unmap().Is4() {
			best = a
			break
		}
	}
	return netip.AddrPortFrom(best.Unmap(), uint16(pn)), nil
}

// Loops returns the client's event loops, to post work to.
func (cl *Client) Loops() []*poller.Loop { return cl.p.Loops() }

// Close stops the loops; every open connection is dropped and reported to
// OnClose.
func (cl *Client) Close() error { return cl.p.Close() }

// Dial starts a connection. token, if not empty, is presented as the URL's
// token parameter or an Authorization header. The outcome arrives on a loop:
// OnOpen, or OnClose with the error. A non-nil error means no callback will
// come.
func (cl *Client) Dial(id int, token string, data any) (*Conn, error) {
	ep := &cl.eps[0]
	if n := len(cl.eps); n > 1 {
		ep = &cl.eps[((id%n)+n)%n]
	}
	c := &Conn{cl: cl, ep: ep, ID: id, Data: data, token: token, started: time.Now().UnixNano()}
	var laddr netip.Addr
	if n := len(cl.opts.SourceIPs); n > 0 {
		laddr = cl.opts.SourceIPs[int(cl.nextAddr.Add(1)-1)%n]
	}
	if err := cl.p.Dial(ep.raddr, laddr, c); err != nil {
		return nil, err
	}
	return c, nil
}

// Loop is the loop that owns the connection, or nil before the dial reached it.
func (c *Conn) Loop() *poller.Loop {
	if c.pc == nil {
		return nil
	}
	return c.pc.Loop()
}

// Open reports whether the connection is upgraded and not closing.
func (c *Conn) Open() bool { return c.state == stateOpen }

// Opened reports whether the upgrade ever completed.
func (c *Conn) Opened() bool { return c.opened != 0 }

// HandshakeTime is how long connect plus upgrade took; zero if it has not
// completed.
func (c *Conn) HandshakeTime() time.Duration {
	if c.opened == 0 {
		return 0
	}
	return time.Duration(c.opened - c.started)
}

// Pending is the number of bytes queued for the socket.
func (c *Conn) Pending() int {
	if c.pc == nil {
		return 0
	}
	return c.pc.Pending()
}

// OnOpen implements poller.Handler: the TCP connect completed, so the upgrade
// request goes out.
func (cl *Client) OnOpen(pc *poller.Conn) {
	c := pc.Context().(*Conn)
	c.pc = pc
	c.state = stateUpgrading
	pc.SetStamp(time.Now().Add(cl.opts.HandshakeTimeout).UnixMilli())
	var raw [16]byte
	binary.LittleEndian.PutUint64(raw[:8], rand.Uint64())
	binary.LittleEndian.PutUint64(raw[8:], rand.Uint64())
	base64.StdEncoding.Encode(c.key[:], raw[:])

	b := cl.buf(pc.Loop().Index())
	b = append(b, c.ep.prefix...)
	if c.token != "" && !cl.opts.TokenInHeader {
		if c.ep.query {
			b = append(b, '&')
		} else {
			b = append(b, '?')
		}
		b = append(b, "token="...)
		b = append(b, url.QueryEscape(c.token)...)
	}
	b = append(b, c.ep.rest...)
	b = append(b, c.key[:]...)
	b = append(b, "\r\n"...)
	if c.token != "" && cl.opts.TokenInHeader {
		b = append(b, "Authorization: Bearer "...)
		b = append(b, c.token...)
		b = append(b, "\r\n"...)
	}
	b = append(b, "\r\n"...)
	cl.keep(pc.Loop().Index(), b)
	c.token = ""
	if err := pc.Write(b); err != nil {
		c.fail(err)
	}
}

func (cl *Client) buf(loop int) []byte { return cl.scratch[loop][:0] }

func (cl *Client) keep(loop int, b []byte) {
	if cap(b) <= 1<<20 {
		cl.scratch[loop] = b
	}
}

// OnData implements poller.Handler.
func (cl *Client) OnData(pc *poller.Conn, data []byte) int {
	n := cl.onData(pc, data)
	cl.loops[pc.Loop().Index()].wire.Add(uint64(max(n, 0)))
	return n
}

// WireBytes is how many bytes the client has read from its sockets: frames
// as they travel, compressed ones compressed, handshakes included.
func (cl *Client) WireBytes() uint64 {
	var n uint64
	for i := range cl.loops {
		n += cl.loops[i].wire.Load()
	}
	return n
}

func (cl *Client) onData(pc *poller.Conn, data []byte) int {
	c := pc.Context().(*Conn)
	off := 0
	if c.state == stateUpgrading {
		n, err := c.upgrade(data)
		if err != nil {
			c.fail(err)
			return len(data)
		}
		if n == 0 {
			return 0
		}
		off = n
		c.state = stateOpen
		c.opened = time.Now().UnixNano()
		pc.SetStamp(0)
		cl.h.OnOpen(c)
	}
	return off + c.frames(data[off:])
}

// upgrade checks the server's response to the upgrade request. It returns 0
// while the response is incomplete, else its length.
func (c *Conn) upgrade(data []byte) (int, error) {
	end := bytes.Index(data, []byte("\r\n\r\n"))
	if end < 0 {
		if len(data) > maxResponseSize {
			return 0, fmt.Errorf("%w: response headers too large", ErrBadHandshake)
		}
		return 0, nil
	}
	head := data[:end]
	line, head, _ := bytes.Cut(head, []byte("\r\n"))
	// "HTTP/1.1 101 Switching Protocols"
	if len(line) < 12 || !bytes.HasPrefix(line, []byte("HTTP/1.")) || line[8] != ' ' {
		return 0, fmt.Errorf("%w: status line %q", ErrBadHandshake, line)
	}
	code, err := strconv.Atoi(string(line[9:12]))
	if err != nil {
		return 0, fmt.Errorf("%w: status line %q", ErrBadHandshake, line)
	}
	if code != 101 {
		return 0, &StatusError{Code: code}
	}
	var upgrade, connection, accept bool
	want := acceptKey(c.key[:])
	for len(head) > 0 {
		var h []byte
		h, head, _ = bytes.Cut(head, []byte("\r\n"))
		k, v, ok := bytes.Cut(h, []byte(":"))
		if !ok {
			continue
		}
		v = bytes.TrimSpace(v)
		switch {
		case bytes.EqualFold(k, []byte("Upgrade")):
			upgrade = bytes.EqualFold(v, []byte("websocket"))
		case bytes.EqualFold(k, []byte("Connection")):
			connection = hasToken(v, "upgrade")
		case bytes.EqualFold(k, []byte("Sec-WebSocket-Accept")):
			accept = bytes.Equal(v, want[:])
		case bytes.EqualFold(k, []byte("Sec-WebSocket-Extensions")):
			name, _, _ := bytes.Cut(v, []byte(";"))
			if !c.cl.opts.Compression || !bytes.Equal(bytes.TrimSpace(name), []byte("permessage-deflate")) {
				return 0, fmt.Errorf("%w: extension %q not offered", ErrBadHandshake, v)
			}
			c.deflate = true
		}
	}
	switch {
	case !upgrade:
		return 0, fmt.Errorf("%w: no Upgrade: websocket", ErrBadHandshake)
	case !connection:
		return 0, fmt.Errorf("%w: no Connection: Upgrade", ErrBadHandshake)
	case !accept:
		return 0, fmt.Errorf("%w: wrong Sec-WebSocket-Accept", ErrBadHandshake)
	}
	return end + 4, nil
}

const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// acceptKey is the Sec-WebSocket-Accept a server must answer key with.
func acceptKey(key []byte) (out [28]byte) {
	h := sha1.New()
	h.Write(key)
	h.Write([]byte(wsGUID))
	var sum [sha1.Size]byte
	base64.StdEncoding.Encode(out[:], h.Sum(sum[:0]))
	return out
}

// hasToken reports whether a comma-separated header value holds tok, ignoring
// case.
func hasToken(v []byte, tok string) bool {
	for len(v) > 0 {
		var t []byte
		t, v, _ = bytes.Cut(v, []byte(","))
		if bytes.EqualFold(bytes.TrimSpace(t), []byte(tok)) {
			return true
		}
	}
	return false
}

// frames handles every complete frame in data and returns how many bytes it
// used; a partial frame waits for the next read.
func (c *Conn) frames(data []byte) int {
	off := 0
	for off < len(data) && !c.pc.Closed() {
		h, n, ok, err := wsframe.ParseHeader(data[off:])
		compressed := false
		if err == nil && ok {
			st := ws.StateClientSide
			if c.fragOp != 0 {
				st |= ws.StateFragmented
			}
			if h.Rsv&0x4 != 0 && c.deflate && (h.OpCode == ws.OpText || h.OpCode == ws.OpBinary) {
				h.Rsv &^= 0x4 // permessage-deflate's "compressed"
				compressed = true
			}
			err = ws.CheckHeader(h, st)
		}
		if err == nil && h.Length > int64(c.cl.opts.MaxMessageSize-len(c.frag)) {
			err = errors.New("message too big")
		}
		if err != nil {
			c.fail(fmt.Errorf("%w: %v", ErrProtocol, err))
			return len(data)
		}
		if !ok {
			break
		}
		end := off + n + int(h.Length)
		if end > len(data) {
			break
		}
		c.frame(h, data[off+n:end], compressed)
		off = end
	}
	if c.pc.Closed() {
		return len(data)
	}
	return off
}

func (c *Conn) frame(h ws.Header, p []byte, compressed bool) {
	switch h.OpCode {
	case ws.OpPing:
		if c.state == stateOpen {
			c.send(ws.OpPong, p)
		}
		return
	case ws.OpPong:
		c.cl.h.OnPong(c, p)
		return
	case ws.OpClose:
		c.closeFrame(p)
		return
	}
	if c.state != stateOpen {
		return
	}
	if h.OpCode != ws.OpContinuation && h.Fin {
		c.message(h.OpCode, p, compressed)
		return
	}
	if h.OpCode != ws.OpContinuation {
		c.fragOp = h.OpCode
		c.fragZ = compressed
		c.frag = c.frag[:0]
	}
	c.frag = append(c.frag, p...)
	if !h.Fin {
		return
	}
	op := c.fragOp
	c.fragOp = 0
	c.message(op, c.frag, c.fragZ)
	c.frag = nil
}

// message hands a whole message to the handler, inflated if it came
// compressed.
func (c *Conn) message(op ws.OpCode, p []byte, compressed bool) {
	if compressed {
		cl := &c.cl.loops[c.Loop().Index()]
		var err error
		cl.inflated, err = cl.inflater.Inflate(cl.inflated[:0], p, c.cl.opts.MaxMessageSize)
		if err != nil {
			c.fail(fmt.Errorf("%w: %v", ErrProtocol, err))
			return
		}
		p = cl.inflated
	}
	c.cl.h.OnMessage(c, op, p)
}

func (c *Conn) closeFrame(p []byte) {
	code, reason := ws.StatusNoStatusRcvd, ""
	if len(p) >= 2 {
		code = ws.StatusCode(binary.BigEndian.Uint16(p))
		reason = string(p[2:])
	}
	if c.state == stateClosing {
		// The server answered ours. It should end the TCP connection first
		// (RFC 6455 7.1.1), so TIME_WAIT lands on its side, not on our ports.
		// One that does not is reset by the sweep after answerGrace.
		c.answered = true
		c.pc.SetStamp(time.Now().Add(answerGrace).UnixMilli())
		return
	}
	var body [2]byte
	n := 0
	if code != ws.StatusNoStatusRcvd {
		binary.BigEndian.PutUint16(body[:], uint16(code))
		n = 2
	}
	c.err = &CloseError{Code: code, Reason: reason}
	if c.send(ws.OpClose, body[:n]) != nil {
		return
	}
	// As above: the server, having started the close, ends TCP first.
	c.state = stateClosing
	c.answered = true
	c.pc.SetStamp(time.Now().Add(answerGrace).UnixMilli())
}

// appendClientFrame appends a masked, final client frame of op carrying p.
func appendClientFrame(dst []byte, op ws.OpCode, p []byte) []byte {
	var mask [4]byte
	binary.LittleEndian.PutUint32(mask[:], rand.Uint32())
	dst = append(dst, 0x80|byte(op))
	switch n := len(p); {
	case n < 126:
		dst = append(dst, 0x80|byte(n))
	case n <= 0xffff:
		dst = append(dst, 0x80|126, byte(n>>8), byte(n))
	default:
		dst = append(dst, 0x80|127)
		dst = binary.BigEndian.AppendUint64(dst, uint64(n))
	}
	dst = append(dst, mask[:]...)
	start := len(dst)
	dst = append(dst, p...)
	ws.Cipher(dst[start:], mask, 0)
	return dst
}

// Send sends p as one masked message of op. p is copied, never modified.
func (c *Conn) Send(op ws.OpCode, p []byte) error {
	if c.state != stateOpen {
		return poller.ErrClosed
	}
	return c.send(op, p)
}

func (c *Conn) send(op ws.OpCode, p []byte) error {
	i := c.pc.Loop().Index()
	b := appendClientFrame(c.cl.buf(i), op, p)
	c.cl.keep(i, b)
	if err := c.pc.Write(b); err != nil {
		c.fail(err)
		return err
	}
	return nil
}

// Ping sends a ping with payload p (at most 125 bytes).
func (c *Conn) Ping(p []byte) error {
	if len(p) > ws.MaxControlFramePayloadSize {
		p = p[:ws.MaxControlFramePayloadSize]
	}
	return c.Send(ws.OpPing, p)
}

// Close starts the close handshake with 1000; the connection is closed when the
// server answers or CloseTimeout passes.
func (c *Conn) Close() {
	switch c.state {
	case stateOpen:
		var body [2]byte
		binary.BigEndian.PutUint16(body[:], uint16(ws.StatusNormalClosure))
		if c.send(ws.OpClose, body[:]) != nil {
			return
		}
		c.state = stateClosing
		c.pc.SetStamp(time.Now().Add(c.cl.opts.CloseTimeout).UnixMilli())
	case stateClosing, stateClosed:
	default:
		c.Drop()
	}
}

// Drop resets the connection at once, without a close frame: what a crashed
// client does. The reset (SO_LINGER 0) leaves no TIME_WAIT holding the local
// port, so a storm can redial right away.
func (c *Conn) Drop() {
	if c.pc == nil || c.pc.Closed() {
		return
	}
	if _, ok := c.err.(*CloseError); !ok {
		c.err = nil
	}
	c.reset(c.err)
}

// reset closes with an RST, reporting err to OnClose.
func (c *Conn) reset(err error) {
	if c.pc.Closed() {
		return
	}
	unix.SetsockoptLinger(c.pc.Fd(), unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	c.err = err
	c.pc.Close()
}

// fail closes the connection with err as the OnClose cause.
func (c *Conn) fail(err error) {
	if c.pc.Closed() {
		return
	}
	c.err = err
	c.pc.Close()
}

// OnWritable implements poller.Handler.
func (cl *Client) OnWritable(*poller.Conn) {}

// OnClose implements poller.Handler.
func (cl *Client) OnClose(pc *poller.Conn, cause error) {
	c := pc.Context().(*Conn)
	if c.pc == nil {
		c.pc = pc // the connect itself failed
	}
	err := c.err
	if cause != nil && err == nil {
		switch {
		case c.state == stateClosing:
			// The server closed the socket after our close frame without
			// answering it; common and harmless.
		case errors.Is(cause, poller.ErrPeerClosed) && c.state == stateOpen:
			err = ErrAbnormalClosure
		case errors.Is(cause, poller.ErrPeerClosed) && c.state == stateUpgrading:
			err = fmt.Errorf("%w: closed during upgrade", ErrBadHandshake)
		default:
			err = cause
		}
	}
	c.state = stateClosed
	c.frag = nil
	cl.h.OnClose(c, err)
}

// OnTick implements poller.Handler: one sweep per loop for upgrade and close
// deadlines, rather than a timer per connection.
func (cl *Client) OnTick(l *poller.Loop, now time.Time) {
	ms := now.UnixMilli()
	l.Range(func(pc *poller.Conn) bool {
		c, ok := pc.Context().(*Conn)
		if !ok {
			return true
		}
		if c.pc == nil {
			c.pc = pc
		}
		switch c.state {
		case stateDialing:
			// The stamp is unset until OnOpen: the dial's deadline counts from
			// when it started.
			if now.UnixNano()-c.started > int64(cl.opts.HandshakeTimeout) {
				c.fail(ErrHandshakeTimeout)
			}
		case stateUpgrading:
			if s := pc.Stamp(); s != 0 && ms >= s {
				c.fail(ErrHandshakeTimeout)
			}
		case stateClosing:
			if s := pc.Stamp(); s != 0 && ms >= s {
				if c.answered {
					c.Drop() // the handshake is done; only the TCP close is late
				} else {
					c.reset(ErrCloseTimeout)
				}
			}
		}
		return true
	})
}
