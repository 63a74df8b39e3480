package server

import (
	"log/slog"
	"time"
	"unicode/utf8"

	"github.com/gobwas/ws"
	"github.com/valyala/bytebufferpool"
	"github.com/valyala/fastjson"

	"github.com/throng-ws/throng/auth"
)

// Chat is the /ws endpoint: the seed's JSON protocol. A client is greeted with
// `connected`, a `ping` gets a `pong`, and a `refresh` carrying a later token
// for the same subject keeps the connection past its first token's expiry.
type Chat struct {
	// Auth verifies refreshed tokens. If nil, refresh is refused.
	Auth *auth.Verifier
	// Logger receives the endpoint's logs. If nil, logs are discarded.
	Logger *slog.Logger
	// Now is the clock for timestamps. If nil, time.Now is used.
	Now func() time.Time

	parsers fastjson.ParserPool
}

// Error codes sent in `error` messages.
const (
	CodeInvalidJSON    = "invalid_json"
	CodeInvalidMessage = "invalid_message"
	CodeUnknownType    = "unknown_type"
	CodeInvalidToken   = "invalid_token"
	CodeTokenExpired   = "token_expired"
	CodeUnsupported    = "unsupported"
)

// TimeLayout is the protocol's timestamp format: RFC 3339 in UTC with
// milliseconds, as JavaScript's Date.toISOString writes it.
const TimeLayout = "2006-01-02T15:04:05.000Z07:00"

func (h *Chat) now() time.Time {
	if h.Now != nil {
		return h.Now()
	}
	return time.Now()
}

// OnOpen implements Handler.
func (h *Chat) OnOpen(c *Conn) {
	b := bytebufferpool.Get()
	b.B = append(b.B, `{"type":"connected","userId":`...)
	b.B = AppendJSONString(b.B, c.UserID())
	b.B = append(b.B, `,"timestamp":"`...)
	b.B = h.now().UTC().AppendFormat(b.B, TimeLayout)
	b.B = append(b.B, `"}`...)
	c.WriteText(b.B)
	bytebufferpool.Put(b)
}

// OnMessage implements Handler.
func (h *Chat) OnMessage(c *Conn, op ws.OpCode, data []byte) {
	if op != ws.OpText {
		c.Close(CloseUnsupported)
		return
	}
	p := h.parsers.Get()
	defer h.parsers.Put(p)
	v, err := p.ParseBytes(data)
	if err != nil || v.Type() != fastjson.TypeObject {
		h.sendError(c, CodeInvalidJSON, "Invalid JSON", "")
		return
	}
	t := v.Get("type")
	if t == nil || t.Type() != fastjson.TypeString {
		h.sendError(c, CodeInvalidMessage, "Invalid message format", "type")
		return
	}
	switch typ := t.GetStringBytes(); string(typ) {
	case "ping":
		c.WriteText([]byte(`{"type":"pong"}`))
	case "refresh":
		h.refresh(c, v)
	default:
		if !utf8.Valid(typ) || len(typ) > 64 {
			typ = typ[:0]
		}
		h.sendErrorf(c, CodeUnknownType, "Unknown message type: ", typ)
	}
}

// refresh replaces the connection's token expiry with a later token's, if the
// token verifies and names the same subject.
func (h *Chat) refresh(c *Conn, v *fastjson.Value) {
	tv := v.Get("token")
	if tv == nil || tv.Type() != fastjson.TypeString {
		h.sendError(c, CodeInvalidMessage, "Invalid message format", "token")
		return
	}
	if h.Auth == nil {
		h.sendError(c, CodeInvalidToken, "Invalid token", "")
		return
	}
	claims, err := h.Auth.Verify(string(tv.GetStringBytes()))
	switch {
	case err != nil:
		h.sendError(c, CodeInvalidToken, "Invalid token", "")
		return
	case claims.Subject != c.UserID():
		h.sendError(c, CodeInvalidToken, "Invalid token", "sub")
		return
	case !c.ExpiresAt().IsZero() && !claims.ExpiresAt.IsZero() && !claims.ExpiresAt.After(c.ExpiresAt()):
		h.sendError(c, CodeInvalidToken, "Invalid token", "exp")
		return
	}
	c.SetExpiresAt(claims.ExpiresAt)
	b := bytebufferpool.Get()
	b.B = append(b.B, `{"type":"refreshed"`...)
	if !claims.ExpiresAt.IsZero() {
		b.B = append(b.B, `,"expiresAt":"`...)
		b.B = claims.ExpiresAt.UTC().AppendFormat(b.B, TimeLayout)
		b.B = append(b.B, '"')
	}
	b.B = append(b.B, '}')
	c.WriteText(b.B)
	bytebufferpool.Put(b)
}

// TokenExpired is called by the server before it closes a connection whose
// token expired, so the client can read why in its own protocol.
func (h *Chat) TokenExpired(c *Conn) {
	h.sendError(c, CodeTokenExpired, "Token expired", "")
}

// OnClose implements Handler.
func (h *Chat) OnClose(*Conn, ws.StatusCode, string) {}

// OnError implements Handler.
func (h *Chat) OnError(c *Conn, err error) {
	if h.Logger != nil {
		h.Logger.Debug("connection error", "user", c.UserID(), "err", err)
	}
}

// sendError sends {"type":"error","code":…,"message":…}; a non-empty field is
// appended to the message and sent as "field".
func (h *Chat) sendError(c *Conn, code, msg, field string) {
	b := bytebufferpool.Get()
	b.B = appendError(b.B, code, msg, nil, field)
	c.WriteText(b.B)
	bytebufferpool.Put(b)
}

func (h *Chat) sendErrorf(c *Conn, code, msg string, arg []byte) {
	b := bytebufferpool.Get()
	b.B = appendError(b.B, code, msg, arg, "")
	c.WriteText(b.B)
	bytebufferpool.Put(b)
}

func appendError(b []byte, code, msg string, arg []byte, field string) []byte {
	b = append(b, `{"type":"error","code":`...)
	b = AppendJSONString(b, code)
	b = append(b, `,"message":"`...)
	b = appendJSONStringBody(b, msg)
	b = appendJSONStringBody(b, string(arg))
	if field != "" {
		b = append(b, ": "...)
		b = appendJSONStringBody(b, field)
	}
	b = append(b, '"')
	if field != "" {
		b = append(b, `,"field":`...)
		b = AppendJSONString(b, field)
	}
	return append(b, '}')
}

// AppendJSONString appends s as a quoted JSON string.
func AppendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	b = appendJSONStringBody(b, s)
	return append(b, '"')
}

const hexDigits = "0123456789abcdef"

// appendJSONStringBody appends s escaped for the inside of a JSON string. Invalid
// UTF-8 becomes U+FFFD, and U+2028/U+2029 are escaped so the output is also
// safe to embed in JavaScript.
func appendJSONStringBody(b []byte, s string) []byte {
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	return append(b, s[start:]...)
}
