// Package redact keeps credentials out of logs: tokens and keys in request
// URIs, bearer credentials, the user and password of a URL, and attributes
// named like a credential. The server, the cluster and the logger that
// package config builds all use it, so there is one rule.
package redact

import (
	"fmt"
	"log/slog"
	"net/url"
	"strings"
)

// Redacted replaces a credential in logs.
const Redacted = "REDACTED"

// credentialKeys are query parameters and log attribute keys whose values are
// secrets. Compared lower-cased.
var credentialKeys = map[string]bool{
	"token": true, "access_token": true, "id_token": true, "refresh_token": true,
	"jwt": true, "api_key": true, "apikey": true, "key": true, "secret": true,
	"jwt_secret": true, "password": true, "authorization": true,
}

// String returns s with the value of every credential query parameter
// (token=, access_token=, api_key=, ...) replaced by REDACTED, and the credential
// of an "Authorization: Bearer ..." or "bearer.<token>" subprotocol too. s may be
// a request URI or any text that holds one, such as an error message; the rest
// is left as it is. The user and password of a URL (nats://user:pass@host)
// become REDACTED as well.
func String(s string) string {
	s = userinfo(s)
	if !strings.ContainsAny(s, "=.") && !strings.Contains(strings.ToLower(s), "bearer") {
		return s
	}
	var b strings.Builder
	i := 0
	for i < len(s) {
		// A parameter name starts the text or follows ? & ; or a space.
		if i == 0 || strings.IndexByte("?&; \t\"'", s[i-1]) >= 0 {
			if n, ok := credentialParam(s[i:]); ok {
				b.WriteString(s[i : i+n])
				b.WriteString(Redacted)
				i += n
				for i < len(s) && strings.IndexByte("& \t#\"';,\r\n", s[i]) < 0 {
					i++
				}
				continue
			}
		}
		b.WriteByte(s[i])
		i++
	}
	return b.String()
}

// credentialParam reports whether s starts with a credential's name and its
// separator ("token=", "Bearer ", "bearer."), and the length of that prefix.
func credentialParam(s string) (int, bool) {
	eq := strings.IndexAny(s, "=&? \t")
	if eq > 0 && s[eq] == '=' {
		name := strings.ToLower(s[:eq])
		if credentialKeys[name] {
			return eq + 1, true
		}
		// A percent-encoded name, such as tok%65n=, is decoded before checking.
		if strings.Contains(name, "%") {
			if u, err := url.QueryUnescape(name); err == nil && credentialKeys[strings.ToLower(u)] {
				return eq + 1, true
			}
		}
	}
	if len(s) > 7 && (strings.EqualFold(s[:7], "bearer ") || strings.EqualFold(s[:7], "bearer.")) {
		return 7, true
	}
	return 0, false
}

// Attr is a slog.HandlerOptions.ReplaceAttr that keeps credentials out of
// logs whatever a caller passes: an attribute named like a credential (token,
// secret, api_key, authorization, ...) loses its value, and a string or error
// value has String applied. It is the second line of defence; the server
// redacts what it logs itself.
func Attr(_ []string, a slog.Attr) slog.Attr {
	if credentialKeys[strings.ToLower(a.Key)] {
		return slog.String(a.Key, Redacted)
	}
	switch a.Value.Kind() {
	case slog.KindString:
		if s := a.Value.String(); String(s) != s {
			return slog.String(a.Key, String(s))
		}
	case slog.KindAny:
		var s string
		switch v := a.Value.Any().(type) {
		case error:
			s = v.Error()
		case fmt.Stringer:
			s = v.String()
		default:
			return a
		}
		if r := String(s); r != s {
			return slog.String(a.Key, r)
		}
	}
	return a
}

// userinfo replaces the user and password of every URL in s with REDACTED:
// "nats://user:pass@host" becomes "nats://REDACTED@host". A bare
// "user:pass@host", with no scheme and no space, is a URL too.
func userinfo(s string) string {
	if !strings.Contains(s, "@") {
		return s
	}
	if !strings.Contains(s, "://") {
		if at := strings.LastIndexByte(s, '@'); !strings.ContainsAny(s, " \t") && strings.Contains(s[:at], ":") {
			return Redacted + s[at:]
		}
		return s
	}
	var b strings.Builder
	for {
		sep := strings.Index(s, "://")
		if sep < 0 {
			b.WriteString(s)
			return b.String()
		}
		b.WriteString(s[:sep+3])
		s = s[sep+3:]
		// The authority ends at the path, query, fragment or the end of the
		// quoted or spaced URL; its user part, at its last '@'.
		end := strings.IndexAny(s, "/?#\"' \t\r\n")
		if end < 0 {
			end = len(s)
		}
		if at := strings.LastIndexByte(s[:end], '@'); at >= 0 {
			b.WriteString(Redacted)
			s = s[at:]
		}
	}
}
