package ctap2test

import (
	"github.com/tpm-fido/tpm-fido/ctap/ctap2"
)

var _ ctap2.Store = (*FakeStore)(nil)
