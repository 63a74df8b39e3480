package server

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"github.com/throng-ws/throng/internal/redact"
)

// HTTPHandler serves the server's HTTP routes, which live on their own listener,
// apart from the WebSocket endpoints: /healthz (the process is up) and /readyz
// (it accepts connections; 503 once Shutdown has begun, so a load balancer stops
// sending new clients while the old ones drain).
func (s *Server) HTTPHandler() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !s.Ready() {
			w.WriteHeader(http.StatusServiceUnavailable)
			w.Write([]byte("draining\n"))
			return
		}
		w.Write([]byte("ready\n"))
	})
	return mux
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
			slog.String("method", r.Method), slog.String("uri", redact.String(r.RequestURI)),
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
