package tpmstore

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/tpm-fido/tpm-fido/tpmstore/tpmtest"
)

// thief is someone who holds a copy of the state directory and can send
// commands to the TPM (another process of the user, or of any user in
// group tss with the files), but not the PIN. Its code is written here
// from the documented formats, not with the store's methods.
type thief struct {
	t      *testing.T
	tpm    transport.TPM
	meta   map[string][]byte
	srk    tpm2.NamedHandle
	wrap   []byte
	pinPub []byte
}

func newThief(t *testing.T, tpm transport.TPM, dir string) *thief {
	t.Helper()
	th := &thief{t: t, tpm: tpm, meta: stolenMeta(t, snapshot(t, dir))}
	// The wrapping key: TPM2_HMAC with the anchor key and its authValue,
	// both named in the state.
	anchor := stolenAnchor(th.meta)
	in := append([]byte{0}, "tpm-fido credential-id wrapping key"...)
	r, err := tpm2.Hmac{Handle: anchor.authHandle(), Buffer: tpm2.TPM2BMaxBuffer{Buffer: append(in, th.meta[string(keyWrapSalt)]...)}, HashAlg: tpm2.TPMAlgSHA256}.Execute(tpm)
	if err != nil {
		t.Fatalf("thief: derive the wrapping key: %v", err)
	}
	th.wrap = r.OutHMAC.Buffer
	th.pinPub = th.meta[string(keyPINPub)]
	c, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}.Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	th.srk = tpm2.NamedHandle{Handle: c.ObjectHandle, Name: c.Name}
	t.Cleanup(func() { tpm2.FlushContext{FlushHandle: c.ObjectHandle}.Execute(tpm) })
	return th
}

// loadKey unwraps a credential ID and loads its key into the TPM.
func (th *thief) loadKey(rp [32]byte, id []byte) tpm2.NamedHandle {
	t := th.t
	t.Helper()
	m := hmac.New(sha256.New, th.wrap)
	m.Write([]byte("tpm-fido credential id"))
	m.Write(id[1:17])
	block, _ := aes.NewCipher(m.Sum(nil))
	aead, _ := cipher.NewGCM(block)
	plain, err := aead.Open(nil, make([]byte, 12), id[17:], append(rp[:], id[0]))
	if err != nil {
		t.Fatalf("thief: unwrap the credential ID: %v", err)
	}
	n := int(binary.BigEndian.Uint16(plain[1:3]))
	priv, x, y := plain[3:3+n], plain[3+n:3+n+32], plain[3+n+32:]
	var policy []byte
	if plain[0]&0x10 != 0 {
		// The public area names its policy; the thief can compute it too.
		if policy, err = pinPolicyDigest(th.pinPub); err != nil {
			t.Fatal(err)
		}
	}
	tmpl := credKeyTemplate(x, y, policy)
	l, err := tpm2.Load{
		ParentHandle: tpm2.AuthHandle{Handle: th.srk.Handle, Name: th.srk.Name, Auth: tpm2.PasswordAuth(nil)},
		InPrivate:    tpm2.TPM2BPrivate{Buffer: priv},
		InPublic:     tpm2.New2B(tmpl),
	}.Execute(th.tpm)
	if err != nil {
		t.Fatalf("thief: load the credential key: %v", err)
	}
	t.Cleanup(func() { tpm2.FlushContext{FlushHandle: l.ObjectHandle}.Execute(th.tpm) })
	return tpm2.NamedHandle{Handle: l.ObjectHandle, Name: l.Name}
}

// sign asks the TPM for a signature with key under auth.
func (th *thief) sign(key tpm2.NamedHandle, auth tpm2.Session, digest []byte) ([]byte, error) {
	rsp, err := tpm2.Sign{
		KeyHandle: tpm2.AuthHandle{Handle: key.Handle, Name: key.Name, Auth: auth},
		Digest:    tpm2.TPM2BDigest{Buffer: digest},
		InScheme: tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: tpm2.TPMAlgSHA256})},
		Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
	}.Execute(th.tpm)
	if err != nil {
		return nil, err
	}
	sig, err := rsp.Signature.Signature.ECDSA()
	if err != nil {
		return nil, err
	}
	return asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(sig.SignatureR.Buffer), new(big.Int).SetBytes(sig.SignatureS.Buffer)})
}

// pinSession is a policy session that runs TPM2_PolicySecret with the
// PIN object from the stolen state and pin as its password.
func (th *thief) pinSession(pin string) tpm2.Session {
	h := pinHash(pin)
	return tpm2.Policy(tpm2.TPMAlgSHA256, 16, func(tpm transport.TPM, sess tpm2.TPMISHPolicy, nonce tpm2.TPM2BNonce) error {
		l, err := tpm2.Load{
			ParentHandle: tpm2.AuthHandle{Handle: th.srk.Handle, Name: th.srk.Name, Auth: tpm2.PasswordAuth(nil)},
			InPrivate:    tpm2.TPM2BPrivate{Buffer: th.meta[string(keyPINPriv)]},
			InPublic:     tpm2.BytesAs2B[tpm2.TPMTPublic](th.pinPub),
		}.Execute(tpm)
		if err != nil {
			return err
		}
		defer tpm2.FlushContext{FlushHandle: l.ObjectHandle}.Execute(tpm)
		_, err = tpm2.PolicySecret{
			AuthHandle:    tpm2.AuthHandle{Handle: l.ObjectHandle, Name: l.Name, Auth: tpm2.PasswordAuth(h[:])},
			PolicySession: sess,
			NonceTPM:      nonce,
		}.Execute(tpm)
		if err != nil {
			flushHandle(tpm, sess)
		}
		return err
	})
}

// TestVerifyRequiredNeedsPINInTPM: a credProtect-3 credential's key is
// bound to the PIN by a TPM policy. In the attacker's seat, with the
// state directory and the TPM but no daemon: its key loads, yet
// TPM2_Sign without the PIN is refused by the TPM; with the right PIN
// (PolicySecret on the PIN object) it signs; wrong guesses count against
// the TPM's dictionary-attack protection, and the daemon then keeps the
// TPM out of lockout. A credProtect-1 credential signs without a PIN:
// what holding the files and the TPM is worth without UV.
func TestVerifyRequiredNeedsPINInTPM(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			tpm := b.openDefault(t) // 3 failures, one forgiven every 1000 s
			dir := t.TempDir()
			s := openStore(t, tpm, dir)
			rp := rpHash("ssh:")
			if _, err := s.CreateCredential(rp, CredentialOptions{CredProtect: 3}); !errors.Is(err, ErrPINNotSet) {
				t.Fatalf("credProtect 3 without a PIN: %v, want ErrPINNotSet", err)
			}
			if err := s.SetPIN(pinHash("1234")); err != nil {
				t.Fatal(err)
			}
			c3, err := s.CreateCredential(rp, CredentialOptions{CredProtect: 3})
			if err != nil {
				t.Fatal(err)
			}
			c1, err := s.CreateCredential(rp, CredentialOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if !c3.PINBound || c1.PINBound {
				t.Fatalf("PINBound: credProtect 3 %v, credProtect 1 %v", c3.PINBound, c1.PINBound)
			}
			d := sha256.Sum256([]byte("ssh login"))
			if _, err := s.Sign(c3, d[:]); !errors.Is(err, ErrPINRequired) {
				t.Fatalf("Sign of a PIN-bound credential: %v", err)
			}
			if sig, err := s.SignWithPIN(c3, d[:], pinHash("1234")); err != nil || !ecdsa.VerifyASN1(c3.PublicKey, d[:], sig) {
				t.Fatalf("SignWithPIN: %v", err)
			}
			s.Close()

			th := newThief(t, tpm, dir)
			k1 := th.loadKey(rp, c1.ID)
			if sig, err := th.sign(k1, tpm2.PasswordAuth(nil), d[:]); err != nil || !ecdsa.VerifyASN1(c1.PublicKey, d[:], sig) {
				t.Fatalf("thief, credProtect 1 credential: %v", err)
			}
			t.Logf("thief: credProtect 1 credential signs without the PIN")
			flushHandle(tpm, k1.Handle) // the TPM has 3 object slots
			k3 := th.loadKey(rp, c3.ID)
			_, err = th.sign(k3, tpm2.PasswordAuth(nil), d[:])
			var rc tpm2.TPMRC
			if !errors.As(err, &rc) || !errors.Is(err, tpm2.TPMRCAuthUnavailable) {
				t.Fatalf("thief, TPM2_Sign of the credProtect 3 key without the PIN: %v, want TPM_RC_AUTH_UNAVAILABLE", err)
			}
			t.Logf("thief: TPM2_Sign without the PIN refused by the TPM: response code 0x%03x (%v)", uint32(rc), err)
			empty := tpm2.Policy(tpm2.TPMAlgSHA256, 16, func(transport.TPM, tpm2.TPMISHPolicy, tpm2.TPM2BNonce) error { return nil })
			if _, err = th.sign(k3, empty, d[:]); !errors.Is(err, tpm2.TPMRCPolicyFail) {
				t.Fatalf("thief, policy session without PolicySecret: %v, want TPM_RC_POLICY_FAIL", err)
			}
			t.Logf("thief: a policy session without the PIN: %v", err)
			if sig, err := th.sign(k3, th.pinSession("1234"), d[:]); err != nil || !ecdsa.VerifyASN1(c3.PublicKey, d[:], sig) {
				t.Fatalf("thief with the right PIN: %v", err)
			}
			t.Logf("thief: with the right PIN the TPM signs")
			for i := 1; i <= 2; i++ {
				before := readDA(t, tpm).FailedTries
				_, err := th.sign(k3, th.pinSession("0000"), d[:])
				after := readDA(t, tpm)
				t.Logf("thief: wrong PIN guess %d: failedTries %d -> %d (%v)", i, before, after.FailedTries, err)
				if !errors.Is(err, tpm2.TPMRCAuthFail) || after.FailedTries != before+1 {
					t.Fatalf("wrong guess %d: %v, failedTries %d -> %d", i, err, before, after.FailedTries)
				}
			}
			// The daemon does not make the try that would lock the TPM.
			s = openStore(t, tpm, dir)
			var wait *DAWaitError
			if err := s.VerifyPIN(pinHash("1234")); !errors.As(err, &wait) {
				t.Fatalf("daemon after two wrong guesses: %v, want a *DAWaitError", err)
			}
			if st := readDA(t, tpm); st.InLockout {
				t.Fatalf("the TPM is in lockout: %s", st)
			}
			s.Close()
			// (On a TPM without resource manager the daemon flushed the
			// thief's objects to make room: load them again.)
			th = newThief(t, tpm, dir)
			k3 = th.loadKey(rp, c3.ID)
			// The thief is not so careful: its third wrong guess locks the
			// TPM, and then not even the right PIN gets through.
			th.sign(k3, th.pinSession("0000"), d[:])
			st := readDA(t, tpm)
			_, err = th.sign(k3, th.pinSession("1234"), d[:])
			t.Logf("thief: third wrong guess: %s; then the right PIN: %v", st, err)
			if !st.InLockout || !errors.Is(err, tpm2.TPMRCLockout) {
				t.Fatalf("after the thief's third guess: %s, right PIN %v", st, err)
			}
		})
	}
}

// TestPINChangeKeepsBoundCredentials: TPM2_ObjectChangeAuth keeps the PIN
// object's name, so a credProtect-3 credential made before a PIN change
// signs with the new PIN (also after a restart), and no longer with the
// old one.
func TestPINChangeKeepsBoundCredentials(t *testing.T) {
	eachBackend(t, func(t *testing.T, tpm transport.TPM, dir string, s *Store) {
		rp := rpHash("ssh:")
		if err := s.SetPIN(pinHash("1234")); err != nil {
			t.Fatal(err)
		}
		pub := bytes.Clone(s.pinPub)
		c, err := s.CreateCredential(rp, CredentialOptions{CredProtect: 3})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.ChangePIN(pinHash("0000"), pinHash("5678")); !errors.Is(err, ErrPINInvalid) {
			t.Fatalf("ChangePIN with a wrong current PIN: %v", err)
		}
		if err := s.ChangePIN(pinHash("1234"), pinHash("5678")); err != nil {
			t.Fatalf("ChangePIN: %v", err)
		}
		if !bytes.Equal(pub, s.pinPub) {
			t.Fatal("the PIN object's public area (its name) changed")
		}
		d := sha256.Sum256([]byte("after the change"))
		if sig, err := s.SignWithPIN(c, d[:], pinHash("5678")); err != nil || !ecdsa.VerifyASN1(c.PublicKey, d[:], sig) {
			t.Fatalf("credential made before the change, new PIN: %v", err)
		}
		if _, err := s.SignWithPIN(c, d[:], pinHash("1234")); !errors.Is(err, tpm2.TPMRCAuthFail) {
			t.Fatalf("old PIN after the change: %v, want TPM_RC_AUTH_FAIL", err)
		}
		if err := s.VerifyPIN(pinHash("1234")); !errors.Is(err, ErrPINInvalid) {
			t.Fatalf("VerifyPIN old PIN: %v", err)
		}
		s.Close()
		s = openStore(t, tpm, dir)
		o, err := s.OpenCredential(rp, c.ID)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.VerifyPIN(pinHash("5678")); err != nil {
			t.Fatalf("VerifyPIN new PIN after restart: %v", err)
		}
		if sig, err := s.SignWithPIN(o, d[:], pinHash("5678")); err != nil || !ecdsa.VerifyASN1(c.PublicKey, d[:], sig) {
			t.Fatalf("after a restart, new PIN: %v", err)
		}
	})
}

func flushHandle(tpm transport.TPM, h tpm2.TPMHandle) {
	_, _ = tpm2.FlushContext{FlushHandle: h}.Execute(tpm)
}

// TestPINGuessingNeedsLockoutAuth: the TPM's dictionary-attack counter
// limits how fast a thief (the state directory and the TPM) can guess
// the PIN of a credProtect-3 credential only while the TPM's lockout
// password is set. With it empty — as manufactured, and on most PCs set
// up without Windows — TPM2_DictionaryAttackLockReset needs no secret,
// so the thief resets the counter before it would lock and guesses on at
// the TPM's speed. With a lockout password the reset is refused and the
// thief is held to the policy (here 3 failures, one forgiven per 1000 s).
func TestPINGuessingNeedsLockoutAuth(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			tpm := b.openDefault(t)
			dir := t.TempDir()
			s := openStore(t, tpm, dir)
			rp := rpHash("ssh:")
			const pin = "0150"
			if err := s.SetPIN(pinHash(pin)); err != nil {
				t.Fatal(err)
			}
			c3, err := s.CreateCredential(rp, CredentialOptions{CredProtect: 3})
			if err != nil {
				t.Fatal(err)
			}
			s.Close()
			th := newThief(t, tpm, dir)
			k3 := th.loadKey(rp, c3.ID)
			d := sha256.Sum256([]byte("ssh login"))

			// Empty lockout password: every guess of 0000..0199 is made.
			start := time.Now()
			found, resets, guesses := "", 0, 0
			for i := 0; i < 200 && found == ""; i++ {
				guess := fmt.Sprintf("%04d", i)
				guesses++
				if sig, err := th.sign(k3, th.pinSession(guess), d[:]); err == nil {
					if !ecdsa.VerifyASN1(c3.PublicKey, d[:], sig) {
						t.Fatal("bad signature")
					}
					found = guess
					break
				}
				if !readDA(t, tpm).SafeToTry() {
					if err := tpmtest.DALockReset(tpm, nil); err != nil {
						t.Fatalf("DA lock reset with the empty lockout password: %v", err)
					}
					resets++
				}
			}
			if found != pin || resets == 0 {
				t.Fatalf("thief found %q after %d DA lock resets, want %q", found, resets, pin)
			}
			t.Logf("empty lockout password: the thief signs with the credProtect 3 key after guessing the PIN (%d guesses, %d DA lock resets, %s)",
				guesses, resets, time.Since(start).Round(time.Millisecond))

			// A lockout password: the reset is refused, the policy holds.
			if _, err := (tpm2.HierarchyChangeAuth{
				AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHLockout, Auth: tpm2.PasswordAuth(nil)},
				NewAuth:    tpm2.TPM2BAuth{Buffer: []byte("lockout password")},
			}).Execute(tpm); err != nil {
				t.Fatalf("set the lockout password: %v", err)
			}
			for i := 0; readDA(t, tpm).SafeToTry(); i++ {
				if _, err := th.sign(k3, th.pinSession(fmt.Sprintf("9%03d", i)), d[:]); !errors.Is(err, tpm2.TPMRCAuthFail) {
					t.Fatalf("wrong guess: %v", err)
				}
			}
			err = tpmtest.DALockReset(tpm, nil)
			if !errors.Is(err, tpm2.TPMRCAuthFail) && !errors.Is(err, tpm2.TPMRCBadAuth) && !errors.Is(err, tpm2.TPMRCLockout) {
				t.Fatalf("DA lock reset without the lockout password: %v, want it refused", err)
			}
			t.Logf("lockout password set: the thief's DA lock reset is refused (%v); %s", err, readDA(t, tpm))
			if readDA(t, tpm).SafeToTry() {
				t.Fatal("the refused reset lowered the counter")
			}
		})
	}
}
