package ctap

import "context"

// CTAPHID command bytes that carry a request for the authenticator
// (CTAP 2.1 §11.2.9.1).
const (
	CmdMsg  byte = 0x03 // CTAPHID_MSG: a U2F APDU
	CmdCBOR byte = 0x10 // CTAPHID_CBOR: a CTAP2 command byte then CBOR
)

// RequestHandler handles one request payload and returns the response
// payload. It must honour ctx: when ctx is cancelled (CTAPHID_CANCEL, or
// shutdown) it returns promptly.
type RequestHandler interface {
	HandleRequest(ctx context.Context, req []byte) ([]byte, error)
}

// Mux routes CTAPHID_CBOR to CBOR and CTAPHID_MSG to MSG. A nil handler
// answers as a device without that capability does: CBOR with
// CTAP1_ERR_INVALID_COMMAND, MSG with SW_INS_NOT_SUPPORTED.
type Mux struct {
	CBOR RequestHandler
	MSG  RequestHandler
}

// ISO 7816 status word for an APDU whose instruction is not supported.
var swInsNotSupported = []byte{0x6D, 0x00}

// Handle implements the CTAPHID handler contract: cmd is CmdMsg or CmdCBOR.
// The error is non-nil only when the handler failed in a way the
// transport must turn into a CTAPHID error frame.
func (m *Mux) Handle(ctx context.Context, cmd byte, payload []byte) ([]byte, error) {
	switch cmd {
	case CmdCBOR:
		if m.CBOR == nil {
			return []byte{byte(StatusInvalidCommand)}, nil
		}
		return m.CBOR.HandleRequest(ctx, payload)
	case CmdMsg:
		if m.MSG == nil {
			return append([]byte(nil), swInsNotSupported...), nil
		}
		return m.MSG.HandleRequest(ctx, payload)
	}
	return nil, StatusInvalidCommand
}
