package httplimit

import (
	"encoding/json"
	"net/http"
	"strings"
)

// ErrorBody is the one shape of every error the HTTP listener answers, from
// the API, /token/verify and the routing alike:
//
//	{"error":{"code":"not_found","message":"no such path"}}
//
// Code is a stable snake_case word for programs; Message is for people.
// Reason, where set, is a finer cause (an invalid token's, in --dev).
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is ErrorBody's content.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
	Reason  string `json:"reason,omitempty"`
}

// WriteError answers status with the listener's JSON error.
func WriteError(w http.ResponseWriter, status int, code, message string) {
	WriteErrorBody(w, status, ErrorBody{ErrorDetail{Code: code, Message: message}})
}

// WriteErrorBody answers status with body.
func WriteErrorBody(w http.ResponseWriter, status int, body ErrorBody) {
	b, _ := json.Marshal(body)
	h := w.Header()
	h.Del("Content-Length")
	h.Set("Content-Type", "application/json")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// statusCodes are the codes of the errors JSONErrors rewrites.
var statusCodes = map[int]string{
	http.StatusBadRequest:            "bad_request",
	http.StatusUnauthorized:          "unauthorized",
	http.StatusForbidden:             "forbidden",
	http.StatusNotFound:              "not_found",
	http.StatusMethodNotAllowed:      "method_not_allowed",
	http.StatusRequestEntityTooLarge: "too_large",
	http.StatusTooManyRequests:       "rate_limited",
	http.StatusInternalServerError:   "internal",
	http.StatusServiceUnavailable:    "unavailable",
}

// JSONErrors makes every plain-text error that h answers (http.Error,
// http.NotFound, the ServeMux's 404 and 405) the listener's JSON error, with
// the same status and headers (a 405 keeps its Allow). Answers that are
// already JSON, and every success, pass untouched.
func JSONErrors(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(&jsonErrorWriter{ResponseWriter: w}, r)
	})
}

type jsonErrorWriter struct {
	http.ResponseWriter
	swallow bool // the plain body is replaced: drop its writes
}

func (w *jsonErrorWriter) WriteHeader(status int) {
	if status >= 400 && strings.HasPrefix(w.Header().Get("Content-Type"), "text/plain") {
		w.swallow = true
		code := statusCodes[status]
		if code == "" {
			code = "error"
		}
		msg := strings.ToLower(http.StatusText(status))
		if status == http.StatusMethodNotAllowed {
			msg += ": use " + w.Header().Get("Allow")
		}
		WriteErrorBody(w.ResponseWriter, status, ErrorBody{ErrorDetail{Code: code, Message: msg}})
		return
	}
	w.ResponseWriter.WriteHeader(status)
}

func (w *jsonErrorWriter) Write(p []byte) (int, error) {
	if w.swallow {
		return len(p), nil
	}
	return w.ResponseWriter.Write(p)
}

// Unwrap lets http.ResponseController reach the connection beneath.
func (w *jsonErrorWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
