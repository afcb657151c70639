package ctaphidtest

// The FIDO2 platform half of the test client (see the package comment).

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/fxamacker/cbor/v2"

	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/ctap/ctaphid"
)

// CTAP2 command bytes (CTAP 2.1 §6).
const (
	CmdMakeCredential byte = 0x01
	CmdGetAssertion   byte = 0x02
	CmdGetInfo        byte = 0x04
	CmdClientPIN      byte = 0x06
	CmdCredMgmt       byte = 0x0A
)

// ErrBusy is returned when the device answered CTAPHID_ERROR
// ERR_CHANNEL_BUSY; the channel has been resynchronised and the caller
// may retry.
var ErrBusy = errors.New("ctaphidtest: channel busy")

// HIDError is a CTAPHID_ERROR frame other than CHANNEL_BUSY.
type HIDError byte

func (e HIDError) Error() string { return fmt.Sprintf("ctaphidtest: CTAPHID error 0x%02x", byte(e)) }

var ctap2Enc, _ = cbor.CTAP2EncOptions().EncMode()

// Channel is one CTAPHID channel of a client.
type Channel struct {
	C   *Client
	CID uint32
}

// OpenChannel allocates a channel with a broadcast INIT carrying a
// random nonce, so that concurrent clients sharing a transport (every
// client sees every report, as with hidraw) never take each other's
// channel. Unlike Init it passes over any other frame on the broadcast
// channel while it waits.
func (c *Client) OpenChannel() (*Channel, error) {
	payload, err := initOn(c, ctaphid.BroadcastCID)
	if err != nil {
		return nil, err
	}
	return &Channel{C: c, CID: binary.BigEndian.Uint32(payload[8:12])}, nil
}

// initOn sends INIT on cid with a fresh nonce and reads until the answer
// carrying that nonce; everything before it on cid is discarded.
func initOn(c *Client, cid uint32) ([]byte, error) {
	nonce := make([]byte, 8)
	_, _ = rand.Read(nonce)
	if err := c.Send(cid, ctaphid.CmdInit, nonce); err != nil {
		return nil, err
	}
	for {
		f, err := c.RecvOn(cid)
		if err != nil {
			return nil, err
		}
		if f.Cmd == ctaphid.CmdInit && len(f.Payload) >= 17 && string(f.Payload[:8]) == string(nonce) {
			return f.Payload, nil
		}
	}
}

// Close closes the client's connection.
func (ch *Channel) Close() error { return ch.C.Close() }

// Resync sends INIT on the channel and discards every frame before its
// answer. The server handles a channel's reports in order and always
// answers INIT, so afterwards no stale frame (such as a second
// CHANNEL_BUSY for a continuation packet of a refused message) can be
// taken for the answer to the next request.
func (ch *Channel) Resync() error {
	_, err := initOn(ch.C, ch.CID)
	return err
}

// Call sends a CTAP2 command with params (nil: none) and returns the
// status and the raw CBOR body.
func (ch *Channel) Call(cmd byte, params any) (ctap.Status, []byte, error) {
	req := []byte{cmd}
	if params != nil {
		b, err := ctap2Enc.Marshal(params)
		if err != nil {
			return 0, nil, err
		}
		req = append(req, b...)
	}
	f, err := ch.C.Transact(ch.CID, ctaphid.CmdCBOR, req)
	if err != nil {
		return 0, nil, err
	}
	if f.Cmd == ctaphid.CmdError {
		if len(f.Payload) > 0 && f.Payload[0] == ctaphid.ErrChannelBusy {
			if err := ch.Resync(); err != nil {
				return 0, nil, fmt.Errorf("ctaphidtest: resync after CHANNEL_BUSY: %w", err)
			}
			return 0, nil, ErrBusy
		}
		if len(f.Payload) > 0 {
			return 0, nil, HIDError(f.Payload[0])
		}
		return 0, nil, HIDError(0)
	}
	if f.Cmd != ctaphid.CmdCBOR || len(f.Payload) == 0 {
		return 0, nil, fmt.Errorf("ctaphidtest: unexpected response cmd 0x%02x len %d", f.Cmd, len(f.Payload))
	}
	return ctap.Status(f.Payload[0]), f.Payload[1:], nil
}

// CallOK is Call that turns a non-OK status into an error and decodes
// the body into out (when out is not nil).
func (ch *Channel) CallOK(cmd byte, params, out any) error {
	st, body, err := ch.Call(cmd, params)
	if err != nil {
		return err
	}
	if st != ctap.StatusOK {
		return fmt.Errorf("ctaphidtest: command 0x%02x: %w", cmd, st)
	}
	if out != nil {
		if err := cbor.Unmarshal(body, out); err != nil {
			return fmt.Errorf("ctaphidtest: command 0x%02x response: %w", cmd, err)
		}
	}
	return nil
}

// MakeCredentialParams builds makeCredential parameters (CTAP 2.1 §6.1).
// token, when not nil, is a pinUvAuthToken (protocol 2).
func MakeCredentialParams(rpID string, userID []byte, cdh []byte, rk, hmacSecret bool, token []byte) map[int]any {
	m := map[int]any{
		1: cdh,
		2: map[string]any{"id": rpID, "name": rpID},
		3: map[string]any{"id": userID, "name": "user", "displayName": "User"},
		4: []map[string]any{{"alg": -7, "type": "public-key"}},
	}
	if rk {
		m[7] = map[string]bool{"rk": true}
	}
	if hmacSecret {
		m[6] = map[string]any{"hmac-secret": true}
	}
	if token != nil {
		m[8] = Authenticate(2, token, cdh)
		m[9] = 2
	}
	return m
}

// AllowList builds a getAssertion allowList.
func AllowList(ids ...[]byte) []map[string]any {
	l := make([]map[string]any, len(ids))
	for i, id := range ids {
		l[i] = map[string]any{"id": id, "type": "public-key"}
	}
	return l
}

// GetAssertionParams builds getAssertion parameters (CTAP 2.1 §6.2).
func GetAssertionParams(rpID string, cdh []byte, up bool, allow ...[]byte) map[int]any {
	m := map[int]any{1: rpID, 2: cdh}
	if len(allow) > 0 {
		m[3] = AllowList(allow...)
	}
	if !up {
		m[5] = map[string]bool{"up": false}
	}
	return m
}

// AuthData is a parsed authenticatorData (WebAuthn §6.1).
type AuthData struct {
	RPIDHash   [32]byte
	Flags      byte
	Counter    uint32
	CredID     []byte // with attested credential data
	Extensions map[string]any
	Raw        []byte
}

// ParseAuthData parses authenticator data.
func ParseAuthData(b []byte) (*AuthData, error) {
	if len(b) < 37 {
		return nil, fmt.Errorf("ctaphidtest: authData of %d bytes", len(b))
	}
	a := &AuthData{Flags: b[32], Counter: binary.BigEndian.Uint32(b[33:37]), Raw: b}
	copy(a.RPIDHash[:], b)
	rest := b[37:]
	if a.Flags&0x40 != 0 {
		if len(rest) < 18 {
			return nil, errors.New("ctaphidtest: short attested credential data")
		}
		n := int(binary.BigEndian.Uint16(rest[16:18]))
		if len(rest) < 18+n {
			return nil, errors.New("ctaphidtest: short credential ID")
		}
		a.CredID = append([]byte(nil), rest[18:18+n]...)
		var pk cbor.RawMessage
		r, err := cbor.UnmarshalFirst(rest[18+n:], &pk)
		if err != nil {
			return nil, fmt.Errorf("ctaphidtest: credential public key: %w", err)
		}
		rest = r
	}
	if a.Flags&0x80 != 0 {
		if err := cbor.Unmarshal(rest, &a.Extensions); err != nil {
			return nil, fmt.Errorf("ctaphidtest: extensions: %w", err)
		}
	}
	return a, nil
}

// MakeCredential registers a credential and returns its ID.
func (ch *Channel) MakeCredential(params map[int]any) (*AuthData, error) {
	var r struct {
		AuthData []byte `cbor:"2,keyasint"`
	}
	if err := ch.CallOK(CmdMakeCredential, params, &r); err != nil {
		return nil, err
	}
	return ParseAuthData(r.AuthData)
}

// Assertion is a parsed getAssertion response.
type Assertion struct {
	CredID    []byte
	AuthData  *AuthData
	Signature []byte
}

// GetAssertion runs getAssertion with params.
func (ch *Channel) GetAssertion(params map[int]any) (*Assertion, error) {
	var r struct {
		Cred struct {
			ID []byte `cbor:"id"`
		} `cbor:"1,keyasint"`
		AuthData []byte `cbor:"2,keyasint"`
		Sig      []byte `cbor:"3,keyasint"`
	}
	if err := ch.CallOK(CmdGetAssertion, params, &r); err != nil {
		return nil, err
	}
	ad, err := ParseAuthData(r.AuthData)
	if err != nil {
		return nil, err
	}
	return &Assertion{CredID: r.Cred.ID, AuthData: ad, Signature: r.Sig}, nil
}

// COSEKey is a P-256 key-agreement key in COSE form.
type COSEKey struct {
	Kty int64  `cbor:"1,keyasint"`
	Alg int64  `cbor:"3,keyasint"`
	Crv int64  `cbor:"-1,keyasint"`
	X   []byte `cbor:"-2,keyasint"`
	Y   []byte `cbor:"-3,keyasint"`
}

// Session is one key agreement of PIN/UV auth protocol 1 or 2, the
// platform's side (CTAP 2.1 §6.5.6, §6.5.7).
type Session struct {
	Proto  uint64
	Key    COSEKey // the platform's public key, for requests
	Shared []byte  // protocol 1: SHA-256(Z), 32 bytes; 2: HMAC key ‖ AES key, 64
}

// NewSession runs the platform's half of key agreement against the
// authenticator's key-agreement key peer (kty 2, alg -25, crv 1) with a
// fresh platform key.
func NewSession(proto uint64, peer COSEKey) (*Session, error) {
	if proto != 1 && proto != 2 {
		return nil, fmt.Errorf("ctaphidtest: PIN/UV auth protocol %d", proto)
	}
	if peer.Kty != 2 || peer.Alg != -25 || peer.Crv != 1 || len(peer.X) != 32 || len(peer.Y) != 32 {
		return nil, fmt.Errorf("ctaphidtest: bad key-agreement key %+v", peer)
	}
	pub, err := ecdh.P256().NewPublicKey(append(append([]byte{4}, peer.X...), peer.Y...))
	if err != nil {
		return nil, fmt.Errorf("ctaphidtest: key-agreement key: %w", err)
	}
	priv, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	z, err := priv.ECDH(pub)
	if err != nil {
		return nil, err
	}
	s := &Session{Proto: proto}
	if proto == 1 {
		h := sha256.Sum256(z)
		s.Shared = h[:]
	} else {
		salt := make([]byte, 32)
		hk, err := hkdf.Key(sha256.New, z, salt, "CTAP2 HMAC key", 32)
		if err != nil {
			return nil, err
		}
		ak, err := hkdf.Key(sha256.New, z, salt, "CTAP2 AES key", 32)
		if err != nil {
			return nil, err
		}
		s.Shared = append(hk, ak...)
	}
	b := priv.PublicKey().Bytes()
	s.Key = COSEKey{Kty: 2, Alg: -25, Crv: 1, X: b[1:33], Y: b[33:65]}
	return s, nil
}

// KeyAgreement runs clientPIN getKeyAgreement for protocol 2 and derives
// a shared secret.
func (ch *Channel) KeyAgreement() (*Session, error) {
	var r struct {
		Key COSEKey `cbor:"1,keyasint"`
	}
	if err := ch.CallOK(CmdClientPIN, map[int]any{1: 2, 2: 2}, &r); err != nil {
		return nil, err
	}
	return NewSession(2, r.Key)
}

// aesKey is the AES-256 key: protocol 1's whole secret, protocol 2's
// second half.
func (s *Session) aesKey() []byte {
	if s.Proto == 1 {
		return s.Shared
	}
	return s.Shared[32:]
}

// Encrypt is the protocol's encrypt: AES-256-CBC of whole blocks, with an
// all-zero IV (protocol 1) or a random IV sent first (protocol 2).
func (s *Session) Encrypt(pt []byte) []byte {
	blk, _ := aes.NewCipher(s.aesKey())
	iv := make([]byte, aes.BlockSize)
	if s.Proto == 2 {
		_, _ = rand.Read(iv)
	}
	out := make([]byte, len(pt))
	cipher.NewCBCEncrypter(blk, iv).CryptBlocks(out, pt)
	if s.Proto == 2 {
		return append(iv, out...)
	}
	return out
}

// Decrypt is the protocol's decrypt.
func (s *Session) Decrypt(ct []byte) ([]byte, error) {
	iv := make([]byte, aes.BlockSize)
	if s.Proto == 2 {
		if len(ct) < 2*aes.BlockSize {
			return nil, fmt.Errorf("ctaphidtest: protocol 2 ciphertext of %d bytes", len(ct))
		}
		iv, ct = ct[:aes.BlockSize], ct[aes.BlockSize:]
	}
	if len(ct) == 0 || len(ct)%aes.BlockSize != 0 {
		return nil, fmt.Errorf("ctaphidtest: ciphertext of %d bytes", len(ct))
	}
	blk, _ := aes.NewCipher(s.aesKey())
	out := make([]byte, len(ct))
	cipher.NewCBCDecrypter(blk, iv).CryptBlocks(out, ct)
	return out, nil
}

// Auth is the protocol's authenticate with the session's shared secret.
func (s *Session) Auth(msg []byte) []byte { return Authenticate(s.Proto, s.Shared, msg) }

// Authenticate is protocol proto's authenticate with key, a shared secret
// or a pinUvAuthToken: HMAC-SHA-256 keyed with its first 32 bytes (a
// protocol 2 shared secret's HMAC key), cut to 16 bytes for protocol 1.
func Authenticate(proto uint64, key, msg []byte) []byte {
	if len(key) > 32 {
		key = key[:32]
	}
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	if proto == 1 {
		return m.Sum(nil)[:16]
	}
	return m.Sum(nil)
}

// PINHash is LEFT(SHA-256(pin), 16).
func PINHash(pin string) []byte {
	h := sha256.Sum256([]byte(pin))
	return h[:16]
}

// PaddedPIN is pin padded with zeros to 64 bytes (or to whole blocks when
// longer), as setPIN and changePIN send it.
func PaddedPIN(pin []byte) []byte {
	out := make([]byte, max(64, (len(pin)+15)/16*16))
	copy(out, pin)
	return out
}

// SetPINRequest builds clientPIN setPIN (0x03) for pin.
func SetPINRequest(s *Session, pin []byte) map[int]any {
	newPinEnc := s.Encrypt(PaddedPIN(pin))
	return map[int]any{1: s.Proto, 2: 3, 3: s.Key, 4: s.Auth(newPinEnc), 5: newPinEnc}
}

// ChangePINRequest builds clientPIN changePIN (0x04) from cur to next.
func ChangePINRequest(s *Session, cur, next string) map[int]any {
	newPinEnc := s.Encrypt(PaddedPIN([]byte(next)))
	pinHashEnc := s.Encrypt(PINHash(cur))
	return map[int]any{1: s.Proto, 2: 4, 3: s.Key,
		4: s.Auth(append(append([]byte(nil), newPinEnc...), pinHashEnc...)), 5: newPinEnc, 6: pinHashEnc}
}

// TokenRequest builds getPinUvAuthTokenUsingPinWithPermissions (0x09)
// for pin, with rpId when rpID is not empty.
func TokenRequest(s *Session, pin string, perms uint8, rpID string) map[int]any {
	m := map[int]any{1: s.Proto, 2: 9, 3: s.Key, 6: s.Encrypt(PINHash(pin)), 9: perms}
	if rpID != "" {
		m[10] = rpID
	}
	return m
}

// LegacyTokenRequest builds the CTAP 2.0 getPinToken (0x05) for pin.
func LegacyTokenRequest(s *Session, pin string) map[int]any {
	return map[int]any{1: s.Proto, 2: 5, 3: s.Key, 6: s.Encrypt(PINHash(pin))}
}

// SetPIN sets the first PIN (clientPIN setPIN, protocol 2).
func (ch *Channel) SetPIN(pin string) error {
	s, err := ch.KeyAgreement()
	if err != nil {
		return err
	}
	return ch.CallOK(CmdClientPIN, SetPINRequest(s, []byte(pin)), nil)
}

// Token gets a pinUvAuthToken with perms (bound to rpID when not empty)
// and returns it in clear.
func (ch *Channel) Token(pin string, perms uint8, rpID string) ([]byte, error) {
	s, err := ch.KeyAgreement()
	if err != nil {
		return nil, err
	}
	return ch.TokenWith(s, pin, perms, rpID)
}

// TokenWith is Token over an existing key agreement.
func (ch *Channel) TokenWith(s *Session, pin string, perms uint8, rpID string) ([]byte, error) {
	var r struct {
		Token []byte `cbor:"2,keyasint"`
	}
	if err := ch.CallOK(CmdClientPIN, TokenRequest(s, pin, perms, rpID), &r); err != nil {
		return nil, err
	}
	return s.Decrypt(r.Token)
}

// PINRetries returns clientPIN getPINRetries' count.
func (ch *Channel) PINRetries() (int, error) {
	n, _, err := ch.PINRetriesState()
	return n, err
}

// PINRetriesState returns clientPIN getPINRetries' count and
// powerCycleState (false when absent).
func (ch *Channel) PINRetriesState() (retries int, powerCycle bool, err error) {
	var r struct {
		Retries    int  `cbor:"3,keyasint"`
		PowerCycle bool `cbor:"4,keyasint"`
	}
	err = ch.CallOK(CmdClientPIN, map[int]any{1: 2, 2: 1}, &r)
	return r.Retries, r.PowerCycle, err
}

// HMACSecretExt builds the hmac-secret getAssertion input for salt
// (32 or 64 bytes) under session s.
func HMACSecretExt(s *Session, salt []byte) map[string]any {
	se := s.Encrypt(salt)
	return map[string]any{"hmac-secret": map[int]any{1: s.Key, 2: se, 3: s.Auth(se), 4: 2}}
}

// Encode encodes v as canonical CTAP2 CBOR.
func Encode(v any) ([]byte, error) { return ctap2Enc.Marshal(v) }
