package presence

import (
	"strings"
	"testing"
	"unicode"
)

// TestMessageNeutralisesControlCharacters: the RP ID and user name come
// from the client. Control characters in them (terminal escape
// sequences, new lines, bidirectional overrides) must not reach a prompt,
// where they could rewrite what the user reads or drive the terminal.
func TestMessageNeutralisesControlCharacters(t *testing.T) {
	for _, rpID := range []string{
		"evil.example\x1b]52;c;aGVsbG8=\x07",         // OSC 52: write the clipboard
		"evil.example\r\x1b[2KSign in to github.com", // rewrite the line
		"evil.example\n\nSign in to github.com",
		"moc.buhtig\u202e.evil.example", // right-to-left override
		"ssh:\x00hidden",
	} {
		for _, op := range []Operation{OpRegister, OpAuthenticate} {
			msg := Request{Op: op, RPID: rpID}.Message()
			for _, r := range msg {
				if !unicode.IsPrint(r) && r != ' ' {
					t.Errorf("Message(%q) = %q: contains %U", rpID, msg, r)
				}
			}
			if !strings.Contains(msg, "evil.example") && !strings.HasPrefix(rpID, "ssh:") {
				t.Errorf("Message(%q) = %q: lost the RP ID", rpID, msg)
			}
		}
	}
	if got := (Request{Op: OpAuthenticate, RPID: "github.com"}).Message(); got != "Sign in to github.com" {
		t.Errorf("plain RP ID changed: %q", got)
	}
}
