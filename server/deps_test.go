package server

import (
	"os/exec"
	"strings"
	"testing"
)

// TestTransportImportsNoApplication keeps server/ the transport alone: neither
// it nor anything it imports may be the room table, the protocol's vocabulary
// or an application.
func TestTransportImportsNoApplication(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Skipf("go list: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		for _, banned := range []string{"/room", "/chat", "/protocol", "/echo", "/shootout", "/cluster"} {
			if strings.HasSuffix(pkg, "throng-ws/throng"+banned) {
				t.Errorf("server depends on %s", pkg)
			}
		}
	}
}
