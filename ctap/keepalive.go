package ctap

import "context"

// KeepaliveStatus is the status byte a CTAPHID KEEPALIVE frame carries
// (CTAP 2.1 §11.2.9.2.1).
type KeepaliveStatus byte

// Keepalive statuses.
const (
	KeepaliveProcessing KeepaliveStatus = 1 // STATUS_PROCESSING
	KeepaliveUPNeeded   KeepaliveStatus = 2 // STATUS_UPNEEDED
)

type keepaliveKey struct{}

// WithKeepalive returns a context through which a handler reports what it
// is waiting for. The transport installs it; report is called from the
// handler's goroutine and must not block.
func WithKeepalive(ctx context.Context, report func(KeepaliveStatus)) context.Context {
	return context.WithValue(ctx, keepaliveKey{}, report)
}

// SetKeepalive tells the transport what the request is waiting for, so
// the KEEPALIVE frames it sends carry that status. It does nothing when
// ctx carries no reporter (unit tests, or a transport without keepalive).
func SetKeepalive(ctx context.Context, s KeepaliveStatus) {
	if f, ok := ctx.Value(keepaliveKey{}).(func(KeepaliveStatus)); ok {
		f(s)
	}
}
