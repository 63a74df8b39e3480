package web

import (
	"os"
	"regexp"
	"strconv"
	"testing"

	"github.com/throng-ws/throng/protocol"
)

// jsObject returns the string or number entries of `export const name =
// Object.freeze({ KEY: "value", ... })` in client.js.
func jsObject(t *testing.T, src []byte, name string) map[string]string {
	t.Helper()
	body := regexp.MustCompile(`(?s)export const ` + name + ` = Object\.freeze\(\{(.*?)\}\);`).FindSubmatch(src)
	if body == nil {
		t.Fatalf("client.js has no frozen %s", name)
	}
	out := make(map[string]string)
	for _, m := range regexp.MustCompile(`(\w+): (?:"([^"]*)"|(\d+))`).FindAllSubmatch(body[1], -1) {
		out[string(m[1])] = string(m[2]) + string(m[3])
	}
	return out
}

// TestClientConstantsMatchProtocol checks the browser client's copy of the
// vocabulary against package protocol, the one the server speaks.
func TestClientConstantsMatchProtocol(t *testing.T) {
	src, err := os.ReadFile("static/client.js")
	if err != nil {
		t.Fatal(err)
	}
	check := func(name string, want map[string]string) {
		got := jsObject(t, src, name)
		if len(got) != len(want) {
			t.Errorf("client.js %s has %d entries, protocol %d: %v", name, len(got), len(want), got)
		}
		for k, v := range want {
			if got[k] != v {
				t.Errorf("client.js %s.%s = %q, protocol says %q", name, k, got[k], v)
			}
		}
	}
	check("Types", map[string]string{
		"JOIN": protocol.TypeJoin, "CHAT": protocol.TypeChat, "LEAVE": protocol.TypeLeave,
		"PING": protocol.TypePing, "REFRESH": protocol.TypeRefresh, "MEMBERS": protocol.TypeMembers, "CONNECTED": protocol.TypeConnected,
		"JOINED": protocol.TypeJoined, "USER_JOINED": protocol.TypeUserJoined, "MESSAGE": protocol.TypeMessage,
		"LEFT": protocol.TypeLeft, "USER_LEFT": protocol.TypeUserLeft, "PONG": protocol.TypePong,
		"REFRESHED": protocol.TypeRefreshed, "ERROR": protocol.TypeError,
		"HISTORY": protocol.TypeHistory, "HISTORY_PAGE": protocol.TypeHistoryPage,
	})
	codes := make(map[string]string)
	for _, c := range protocol.Codes() {
		codes[regexp.MustCompile(`[a-z]+`).ReplaceAllStringFunc(c, func(s string) string {
			b := []byte(s)
			for i := range b {
				b[i] -= 'a' - 'A'
			}
			return string(b)
		})] = c
	}
	check("Codes", codes)
	check("Limits", map[string]string{
		"MAX_ROOM_ID":           strconv.Itoa(protocol.MaxRoomID),
		"MAX_USER_NAME":         strconv.Itoa(protocol.MaxUserName),
		"DEFAULT_MAX_CONTENT":   strconv.Itoa(protocol.DefaultMaxContent),
		"MAX_HISTORY_LIMIT":     strconv.Itoa(protocol.MaxHistoryLimit),
		"DEFAULT_HISTORY_LIMIT": strconv.Itoa(protocol.DefaultHistoryLimit),
		"MAX_EPOCH":             strconv.Itoa(protocol.MaxEpoch),
	})
}
