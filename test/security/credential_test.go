package security_test

import (
	"context"
	"testing"

	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/ctap/ctaphid/ctaphidtest"
	"github.com/tpm-fido/tpm-fido/presence"
)

// A credential made for RP A is refused under RP B, with no TPM command.
func TestCredentialUselessForOtherRP(t *testing.T) {
	e := newEnv(t, envOpts{})
	ch := e.channel()
	idA := makeCred(t, ch, "a.example")

	// Control: it works for A.
	if _, err := ch.GetAssertion(ctaphidtest.GetAssertionParams("a.example", cdh("x"), false, idA)); err != nil {
		t.Fatalf("assertion under its own RP: %v", err)
	}
	for _, up := range []bool{false, true} {
		e.stack.Counting.Reset()
		before := e.prompt.count()
		st, _, err := ch.Call(ctaphidtest.CmdGetAssertion, ctaphidtest.GetAssertionParams("b.example", cdh("x"), up, idA))
		if err != nil {
			t.Fatal(err)
		}
		if st != ctap.StatusNoCredentials {
			t.Errorf("up=%v: A's credential under rpId b.example: status %v, want NO_CREDENTIALS", up, st)
		}
		if n := e.stack.Counting.Total(); n != 0 {
			t.Errorf("up=%v: %d TPM commands for a foreign RP's credential (%v)", up, n, e.stack.Counting.Snapshot())
		}
		if up && e.prompt.count() == before {
			// CTAP 2.1 §6.2.2 step 7: no matching credential still
			// waits for user presence before NO_CREDENTIALS; a
			// prompt here is allowed, not required.
			t.Logf("up=true: no prompt before NO_CREDENTIALS")
		}
	}
}

// No single-bit change of a real credential ID is accepted.
func TestCredentialIDBitFlipsRejected(t *testing.T) {
	e := newEnv(t, envOpts{})
	ch := e.channel()
	id := makeCred(t, ch, "a.example")
	if _, err := ch.GetAssertion(ctaphidtest.GetAssertionParams("a.example", cdh("x"), false, id)); err != nil {
		t.Fatalf("unaltered ID: %v", err)
	}
	e.stack.Counting.Reset()
	accepted := 0
	for bit := 0; bit < 8*len(id); bit++ {
		alt := append([]byte(nil), id...)
		alt[bit/8] ^= 1 << (bit % 8)
		st, _, err := ch.Call(ctaphidtest.CmdGetAssertion, ctaphidtest.GetAssertionParams("a.example", cdh("x"), false, alt))
		if err != nil {
			t.Fatalf("bit %d: %v", bit, err)
		}
		if st != ctap.StatusNoCredentials {
			accepted++
			if accepted <= 5 {
				t.Errorf("ID with bit %d flipped: status %v, want NO_CREDENTIALS", bit, st)
			}
		}
	}
	if accepted > 0 {
		t.Errorf("%d of %d altered IDs not refused", accepted, 8*len(id))
	}
	if n := e.stack.Counting.Total(); n != 0 {
		t.Errorf("%d TPM commands for altered IDs", n)
	}
	t.Logf("%d single-bit variants of a %d-byte ID refused with 0 TPM commands", 8*len(id), len(id))
}

// With the prompt answering no, nothing with up=true succeeds, and the
// prompt was asked every time.
func TestUserPresenceNeedsYes(t *testing.T) {
	e := newEnv(t, envOpts{})
	ch := e.channel()
	id := makeCred(t, ch, "a.example")
	// Make a resident one too, so the discoverable path is covered.
	if _, err := ch.MakeCredential(ctaphidtest.MakeCredentialParams("a.example", []byte("rk-user"), cdh("reg"), true, false, nil)); err != nil {
		t.Fatalf("resident makeCredential: %v", err)
	}

	for _, deny := range []struct {
		name string
		f    func(context.Context) error
	}{
		{"Fixed{Allow:false}", func(ctx context.Context) error { return presence.Fixed{Allow: false}.Confirm(ctx, presence.Request{}) }},
		{"timeout", func(context.Context) error { return presence.ErrTimeout }},
	} {
		e.prompt.set(deny.f)
		reqs := []struct {
			name string
			cmd  byte
			p    map[int]any
		}{
			{"makeCredential", ctaphidtest.CmdMakeCredential, ctaphidtest.MakeCredentialParams("a.example", []byte("u2"), cdh("m"), false, false, nil)},
			{"makeCredential rk", ctaphidtest.CmdMakeCredential, ctaphidtest.MakeCredentialParams("b.example", []byte("u3"), cdh("m"), true, false, nil)},
			{"getAssertion allowList", ctaphidtest.CmdGetAssertion, ctaphidtest.GetAssertionParams("a.example", cdh("g"), true, id)},
			{"getAssertion discoverable", ctaphidtest.CmdGetAssertion, ctaphidtest.GetAssertionParams("a.example", cdh("g"), true)},
		}
		for _, r := range reqs {
			before := e.prompt.count()
			st, _, err := ch.Call(r.cmd, r.p)
			if err != nil {
				t.Fatalf("%s/%s: %v", deny.name, r.name, err)
			}
			if st == ctap.StatusOK {
				t.Errorf("%s/%s: succeeded without a yes", deny.name, r.name)
			} else if st != ctap.StatusOperationDenied && st != ctap.StatusUserActionTimeout {
				t.Errorf("%s/%s: status %v, want OPERATION_DENIED (or USER_ACTION_TIMEOUT)", deny.name, r.name, st)
			}
			if e.prompt.count() == before {
				t.Errorf("%s/%s: refused without asking the prompt", deny.name, r.name)
			}
		}
	}
	// Control: once the prompt says yes, the same request succeeds.
	e.prompt.set(nil)
	if _, err := ch.GetAssertion(ctaphidtest.GetAssertionParams("a.example", cdh("g"), true, id)); err != nil {
		t.Fatalf("with a yes: %v", err)
	}
}
