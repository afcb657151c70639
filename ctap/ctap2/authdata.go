package ctap2

import (
	"crypto/ecdsa"
	"encoding/binary"

	"github.com/tpm-fido/tpm-fido/ctap/cose"
)

// authenticatorData flags (WebAuthn §6.1).
const (
	flagUP = 0x01 // user present
	flagUV = 0x04 // user verified
	flagAT = 0x40 // attested credential data included
	flagED = 0x80 // extension data included
)

// authData is authenticatorData before encoding.
type authData struct {
	rpIDHash [32]byte
	flags    byte
	counter  uint32
	// attested credential data, when credID is non-nil
	credID []byte
	pub    *ecdsa.PublicKey
	// extension outputs, already CBOR-encoded (nil: none)
	extensions []byte
}

// encode returns rpIdHash ‖ flags ‖ signCount ‖ [attestedCredentialData]
// ‖ [extensions], setting AT and ED from what is present.
func (d authData) encode() ([]byte, error) {
	flags := d.flags &^ (flagAT | flagED)
	if d.credID != nil {
		flags |= flagAT
	}
	if d.extensions != nil {
		flags |= flagED
	}
	out := make([]byte, 0, 37+16+2+len(d.credID)+77+len(d.extensions))
	out = append(out, d.rpIDHash[:]...)
	out = append(out, flags)
	out = binary.BigEndian.AppendUint32(out, d.counter)
	if d.credID != nil {
		key, err := cose.EncodeES256(d.pub)
		if err != nil {
			return nil, err
		}
		out = append(out, AAGUID[:]...)
		out = binary.BigEndian.AppendUint16(out, uint16(len(d.credID)))
		out = append(out, d.credID...)
		out = append(out, key...)
	}
	return append(out, d.extensions...), nil
}
