// Package ctaphid implements the CTAPHID transport (CTAP 2.1 §11.2): it
// reassembles 64-byte HID reports into messages, allocates channels,
// answers INIT, PING, WINK, LOCK and CANCEL itself, sends KEEPALIVE while
// a request is outstanding, and hands MSG and CBOR requests to a Handler.
package ctaphid

import "context"

// ReportSize is the size of every CTAPHID report, in and out.
const ReportSize = 64

// ReportDevice is the seam between a HID transport (uhid, a socket, an
// in-memory pipe) and the CTAPHID server: it moves whole 64-byte reports.
type ReportDevice interface {
	// ReadReport blocks until the host sends an output report, copies it
	// into p (len(p) >= ReportSize) and returns its length. After Close it
	// returns an error wrapping net.ErrClosed or os.ErrClosed.
	ReadReport(p []byte) (int, error)
	// WriteReport sends one input report (len(p) == ReportSize) to the host.
	WriteReport(p []byte) error
	// Close releases the device and unblocks a pending ReadReport.
	Close() error
}

// Handler processes one MSG (cmd 0x03) or CBOR (cmd 0x10) request. It is
// called from a goroutine of its own with a context that is cancelled
// when the client sends CTAPHID_CANCEL or the server shuts down, and that
// carries a keepalive reporter (see ctap.SetKeepalive). The returned bytes
// are the response payload for the same command.
type Handler interface {
	Handle(ctx context.Context, cmd byte, payload []byte) ([]byte, error)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, cmd byte, payload []byte) ([]byte, error)

// Handle calls f.
func (f HandlerFunc) Handle(ctx context.Context, cmd byte, payload []byte) ([]byte, error) {
	return f(ctx, cmd, payload)
}
