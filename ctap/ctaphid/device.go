// Package ctaphid implements the CTAPHID transport (CTAP 2.1 §11.2): it
// reassembles 64-byte HID reports into messages, allocates channels,
// answers INIT, PING, WINK, LOCK and CANCEL itself, sends KEEPALIVE while
// a request is outstanding, and hands MSG and CBOR requests to a Handler.
package ctaphid

import "github.com/tpm-fido/tpm-fido/ctap"

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

// Handler processes one MSG or CBOR request (see ctap.Handler for the
// contract). The server passes the channel the request came on in
// ctap.Request.CID.
type Handler = ctap.Handler
