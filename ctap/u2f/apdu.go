package u2f

import "encoding/binary"

// ISO 7816-4 status words used by U2F (FIDO U2F Raw Message Formats §3.3).
const (
	SWNoError                uint16 = 0x9000
	SWConditionsNotSatisfied uint16 = 0x6985 // user presence needed or denied; clients poll
	SWWrongData              uint16 = 0x6A80 // bad key handle, or key handle for another appId
	SWWrongLength            uint16 = 0x6700
	SWWrongP1P2              uint16 = 0x6B00
	SWInsNotSupported        uint16 = 0x6D00
	SWCLANotSupported        uint16 = 0x6E00
	SWUnknown                uint16 = 0x6F00 // internal error, cause logged
)

// Instructions (FIDO U2F Raw Message Formats §4-6).
const (
	insRegister     byte = 0x01
	insAuthenticate byte = 0x02
	insVersion      byte = 0x03
)

// Control bytes (P1) of AUTHENTICATE.
const (
	p1CheckOnly        byte = 0x07
	p1EnforceUP        byte = 0x03
	p1DontEnforceUP    byte = 0x08
	registerDataLength      = 64 // challenge parameter ‖ application parameter
)

// apdu is a parsed command APDU.
type apdu struct {
	cla, ins, p1, p2 byte
	data             []byte
}

// swError is an ISO 7816 status word used as an error inside the package.
type swError uint16

func (e swError) Error() string { return "u2f: status word " + hex16(uint16(e)) }

func hex16(v uint16) string {
	const digits = "0123456789ABCDEF"
	return string([]byte{'0', 'x', digits[v>>12&0xF], digits[v>>8&0xF], digits[v>>4&0xF], digits[v&0xF]})
}

// parseAPDU decodes a command APDU (ISO 7816-4 §5.1; U2F Raw Message
// Formats §3.1). The class and instruction are judged first, whatever the
// framing: a CLA other than 0 is SWCLANotSupported and an unknown INS
// SWInsNotSupported, even when the length bytes are wrong too. The body
// after CLA INS P1 P2 may then take any of these forms:
//
//	(empty)                          case 1
//	Le                               case 2, short
//	00 Le1 Le2                       case 2, extended
//	Lc data [Le]                     cases 3 and 4, short (Lc 1-255)
//	00 Lc1 Lc2 data [Le1 Le2]        cases 3 and 4, extended
//
// In the extended form Lc may be 0: U2F frames a request without data as
// 00 00 00 followed by a two-byte Le, and libfido2, python-fido2 and
// Mozilla's authenticator-rs build every APDU that way (python-fido2's
// VERSION is 00 03 00 00 00 00 00 00 00). Le is accepted and ignored: responses
// are always sent whole. Anything else is SWWrongLength.
func parseAPDU(b []byte) (apdu, error) {
	if len(b) >= 1 && b[0] != 0 {
		return apdu{}, swError(SWCLANotSupported)
	}
	if len(b) >= 2 && !knownINS(b[1]) {
		return apdu{}, swError(SWInsNotSupported)
	}
	if len(b) < 4 {
		return apdu{}, swError(SWWrongLength)
	}
	a := apdu{cla: b[0], ins: b[1], p1: b[2], p2: b[3]}
	body := b[4:]
	switch {
	case len(body) <= 1:
		// Case 1, or case 2 short: no data.
	case body[0] == 0 && len(body) == 3:
		// Case 2, extended: 00 ‖ Le(2), any Le. Three bytes are never
		// an Lc: extended data is at least one byte.
	case body[0] == 0 && len(body) > 3:
		// Extended: 00 ‖ Lc(2) ‖ data ‖ [Le(2)].
		lc := int(binary.BigEndian.Uint16(body[1:3]))
		rest := body[3:]
		if len(rest) != lc && len(rest) != lc+2 {
			return apdu{}, swError(SWWrongLength)
		}
		a.data = rest[:lc]
	case body[0] == 0:
		// 00 ‖ one byte: neither a short Lc (1-255) nor an extended header.
		return apdu{}, swError(SWWrongLength)
	default:
		// Short: Lc(1) ‖ data ‖ [Le(1)].
		lc := int(body[0])
		rest := body[1:]
		if len(rest) != lc && len(rest) != lc+1 {
			return apdu{}, swError(SWWrongLength)
		}
		a.data = rest[:lc]
	}
	return a, nil
}

// knownINS reports whether ins is an instruction the handler serves.
func knownINS(ins byte) bool {
	switch ins {
	case insRegister, insAuthenticate, insVersion:
		return true
	}
	return false
}

// withSW appends the status word to data.
func withSW(data []byte, sw uint16) []byte {
	return binary.BigEndian.AppendUint16(data, sw)
}
