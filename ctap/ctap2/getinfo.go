package ctap2

import (
	"fmt"

	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/ctap/ctap2/pinuv"
)

// AAGUID identifies this authenticator model (503ebbef-6f95-c0e6-7ade-
// 9a5140e35af2). It was generated once at random for the project and
// must never change: relying parties may key metadata on it. It is the
// same on every installation, so it does not distinguish users.
var AAGUID = [16]byte{
	0x50, 0x3e, 0xbb, 0xef, 0x6f, 0x95, 0xc0, 0xe6,
	0x7a, 0xde, 0x9a, 0x51, 0x40, 0xe3, 0x5a, 0xf2,
}

// Limits advertised in getInfo.
const (
	// maxMsgSize is the largest CTAPHID message (128 continuation
	// packets): 64-7 + 128*(64-5).
	maxMsgSize = 7609
	// maxCredentialCountInList bounds allowList/excludeList entries the
	// platform should send in one request.
	maxCredentialCountInList = 64
	// defaultMaxCredentialIDLength is the credential-ID bound (U2F key
	// handles are at most 255 bytes).
	defaultMaxCredentialIDLength = 255
)

// credentialIDLimiter is implemented by stores that know their exact
// credential-ID length bound.
type credentialIDLimiter interface {
	MaxCredentialIDLength() int
}

// getInfo answers authenticatorGetInfo (CTAP 2.1 §6.4). It takes no
// parameters.
func (a *Authenticator) getInfo(raw []byte) ([]byte, error) {
	if len(raw) != 0 {
		return nil, ctap.StatusInvalidLength
	}
	count, err := a.cfg.Store.ResidentCount()
	if err != nil {
		return nil, fmt.Errorf("ctap2: getInfo: resident count: %w", err)
	}
	remaining := max(a.cfg.Store.MaxResidents()-count, 0)
	maxIDLen := defaultMaxCredentialIDLength
	if l, ok := a.cfg.Store.(credentialIDLimiter); ok && l.MaxCredentialIDLength() > 0 {
		maxIDLen = min(l.MaxCredentialIDLength(), defaultMaxCredentialIDLength)
	}
	info := map[int]any{
		0x01: []string{"U2F_V2", "FIDO_2_0", "FIDO_2_1"},
		0x02: []string{"credProtect", "hmac-secret"},
		0x03: AAGUID[:],
		0x04: map[string]bool{
			"rk":        true,
			"up":        true,
			"clientPin": a.cfg.Store.PINIsSet(),
			"credMgmt":  true,
			// The prototype command 0x41, for 2.0-era clients (and
			// Debian 12's libfido2, which sends 0x41 regardless).
			"credentialMgmtPreview": true,
			"pinUvAuthToken":        true,
			"makeCredUvNotRqd":      true,
		},
		0x05: maxMsgSize,
		0x06: []uint64{2, 1},
		0x07: maxCredentialCountInList,
		0x08: maxIDLen,
		0x09: []string{"usb"},
		0x0A: []map[string]any{{"type": "public-key", "alg": -7}},
		0x0C: false, // forcePINChange
		0x0D: pinuv.MinPINLength,
		0x0E: a.cfg.FirmwareVersion,
		0x14: remaining,
	}
	return ctap.EncodeCBOR(info)
}
