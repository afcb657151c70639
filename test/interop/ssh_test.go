//go:build cgo && !nolibfido2

package interop

import (
	"crypto/sha256"
	"encoding/asn1"
	"encoding/binary"
	"math/big"
	"testing"

	"golang.org/x/crypto/ssh"
)

// sshSKPublicKey builds an sk-ecdsa-sha2-nistp256@openssh.com public key
// (OpenSSH PROTOCOL.u2f) from an ES256 X ‖ Y and the application.
func sshSKPublicKey(t *testing.T, xy []byte, application string) ssh.PublicKey {
	t.Helper()
	if len(xy) != 64 {
		t.Fatalf("public key of %d bytes", len(xy))
	}
	blob := ssh.Marshal(struct {
		Type, Curve string
		Q           []byte
		Application string
	}{"sk-ecdsa-sha2-nistp256@openssh.com", "nistp256", append([]byte{4}, xy...), application})
	pub, err := ssh.ParsePublicKey(blob)
	if err != nil {
		t.Fatalf("ssh.ParsePublicKey: %v", err)
	}
	return pub
}

// sshSKSignature turns a getAssertion result into the signature OpenSSH
// sends: the ECDSA (r, s) as SSH mpints, then flags ‖ counter.
func sshSKSignature(t *testing.T, authData, der []byte) *ssh.Signature {
	t.Helper()
	var rs struct{ R, S *big.Int }
	if rest, err := asn1.Unmarshal(der, &rs); err != nil || len(rest) != 0 {
		t.Fatalf("signature is not DER ECDSA: %v", err)
	}
	if len(authData) < 37 {
		t.Fatalf("authenticator data of %d bytes", len(authData))
	}
	return &ssh.Signature{
		Format: "sk-ecdsa-sha2-nistp256@openssh.com",
		Blob:   ssh.Marshal(rs),
		Rest:   authData[32:37], // flags(1) ‖ counter(4)
	}
}

func TestSSHSecurityKeySignature(t *testing.T) {
	d := startDaemon(t)
	dev := d.open(t)
	const app = "ssh:"
	c := makeCred(t, dev, CredRequest{RPID: app, UserName: "openssh", UserID: make([]byte, 32), CredProtect: CredProtUVOptWithID, RK: true})
	pub := sshSKPublicKey(t, c.PubKey, app)
	if pub.Type() != ssh.KeyAlgoSKECDSA256 {
		t.Fatalf("key type %s", pub.Type())
	}
	t.Logf("authorized_keys: %s", ssh.MarshalAuthorizedKey(pub))

	// What ssh signs during user authentication: OpenSSH passes SHA-256 of
	// the data as the clientDataHash.
	msg := []byte("session id ‖ SSH_MSG_USERAUTH_REQUEST ... as sshd would check it")
	h := sha256.Sum256(msg)
	as, err := dev.GetAssert(AssertRequest{RPID: app, ClientDataHash: h[:], AllowList: [][]byte{c.ID}, UP: OptTrue})
	if err != nil || len(as) != 1 {
		t.Fatalf("getAssertion: %v", err)
	}
	raw := unwrapAuthData(t, as[0].AuthData)
	if len(raw) != 37 {
		t.Errorf("an SSH assertion's authenticator data has %d bytes, want 37 (no extensions)", len(raw))
	}
	sig := sshSKSignature(t, raw, as[0].Sig)
	if err := pub.Verify(msg, sig); err != nil {
		t.Fatalf("ssh.PublicKey.Verify: %v", err)
	}
	if sig.Rest[0]&flagUP == 0 || binary.BigEndian.Uint32(sig.Rest[1:]) == 0 {
		t.Errorf("flags %#x counter %d", sig.Rest[0], binary.BigEndian.Uint32(sig.Rest[1:]))
	}
	// sshd rejects the signature for other data, or with other flags.
	if err := pub.Verify([]byte("other data"), sig); err == nil {
		t.Error("the signature verified for other data")
	}
	forged := *sig
	forged.Rest = append([]byte{sig.Rest[0] ^ flagUV}, sig.Rest[1:]...)
	if err := pub.Verify(msg, &forged); err == nil {
		t.Error("the signature verified with altered flags")
	}
	// A key for another application does not verify it.
	if err := sshSKPublicKey(t, c.PubKey, "ssh:other").Verify(msg, sig); err == nil {
		t.Error("the signature verified under another application")
	}
}

// TestSSHVerifyRequired is `ssh-keygen -O resident -O verify-required`:
// credProtect 3 and a PIN; the signature carries UP and UV, which sshd's
// verify-required policy checks.
func TestSSHVerifyRequired(t *testing.T) {
	d := startDaemon(t)
	dev := d.open(t)
	const app, pin = "ssh:work", "123456"
	if err := dev.SetPIN(pin); err != nil {
		t.Fatalf("fido_dev_set_pin: %v", err)
	}
	c := makeCred(t, dev, CredRequest{RPID: app, UserName: "openssh", UserID: make([]byte, 32), CredProtect: CredProtUVRequired, RK: true, PIN: pin})
	pub := sshSKPublicKey(t, c.PubKey, app)
	msg := []byte("verify-required login")
	h := sha256.Sum256(msg)
	// Without UV the credential is invisible, as ssh sees it without a PIN.
	_, err := dev.GetAssert(AssertRequest{RPID: app, ClientDataHash: h[:], AllowList: [][]byte{c.ID}, UP: OptTrue})
	wantErr(t, "verify-required key without a PIN", err, ErrNoCredentials)
	as, err := dev.GetAssert(AssertRequest{RPID: app, ClientDataHash: h[:], AllowList: [][]byte{c.ID}, UP: OptTrue, UV: OptTrue, PIN: pin})
	if err != nil || len(as) != 1 {
		t.Fatalf("getAssertion with PIN: %v", err)
	}
	sig := sshSKSignature(t, unwrapAuthData(t, as[0].AuthData), as[0].Sig)
	if err := pub.Verify(msg, sig); err != nil {
		t.Fatalf("ssh.PublicKey.Verify: %v", err)
	}
	if sig.Rest[0]&(flagUP|flagUV) != flagUP|flagUV {
		t.Errorf("verify-required signature flags %#x, want UP|UV", sig.Rest[0])
	}
}
