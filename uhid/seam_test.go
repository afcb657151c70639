package uhid_test

import (
	"testing"

	"github.com/tpm-fido/tpm-fido/ctap/ctaphid"
	"github.com/tpm-fido/tpm-fido/uhid"
)

// The device is a ctaphid.ReportDevice.
var _ ctaphid.ReportDevice = (*uhid.Device)(nil)

// TestReportSizeIsCTAPHID: uhid declares its own report size (it does not
// import ctaphid); it must be CTAPHID's packet size.
func TestReportSizeIsCTAPHID(t *testing.T) {
	if uhid.ReportSize != ctaphid.ReportSize {
		t.Fatalf("uhid.ReportSize %d, ctaphid.ReportSize %d", uhid.ReportSize, ctaphid.ReportSize)
	}
}
