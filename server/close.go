package server

import "github.com/gobwas/ws"

// CloseReason is why a connection ended. Each maps to one RFC 6455 close code and
// one reason text, and is counted in Stats.Closes.
type CloseReason uint8

// Close reasons. The order is the metric label order; append new ones at the end.
const (
	// ClosePeer: the peer started the close handshake (its code is in OnClose).
	ClosePeer CloseReason = iota
	// CloseAbnormal: the TCP connection ended without a close frame (1006).
	CloseAbnormal
	// CloseShutdown: the server is draining for shutdown (1001).
	CloseShutdown
	// CloseIdle: no frame arrived within the idle timeout (1001).
	CloseIdle
	// CloseProtocol: the peer broke RFC 6455 (1002).
	CloseProtocol
	// CloseUnsupported: a frame type the endpoint does not accept (1003).
	CloseUnsupported
	// CloseInvalidUTF8: a text message or close reason is not UTF-8 (1007).
	CloseInvalidUTF8
	// CloseAuthRequired: no token was presented (1008).
	CloseAuthRequired
	// CloseInvalidToken: the token failed verification (1008).
	CloseInvalidToken
	// CloseTokenExpired: the token expired on a live connection (1008).
	CloseTokenExpired
	// CloseTooBig: a message over the size limit (1009).
	CloseTooBig
	// CloseSlowConsumer: unsent bytes passed the pending limit (1008).
	CloseSlowConsumer
	// CloseRateLimited: the peer kept sending through a rate-limit ban (1008).
	CloseRateLimited
	// ClosePolicy: another policy violation (1008).
	ClosePolicy
	// CloseInternal: the server failed (1011).
	CloseInternal
	// CloseOperator: an operator disconnected the user (Server.CloseUser),
	// with the code and text the operator chose.
	CloseOperator
	// CloseBadDeflate: a compressed message (permessage-deflate) does not
	// inflate (1007).
	CloseBadDeflate

	numCloseReasons
)

var closeReasons = [numCloseReasons]struct {
	code  ws.StatusCode
	text  string
	label string
}{
	ClosePeer:         {ws.StatusNormalClosure, "", "peer"},
	CloseAbnormal:     {ws.StatusAbnormalClosure, "", "abnormal"},
	CloseShutdown:     {ws.StatusGoingAway, "server shutting down", "shutdown"},
	CloseIdle:         {ws.StatusGoingAway, "idle timeout", "idle"},
	CloseProtocol:     {ws.StatusProtocolError, "protocol error", "protocol"},
	CloseUnsupported:  {ws.StatusUnsupportedData, "binary messages are not supported", "unsupported"},
	CloseInvalidUTF8:  {ws.StatusInvalidFramePayloadData, "invalid UTF-8", "invalid_utf8"},
	CloseAuthRequired: {ws.StatusPolicyViolation, "Authentication required", "auth_required"},
	CloseInvalidToken: {ws.StatusPolicyViolation, "Invalid token", "invalid_token"},
	CloseTokenExpired: {ws.StatusPolicyViolation, "Token expired", "token_expired"},
	CloseTooBig:       {ws.StatusMessageTooBig, "message too big", "too_big"},
	CloseSlowConsumer: {ws.StatusPolicyViolation, "slow consumer", "slow_consumer"},
	CloseRateLimited:  {ws.StatusPolicyViolation, "rate limited", "rate_limited"},
	ClosePolicy:       {ws.StatusPolicyViolation, "policy violation", "policy"},
	CloseInternal:     {ws.StatusInternalServerError, "internal error", "internal"},
	CloseOperator:     {ws.StatusPolicyViolation, "disconnected by an operator", "operator"},
	CloseBadDeflate:   {ws.StatusInvalidFramePayloadData, "invalid compressed data", "bad_deflate"},
}

// Code is the close code sent for the reason.
func (r CloseReason) Code() ws.StatusCode { return closeReasons[r].code }

// Text is the close reason sent for the reason.
func (r CloseReason) Text() string { return closeReasons[r].text }

// String is a short label for logs and metrics.
func (r CloseReason) String() string {
	if r >= numCloseReasons {
		return "unknown"
	}
	return closeReasons[r].label
}

// CloseReasons lists every reason in label order, for exporting counters.
func CloseReasons() []CloseReason {
	rs := make([]CloseReason, numCloseReasons)
	for i := range rs {
		rs[i] = CloseReason(i)
	}
	return rs
}
