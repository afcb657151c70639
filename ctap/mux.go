package ctap

import "context"

// CTAPHID command bytes that carry a request for the authenticator
// (CTAP 2.1 §11.2.9.1).
const (
	CmdMsg  byte = 0x03 // CTAPHID_MSG: a U2F APDU
	CmdCBOR byte = 0x10 // CTAPHID_CBOR: a CTAP2 command byte then CBOR
)

// Request is one complete CTAPHID_MSG or CTAPHID_CBOR message, as the
// transport hands it to the command layer.
type Request struct {
	// CID is the CTAPHID channel the request came on: who is asking.
	// State that spans requests (getNextAssertion, credential-management
	// enumeration) belongs to the channel that started it. The transport
	// never passes 0 or the broadcast channel.
	CID uint32
	// Cmd is CmdMsg or CmdCBOR.
	Cmd byte
	// Payload is the message body: an APDU for CmdMsg; for CmdCBOR the
	// CTAP2 command byte then its CBOR parameters. The transport answers
	// framing errors itself (an empty CBOR message is ERR_INVALID_LEN),
	// so handlers see only well-framed messages from it.
	Payload []byte
}

// Handler handles one request and returns the response payload for the
// same command. It is called from a goroutine of its own with a context
// that is cancelled when the client sends CTAPHID_CANCEL or the server
// shuts down; it must then return promptly. The context carries a
// keepalive reporter (see SetKeepalive).
//
// The error is non-nil only when the handler failed in a way the
// transport must turn into an error answer: a Status is sent as a CBOR
// status byte for CmdCBOR, anything else becomes CTAPHID ERR_OTHER.
type Handler interface {
	Handle(ctx context.Context, req Request) ([]byte, error)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, req Request) ([]byte, error)

// Handle calls f.
func (f HandlerFunc) Handle(ctx context.Context, req Request) ([]byte, error) {
	return f(ctx, req)
}

// Mux routes CTAPHID_CBOR to CBOR and CTAPHID_MSG to MSG. A nil handler
// answers as a device without that capability does: CBOR with
// CTAP1_ERR_INVALID_COMMAND, MSG with SW_INS_NOT_SUPPORTED.
type Mux struct {
	CBOR Handler
	MSG  Handler
}

// ISO 7816 status word for an APDU whose instruction is not supported.
var swInsNotSupported = []byte{0x6D, 0x00}

// Handle implements Handler: req.Cmd is CmdMsg or CmdCBOR.
func (m *Mux) Handle(ctx context.Context, req Request) ([]byte, error) {
	switch req.Cmd {
	case CmdCBOR:
		if m.CBOR == nil {
			return []byte{byte(StatusInvalidCommand)}, nil
		}
		return m.CBOR.Handle(ctx, req)
	case CmdMsg:
		if m.MSG == nil {
			return append([]byte(nil), swInsNotSupported...), nil
		}
		return m.MSG.Handle(ctx, req)
	}
	return nil, StatusInvalidCommand
}
