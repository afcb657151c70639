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

// parseAPDU decodes a command APDU in short or extended length encoding
// (ISO 7816-4 §5.1; U2F Raw Message Formats §3.1). The expected response
// length (Le) is accepted and ignored: responses are always sent whole.
// Any framing that does not add up is SWWrongLength.
func parseAPDU(b []byte) (apdu, error) {
	if len(b) < 4 {
		return apdu{}, swError(SWWrongLength)
	}
	a := apdu{cla: b[0], ins: b[1], p1: b[2], p2: b[3]}
	body := b[4:]
	switch {
	case len(body) == 0:
		// Case 1: no data, no Le.
	case len(body) == 1:
		// Case 2 short: Le only.
	case body[0] == 0 && len(body) == 2:
		return apdu{}, swError(SWWrongLength)
	case body[0] == 0 && len(body) == 3:
		// Case 2 extended: 0x00 ‖ Le(2).
	case body[0] == 0:
		// Case 3/4 extended: 0x00 ‖ Lc(2) ‖ data ‖ [Le(2)].
		lc := int(binary.BigEndian.Uint16(body[1:3]))
		if lc == 0 {
			return apdu{}, swError(SWWrongLength)
		}
		rest := body[3:]
		if len(rest) != lc && len(rest) != lc+2 {
			return apdu{}, swError(SWWrongLength)
		}
		a.data = rest[:lc]
	default:
		// Case 3/4 short: Lc(1) ‖ data ‖ [Le(1)].
		lc := int(body[0])
		rest := body[1:]
		if len(rest) != lc && len(rest) != lc+1 {
			return apdu{}, swError(SWWrongLength)
		}
		a.data = rest[:lc]
	}
	return a, nil
}

// withSW appends the status word to data.
func withSW(data []byte, sw uint16) []byte {
	return binary.BigEndian.AppendUint16(data, sw)
}
