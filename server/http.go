package server

import "net/http"

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
