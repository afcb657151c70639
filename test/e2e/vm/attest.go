package vm

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/fxamacker/cbor/v2"
)

// ErrBadAttestation is wrapped by every VerifySSHAttestation failure.
var ErrBadAttestation = errors.New("ssh attestation does not verify")

// VerifySSHAttestation checks a file written by `ssh-keygen -O
// write-attestation` (format ssh-sk-attest-v01) for an ecdsa-sk key: the
// authenticator data names the key's application and carries its public
// key, the UP flag is set, and the packed self-attestation signature over
// authData ‖ SHA-256(challenge) verifies with that key. pubLine is the
// key's .pub file, challenge the bytes given with -O challenge=FILE.
func VerifySSHAttestation(att, challenge []byte, pubLine string) error {
	r := sshReader{b: att}
	magic := r.str()
	cert, sig, authDataCBOR := r.str(), r.str(), r.str()
	if r.err != nil || string(magic) != "ssh-sk-attest-v01" {
		return fmt.Errorf("%w: not an ssh-sk-attest-v01 file", ErrBadAttestation)
	}
	if len(cert) != 0 {
		return fmt.Errorf("%w: carries an attestation certificate; self-attestation expected", ErrBadAttestation)
	}
	var authData []byte
	if err := cbor.Unmarshal(authDataCBOR, &authData); err != nil {
		return fmt.Errorf("%w: authenticator data is not a CBOR byte string: %v", ErrBadAttestation, err)
	}
	q, app, err := parseSKECDSAPub(pubLine)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrBadAttestation, err)
	}
	if len(authData) < 37+18 {
		return fmt.Errorf("%w: authenticator data of %d bytes is too short", ErrBadAttestation, len(authData))
	}
	appHash := sha256.Sum256([]byte(app))
	if !bytes.Equal(authData[:32], appHash[:]) {
		return fmt.Errorf("%w: rpIdHash is not SHA-256(%q)", ErrBadAttestation, app)
	}
	flags := authData[32]
	if flags&0x01 == 0 || flags&0x40 == 0 {
		return fmt.Errorf("%w: flags %#02x lack UP or AT", ErrBadAttestation, flags)
	}
	rest := authData[37+16:]
	idLen := int(binary.BigEndian.Uint16(rest))
	if len(rest) < 2+idLen {
		return fmt.Errorf("%w: credential ID overruns the authenticator data", ErrBadAttestation)
	}
	var cose map[int]any
	if _, err := cbor.UnmarshalFirst(rest[2+idLen:], &cose); err != nil {
		return fmt.Errorf("%w: credential public key: %v", ErrBadAttestation, err)
	}
	x, _ := cose[-2].([]byte)
	y, _ := cose[-3].([]byte)
	if len(x) != 32 || len(y) != 32 {
		return fmt.Errorf("%w: credential public key is not a P-256 COSE key", ErrBadAttestation)
	}
	point := append(append([]byte{4}, x...), y...)
	if !bytes.Equal(q, point) {
		return fmt.Errorf("%w: attested public key differs from the .pub key", ErrBadAttestation)
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), point)
	if err != nil {
		return fmt.Errorf("%w: credential public key: %v", ErrBadAttestation, err)
	}
	cdh := sha256.Sum256(challenge)
	digest := sha256.Sum256(append(append([]byte{}, authData...), cdh[:]...))
	if !ecdsa.VerifyASN1(pub, digest[:], sig) {
		return fmt.Errorf("%w: packed self-attestation signature is invalid", ErrBadAttestation)
	}
	return nil
}

// parseSKECDSAPub returns the EC point and application of an
// sk-ecdsa-sha2-nistp256@openssh.com public key line.
func parseSKECDSAPub(line string) (q []byte, app string, err error) {
	f := strings.Fields(line)
	if len(f) < 2 || f[0] != "sk-ecdsa-sha2-nistp256@openssh.com" {
		return nil, "", errors.New("not an sk-ecdsa-sha2-nistp256@openssh.com key")
	}
	blob, err := base64.StdEncoding.DecodeString(f[1])
	if err != nil {
		return nil, "", err
	}
	r := sshReader{b: blob}
	typ, curve, q, appB := r.str(), r.str(), r.str(), r.str()
	if r.err != nil || string(typ) != f[0] || string(curve) != "nistp256" {
		return nil, "", errors.New("malformed sk-ecdsa public key")
	}
	return q, string(appB), nil
}

// sshReader reads SSH wire-format strings.
type sshReader struct {
	b   []byte
	err error
}

func (r *sshReader) str() []byte {
	if r.err != nil {
		return nil
	}
	if len(r.b) < 4 {
		r.err = errors.New("truncated")
		return nil
	}
	n := binary.BigEndian.Uint32(r.b)
	if uint64(len(r.b)-4) < uint64(n) {
		r.err = errors.New("truncated")
		return nil
	}
	s := r.b[4 : 4+n]
	r.b = r.b[4+n:]
	return s
}
