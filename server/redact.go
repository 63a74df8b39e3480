package server

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"
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

// RedactURI returns s with the value of every credential query parameter
// (token=, access_token=, api_key=, ...) replaced by REDACTED, and the credential
// of an "Authorization: Bearer ..." or "bearer.<token>" subprotocol too. s may be
// a request URI or any text that holds one, such as an error message; the rest
// is left as it is.
func RedactURI(s string) string {
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

// RedactAttr is a slog.HandlerOptions.ReplaceAttr that keeps credentials out of
// logs whatever a caller passes: an attribute named like a credential (token,
// secret, api_key, authorization, ...) loses its value, and a string or error
// value has RedactURI applied. It is the second line of defence; the server
// redacts what it logs itself.
func RedactAttr(_ []string, a slog.Attr) slog.Attr {
	if credentialKeys[strings.ToLower(a.Key)] {
		return slog.String(a.Key, Redacted)
	}
	switch a.Value.Kind() {
	case slog.KindString:
		if s := a.Value.String(); RedactURI(s) != s {
			return slog.String(a.Key, RedactURI(s))
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
		if r := RedactURI(s); r != s {
			return slog.String(a.Key, r)
		}
	}
	return a
}

// LogRequests logs each HTTP request at debug level: method, URI with its
// credentials redacted, status and duration. Headers are never logged, as
// Authorization carries the API key.
func LogRequests(log *slog.Logger, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !log.Enabled(r.Context(), slog.LevelDebug) {
			h.ServeHTTP(w, r)
			return
		}
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		h.ServeHTTP(sw, r)
		log.LogAttrs(context.Background(), slog.LevelDebug, "http request",
			slog.String("method", r.Method), slog.String("uri", RedactURI(r.RequestURI)),
			slog.Int("status", sw.status), slog.Duration("took", time.Since(start)),
			slog.String("remote", r.RemoteAddr))
	})
}

type statusWriter struct {
	http.ResponseWriter
	status int
	wrote  bool
}

func (w *statusWriter) WriteHeader(code int) {
	if !w.wrote {
		w.status, w.wrote = code, true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	w.wrote = true
	return w.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController reach the writer's Flush and deadlines.
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
