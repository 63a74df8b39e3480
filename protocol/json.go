package protocol

import (
	"strconv"
	"unicode/utf8"
)

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
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	return append(b, s[start:]...)
}

// AppendError appends an error message: {"type":"error","code":…,"message":…}.
// The message is text followed by arg; a non-empty field is named after a
// colon and sent as "field", as invalid_message does.
func AppendError(b []byte, code, text string, arg []byte, field string) []byte {
	b = append(b, `{"type":"error","code":`...)
	b = AppendJSONString(b, code)
	b = append(b, `,"message":"`...)
	b = appendJSONStringBody(b, text)
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

// AppendRateLimited appends the rate_limited error that starts a ban of
// retryAfter seconds.
func AppendRateLimited(b []byte, retryAfter int) []byte {
	b = AppendError(b, CodeRateLimited, TextRateLimited, nil, "")
	b = append(b[:len(b)-1], `,"retryAfter":`...)
	b = strconv.AppendInt(b, int64(retryAfter), 10)
	return append(b, '}')
}
