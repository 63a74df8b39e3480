package server

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/gobwas/httphead"
	"github.com/gobwas/ws"
	"github.com/valyala/bytebufferpool"

	"github.com/throng-ws/throng/auth"
	"github.com/throng-ws/throng/internal/redact"
	"github.com/throng-ws/throng/poller"
)

// HandshakeResult classifies an upgrade attempt, for Stats.Handshakes.
type HandshakeResult uint8

// Handshake results. The order is the metric label order.
const (
	HandshakeOK HandshakeResult = iota
	HandshakeBadRequest
	HandshakeNotFound
	HandshakeBadMethod
	HandshakeUpgradeRequired
	HandshakeTooLarge
	HandshakeForbidden
	HandshakeUnauthorized
	HandshakeUnavailable
	HandshakeTimeout
	HandshakeRateLimited
	HandshakeTooManyConns
	// HandshakeOverCapacity: Options.MaxConns connections are open (503).
	HandshakeOverCapacity
	// HandshakeMemory: the process's RSS passed the memory high-water mark (503).
	HandshakeMemory

	numHandshakeResults
)

var handshakeLabels = [numHandshakeResults]string{
	"ok", "bad_request", "not_found", "bad_method", "upgrade_required",
	"too_large", "forbidden", "unauthorized", "unavailable", "timeout",
	"rate_limited", "too_many_conns", "over_capacity", "memory",
}

func (r HandshakeResult) String() string {
	if r >= numHandshakeResults {
		return "unknown"
	}
	return handshakeLabels[r]
}

// Handshake rejections raised from the Upgrader's callbacks. gobwas/ws stops
// reading the request at the first one.
var (
	errNotFound     = ws.RejectConnectionError(ws.RejectionStatus(http.StatusNotFound), ws.RejectionReason("no WebSocket endpoint at this path"))
	errForbidden    = ws.RejectConnectionError(ws.RejectionStatus(http.StatusForbidden), ws.RejectionReason("origin not allowed"))
	errUnavailable  = ws.RejectConnectionError(ws.RejectionStatus(http.StatusServiceUnavailable), ws.RejectionReason("server shutting down"))
	errUnauthorized = ws.RejectConnectionError(ws.RejectionStatus(http.StatusUnauthorized), ws.RejectionReason("invalid or missing token"))
	errRateLimited  = ws.RejectConnectionError(ws.RejectionStatus(http.StatusTooManyRequests), ws.RejectionReason("too many handshakes"))
	errTooManyConns = ws.RejectConnectionError(ws.RejectionStatus(http.StatusTooManyRequests), ws.RejectionReason("too many connections for this user"))
	errOverCap      = ws.RejectConnectionError(ws.RejectionStatus(http.StatusServiceUnavailable), ws.RejectionReason("server at its connection limit"))
	errMemory       = ws.RejectConnectionError(ws.RejectionStatus(http.StatusServiceUnavailable), ws.RejectionReason("server at its memory limit"))
)

// OverloadRetryAfter is the Retry-After of a handshake refused because the
// server is at Options.MaxConns or its memory high-water mark. It is longer
// than a shutdown's second: a full server frees room slowly, and a herd of
// clients retrying every second would only keep it busy refusing them.
const OverloadRetryAfter = 5 * time.Second

// handshake upgrades requests on one loop. The loop runs one handshake at a time,
// so a single Upgrader, reader and response buffer serve all of them, and the
// callbacks fill in the fields below for the request in progress.
type handshake struct {
	s    *Server
	loop int
	up   ws.Upgrader
	r    bytes.Reader
	w    bytebufferpool.ByteBuffer

	// protoHeaders[i] is the response line selecting Options.Subprotocols[i],
	// made once so that a handshake does not allocate it.
	protoHeaders []ws.HandshakeHeader
	// resp holds the response's extra lines when there are two: a
	// subprotocol and permessage-deflate.
	resp responseHeaders

	// req is the request in progress, reset as a whole for each (reset), so
	// nothing of one request's is left for the next.
	req request
}

// request is one upgrade request's state, filled in by the Upgrader's
// callbacks.
type request struct {
	pc         *poller.Conn
	route      *route
	token      []byte
	user       string
	claims     auth.Claims
	authErr    error
	proto      int // 1 + the index in Options.Subprotocols of the choice; 0 for none
	retryAfter time.Duration
	counted    bool // the user's connection count was taken
	reserved   bool // one of Options.MaxConns was taken
	// uri is the request URI, kept only when debug logging is on; it may hold a
	// token, so it is logged only through redact.String.
	uri []byte

	// deflate is the server's window bits of the accepted permessage-deflate
	// offer (8 to 15), 0 for none.
	deflate uint8
}

// reset starts a request on pc (nil when it is over), keeping only the
// buffers' memory.
func (hs *handshake) reset(pc *poller.Conn) {
	hs.req = request{pc: pc, token: hs.req.token[:0], uri: hs.req.uri[:0]}
}

func (hs *handshake) init(s *Server, loop int) {
	hs.s = s
	hs.loop = loop
	hs.up = ws.Upgrader{
		OnRequest:       hs.onRequest,
		OnHeader:        hs.onHeader,
		ProtocolCustom:  hs.onProtocol,
		OnBeforeUpgrade: hs.beforeUpgrade,
	}
	if s.opts.Compression == CompressionOn {
		hs.up.ExtensionCustom = hs.onExtensions
	}
	for _, p := range s.opts.Subprotocols {
		hs.protoHeaders = append(hs.protoHeaders, ws.HandshakeHeaderString("Sec-WebSocket-Protocol: "+p+"\r\n"))
	}
}

// Read and Write make the handshake the io.ReadWriter gobwas/ws upgrades: it
// reads exactly the request's bytes, never past them, and writes the response
// into a buffer the loop sends.
func (hs *handshake) Read(p []byte) (int, error)  { return hs.r.Read(p) }
func (hs *handshake) Write(p []byte) (int, error) { return hs.w.Write(p) }

func (hs *handshake) onRequest(uri []byte) error {
	if hs.s.log.Enabled(context.Background(), slog.LevelDebug) {
		hs.req.uri = append(hs.req.uri[:0], uri...)
	}
	hs.req.route = hs.s.route(uri)
	if hs.req.route == nil {
		return errNotFound
	}
	if i := bytes.IndexByte(uri, '?'); i >= 0 {
		q := uri[i+1:]
		for len(q) > 0 {
			var kv []byte
			kv, q, _ = bytes.Cut(q, []byte{'&'})
			k, v, _ := bytes.Cut(kv, []byte{'='})
			if string(k) == "token" && len(hs.req.token) == 0 {
				if t, err := url.QueryUnescape(string(v)); err == nil {
					hs.req.token = append(hs.req.token[:0], t...)
				}
			}
		}
	}
	return nil
}

func (hs *handshake) onHeader(key, value []byte) error {
	switch string(key) {
	case "Origin":
		if !hs.s.originAllowed(value) {
			return errForbidden
		}
	case "Authorization":
		if len(value) > 7 && bytes.EqualFold(value[:7], []byte("bearer ")) && len(hs.req.token) == 0 {
			hs.req.token = append(hs.req.token[:0], bytes.TrimSpace(value[7:])...)
		}
	}
	return nil
}

// onProtocol picks a subprotocol from the client's list and takes a token from a
// "bearer.<token>" entry, which browsers use as they cannot set headers. That
// entry is never echoed back: the response would carry the token.
//
// The list may arrive over several header lines (RFC 6455 section 11.3.4), and
// gobwas/ws stops calling once a protocol is returned, so the choice is kept in
// hs.req.proto and sent by beforeUpgrade: a bearer entry after the chosen protocol
// is still read.
func (hs *handshake) onProtocol(v []byte) (string, bool) {
	for len(v) > 0 {
		var p []byte
		p, v, _ = bytes.Cut(v, []byte{','})
		p = bytes.TrimSpace(p)
		if t, ok := bytes.CutPrefix(p, []byte("bearer.")); ok {
			if len(hs.req.token) == 0 {
				hs.req.token = append(hs.req.token[:0], t...)
			}
			continue
		}
		for i, sp := range hs.s.opts.Subprotocols {
			if string(p) == sp && (hs.req.proto == 0 || i+1 < hs.req.proto) {
				hs.req.proto = i + 1 // Subprotocols are in the server's preference order
				break
			}
		}
	}
	return "", true
}

// onExtensions reads a Sec-WebSocket-Extensions line (there may be several)
// and keeps the first acceptable permessage-deflate offer; the response line is
// written by beforeUpgrade. A line that is not valid syntax fails the
// handshake with 400; offers the server declines only leave the extension out.
func (hs *handshake) onExtensions(v []byte, exts []httphead.Option) ([]httphead.Option, bool) {
	bits, ok := parseDeflateOffers(v)
	if ok && hs.req.deflate == 0 {
		hs.req.deflate = bits
	}
	return exts, ok
}

// beforeUpgrade adds the chosen subprotocol and the accepted permessage-deflate
// parameters to a successful upgrade.
func (hs *handshake) beforeUpgrade() (ws.HandshakeHeader, error) {
	h, err := hs.onBeforeUpgrade()
	if err != nil || h != nil {
		return h, err
	}
	var proto, ext ws.HandshakeHeader
	if hs.req.proto > 0 {
		proto = hs.protoHeaders[hs.req.proto-1]
	}
	if hs.req.deflate != 0 {
		ext = deflateResponses[hs.req.deflate-8]
	}
	switch {
	case proto == nil:
		return ext, nil
	case ext == nil:
		return proto, nil
	}
	hs.resp = responseHeaders{proto, ext}
	return &hs.resp, nil
}

// responseHeaders writes two response lines.
type responseHeaders [2]ws.HandshakeHeader

func (r *responseHeaders) WriteTo(w io.Writer) (int64, error) {
	n, err := r[0].WriteTo(w)
	if err != nil {
		return n, err
	}
	m, err := r[1].WriteTo(w)
	return n + m, err
}

func (hs *handshake) onBeforeUpgrade() (ws.HandshakeHeader, error) {
	s := hs.s
	if s.draining.Load() {
		return nil, errUnavailable
	}
	// Overload is checked before the rate limit and the token, so a full server
	// spends neither a client's handshake budget nor a signature check.
	if s.mem != nil && s.mem.refusing.Load() {
		hs.req.retryAfter = OverloadRetryAfter
		return nil, errMemory
	}
	if limit := int64(s.opts.MaxConns); limit > 0 {
		// One shared counter, not the loops' sums, so that loops admitting at the
		// same moment cannot pass the cap together.
		if s.admitted.Add(1) > limit {
			s.admitted.Add(-1)
			hs.req.retryAfter = OverloadRetryAfter
			return nil, errOverCap
		}
		hs.req.reserved = true
	}
	if s.ipLimit != nil {
		if ok, wait := s.ipLimit.Allow(hs.req.pc.RemoteAddr().Addr(), s.nowMillis()); !ok {
			hs.req.retryAfter = wait
			return nil, errRateLimited
		}
	}
	if s.opts.Auth == nil {
		hs.req.user = anonymousID()
	} else {
		hs.req.claims, hs.req.authErr = s.opts.Auth.Verify(string(hs.req.token))
		if hs.req.authErr != nil {
			s.stats(hs.loop).authFailures[auth.ReasonOf(hs.req.authErr)].Add(1)
			if s.opts.AuthFailure == AuthFailReject {
				return nil, errUnauthorized
			}
			return nil, nil // upgraded, then closed with the reason
		}
		hs.req.user = hs.req.claims.Subject
	}
	if s.perUser != nil {
		if !s.perUser.Acquire(hs.req.user, s.opts.MaxConnsPerUser) {
			return nil, errTooManyConns
		}
		hs.req.counted = true
	}
	return nil, nil
}

// serve runs the handshake over the bytes received so far. It returns how many
// it used and, once upgraded, the new connection.
func (hs *handshake) serve(pc *poller.Conn, data []byte) (int, *Conn) {
	s := hs.s
	end := bytes.Index(data, []byte("\r\n\r\n"))
	if end < 0 {
		if len(data) > MaxRequestSize {
			hs.reject(pc, HandshakeTooLarge, http.StatusRequestHeaderFieldsTooLarge, "request too large")
			return len(data), nil
		}
		return 0, nil
	}
	n := end + 4
	if n > MaxRequestSize {
		hs.reject(pc, HandshakeTooLarge, http.StatusRequestHeaderFieldsTooLarge, "request too large")
		return len(data), nil
	}
	hs.reset(pc)
	defer hs.reset(nil)
	hs.r.Reset(data[:n])
	hs.w.Reset()
	hsr, err := hs.up.Upgrade(hs)
	if err != nil {
		hs.release()
		res, status, msg := classify(err)
		hs.reject(pc, res, status, msg)
		return len(data), nil
	}
	if err := pc.Write(hs.w.B); err != nil {
		hs.release()
		pc.Close()
		return len(data), nil
	}
	_ = hsr
	s.stats(hs.loop).handshakes[HandshakeOK].Add(1)

	c := s.newConn(pc, hs.req.route, hs.req.user, hs.req.claims.Deadline)
	c.setFlag(flagCounted, hs.req.counted)
	if hs.req.deflate != 0 {
		c.deflate = hs.req.deflate
		s.stats(hs.loop).deflateOpen.Add(1)
	}
	if hs.req.authErr != nil {
		// AuthFailClose: the browser can read this reason, unlike a 401.
		c.setFlag(flagTold, true)
		if auth.ReasonOf(hs.req.authErr) == auth.ReasonMissing {
			c.Close(CloseAuthRequired)
		} else {
			c.Close(CloseInvalidToken)
		}
		return len(data), nil
	}
	if s.log.Enabled(context.Background(), slog.LevelDebug) {
		s.log.LogAttrs(context.Background(), slog.LevelDebug, "connection opened",
			slog.String("user", hs.req.user), slog.String("uri", redact.String(string(hs.req.uri))),
			slog.String("remote", pc.RemoteAddr().String()), slog.Int("loop", hs.loop))
	}
	c.route.h.OnOpen(c)
	return n, c
}

// release gives back what onBeforeUpgrade took for a handshake that did not
// become a connection; a Conn gives them back in OnClose.
func (hs *handshake) release() {
	if hs.req.counted {
		hs.s.perUser.Release(hs.req.user)
		hs.req.counted = false
	}
	if hs.req.reserved {
		hs.s.admitted.Add(-1)
		hs.req.reserved = false
	}
}

// classify maps an Upgrade error to a result, a status and a message.
func classify(err error) (HandshakeResult, int, string) {
	switch {
	case errors.Is(err, ws.ErrHandshakeBadUpgrade):
		return HandshakeUpgradeRequired, http.StatusUpgradeRequired, "WebSocket upgrade required"
	case errors.Is(err, ws.ErrHandshakeUpgradeRequired):
		return HandshakeUpgradeRequired, http.StatusUpgradeRequired, "unsupported WebSocket version"
	case errors.Is(err, ws.ErrHandshakeBadMethod):
		return HandshakeBadMethod, http.StatusMethodNotAllowed, "method not allowed"
	case errors.Is(err, errNotFound):
		return HandshakeNotFound, http.StatusNotFound, "not found"
	case errors.Is(err, errForbidden):
		return HandshakeForbidden, http.StatusForbidden, "origin not allowed"
	case errors.Is(err, errUnauthorized):
		return HandshakeUnauthorized, http.StatusUnauthorized, "invalid or missing token"
	case errors.Is(err, errUnavailable):
		return HandshakeUnavailable, http.StatusServiceUnavailable, "server shutting down"
	case errors.Is(err, errRateLimited):
		return HandshakeRateLimited, http.StatusTooManyRequests, "too many handshakes from this address"
	case errors.Is(err, errTooManyConns):
		return HandshakeTooManyConns, http.StatusTooManyRequests, "too many connections for this user"
	case errors.Is(err, errOverCap):
		return HandshakeOverCapacity, http.StatusServiceUnavailable, "server at its connection limit"
	case errors.Is(err, errMemory):
		return HandshakeMemory, http.StatusServiceUnavailable, "server at its memory limit"
	}
	var rej *ws.ConnectionRejectedError
	if errors.As(err, &rej) && rej.StatusCode() != 0 {
		return HandshakeBadRequest, rej.StatusCode(), rej.Error()
	}
	return HandshakeBadRequest, http.StatusBadRequest, "bad request"
}

// reject answers a refused handshake with a plain HTTP response and closes the
// socket once it is sent. The socket gets no WebSocket state.
func (hs *handshake) reject(pc *poller.Conn, res HandshakeResult, status int, msg string) {
	s := hs.s
	s.stats(pc.Loop().Index()).handshakes[res].Add(1)
	if s.log.Enabled(context.Background(), slog.LevelDebug) {
		s.log.LogAttrs(context.Background(), slog.LevelDebug, "handshake refused",
			slog.String("result", res.String()), slog.Int("status", status),
			slog.String("uri", redact.String(string(hs.req.uri))), slog.String("remote", pc.RemoteAddr().String()))
	}
	b := hs.w.B[:0]
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(status), 10)
	b = append(b, ' ')
	b = append(b, http.StatusText(status)...)
	b = append(b, "\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n"...)
	switch status {
	case http.StatusUnauthorized:
		b = append(b, "WWW-Authenticate: Bearer error=\"invalid_token\"\r\n"...)
	case http.StatusUpgradeRequired:
		b = append(b, "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"...)
	case http.StatusServiceUnavailable:
		if hs.req.retryAfter > 0 {
			b = append(b, "Retry-After: "...)
			b = strconv.AppendInt(b, int64(max(1, (hs.req.retryAfter+time.Second-1)/time.Second)), 10)
			b = append(b, "\r\n"...)
		} else {
			b = append(b, "Retry-After: 1\r\n"...)
		}
	case http.StatusTooManyRequests:
		if hs.req.retryAfter > 0 {
			b = append(b, "Retry-After: "...)
			b = strconv.AppendInt(b, int64(max(1, (hs.req.retryAfter+time.Second-1)/time.Second)), 10)
			b = append(b, "\r\n"...)
		}
	}
	b = append(b, "Content-Length: "...)
	b = strconv.AppendInt(b, int64(len(msg)+1), 10)
	b = append(b, "\r\n\r\n"...)
	b = append(b, msg...)
	b = append(b, '\n')
	hs.w.B = b
	connOf(pc).state = stateRejected
	pc.SetStamp(s.nowMillis() + time.Second.Milliseconds())
	if pc.Write(b) != nil {
		pc.Close()
		return
	}
	pc.CloseWrite()
}

var _ io.ReadWriter = (*handshake)(nil)
