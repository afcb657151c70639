//go:build !cgo || nolibfido2

package interop

import "testing"

func TestInterop(t *testing.T) {
	t.Skip("libfido2 harness not built: needs cgo and libfido2-dev, without the nolibfido2 tag")
}
