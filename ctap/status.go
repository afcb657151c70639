// Package ctap holds what the CTAP transport and command layers share:
// CTAP2 status codes as a Go error type, the one CBOR mode requests are
// decoded in (and responses encoded in), the keepalive status a handler
// reports while it works, and the multiplexer that routes CTAPHID
// messages to the CTAP2 (CBOR) and U2F (APDU) handlers.
package ctap

import (
	"errors"
	"fmt"
)

// Status is a CTAP2 status code (CTAP 2.1 §8.2). It implements error so a
// handler can return it directly; the protocol edge turns any other error
// into StatusOther after logging it.
type Status byte

// CTAP2 status codes.
const (
	StatusOK                     Status = 0x00
	StatusInvalidCommand         Status = 0x01
	StatusInvalidParameter       Status = 0x02
	StatusInvalidLength          Status = 0x03
	StatusInvalidSeq             Status = 0x04
	StatusTimeout                Status = 0x05
	StatusChannelBusy            Status = 0x06
	StatusLockRequired           Status = 0x0A
	StatusInvalidChannel         Status = 0x0B
	StatusCBORUnexpectedType     Status = 0x11
	StatusInvalidCBOR            Status = 0x12
	StatusMissingParameter       Status = 0x14
	StatusLimitExceeded          Status = 0x15
	StatusFPDatabaseFull         Status = 0x17
	StatusLargeBlobStorageFull   Status = 0x18
	StatusCredentialExcluded     Status = 0x19
	StatusProcessing             Status = 0x21
	StatusInvalidCredential      Status = 0x22
	StatusUserActionPending      Status = 0x23
	StatusOperationPending       Status = 0x24
	StatusNoOperations           Status = 0x25
	StatusUnsupportedAlgorithm   Status = 0x26
	StatusOperationDenied        Status = 0x27
	StatusKeyStoreFull           Status = 0x28
	StatusUnsupportedOption      Status = 0x2B
	StatusInvalidOption          Status = 0x2C
	StatusKeepaliveCancel        Status = 0x2D
	StatusNoCredentials          Status = 0x2E
	StatusUserActionTimeout      Status = 0x2F
	StatusNotAllowed             Status = 0x30
	StatusPINInvalid             Status = 0x31
	StatusPINBlocked             Status = 0x32
	StatusPINAuthInvalid         Status = 0x33
	StatusPINAuthBlocked         Status = 0x34
	StatusPINNotSet              Status = 0x35
	StatusPUATRequired           Status = 0x36
	StatusPINPolicyViolation     Status = 0x37
	StatusRequestTooLarge        Status = 0x39
	StatusActionTimeout          Status = 0x3A
	StatusUPRequired             Status = 0x3B
	StatusUVBlocked              Status = 0x3C
	StatusIntegrityFailure       Status = 0x3D
	StatusInvalidSubcommand      Status = 0x3E
	StatusUVInvalid              Status = 0x3F
	StatusUnauthorizedPermission Status = 0x40
	StatusOther                  Status = 0x7F
)

var statusNames = map[Status]string{
	StatusOK: "CTAP2_OK", StatusInvalidCommand: "CTAP1_ERR_INVALID_COMMAND",
	StatusInvalidParameter: "CTAP1_ERR_INVALID_PARAMETER", StatusInvalidLength: "CTAP1_ERR_INVALID_LENGTH",
	StatusInvalidSeq: "CTAP1_ERR_INVALID_SEQ", StatusTimeout: "CTAP1_ERR_TIMEOUT",
	StatusChannelBusy: "CTAP1_ERR_CHANNEL_BUSY", StatusLockRequired: "CTAP1_ERR_LOCK_REQUIRED",
	StatusInvalidChannel: "CTAP1_ERR_INVALID_CHANNEL", StatusCBORUnexpectedType: "CTAP2_ERR_CBOR_UNEXPECTED_TYPE",
	StatusInvalidCBOR: "CTAP2_ERR_INVALID_CBOR", StatusMissingParameter: "CTAP2_ERR_MISSING_PARAMETER",
	StatusLimitExceeded: "CTAP2_ERR_LIMIT_EXCEEDED", StatusFPDatabaseFull: "CTAP2_ERR_FP_DATABASE_FULL",
	StatusLargeBlobStorageFull: "CTAP2_ERR_LARGE_BLOB_STORAGE_FULL", StatusCredentialExcluded: "CTAP2_ERR_CREDENTIAL_EXCLUDED",
	StatusProcessing: "CTAP2_ERR_PROCESSING", StatusInvalidCredential: "CTAP2_ERR_INVALID_CREDENTIAL",
	StatusUserActionPending: "CTAP2_ERR_USER_ACTION_PENDING", StatusOperationPending: "CTAP2_ERR_OPERATION_PENDING",
	StatusNoOperations: "CTAP2_ERR_NO_OPERATIONS", StatusUnsupportedAlgorithm: "CTAP2_ERR_UNSUPPORTED_ALGORITHM",
	StatusOperationDenied: "CTAP2_ERR_OPERATION_DENIED", StatusKeyStoreFull: "CTAP2_ERR_KEY_STORE_FULL",
	StatusUnsupportedOption: "CTAP2_ERR_UNSUPPORTED_OPTION", StatusInvalidOption: "CTAP2_ERR_INVALID_OPTION",
	StatusKeepaliveCancel: "CTAP2_ERR_KEEPALIVE_CANCEL", StatusNoCredentials: "CTAP2_ERR_NO_CREDENTIALS",
	StatusUserActionTimeout: "CTAP2_ERR_USER_ACTION_TIMEOUT", StatusNotAllowed: "CTAP2_ERR_NOT_ALLOWED",
	StatusPINInvalid: "CTAP2_ERR_PIN_INVALID", StatusPINBlocked: "CTAP2_ERR_PIN_BLOCKED",
	StatusPINAuthInvalid: "CTAP2_ERR_PIN_AUTH_INVALID", StatusPINAuthBlocked: "CTAP2_ERR_PIN_AUTH_BLOCKED",
	StatusPINNotSet: "CTAP2_ERR_PIN_NOT_SET", StatusPUATRequired: "CTAP2_ERR_PUAT_REQUIRED",
	StatusPINPolicyViolation: "CTAP2_ERR_PIN_POLICY_VIOLATION", StatusRequestTooLarge: "CTAP2_ERR_REQUEST_TOO_LARGE",
	StatusActionTimeout: "CTAP2_ERR_ACTION_TIMEOUT", StatusUPRequired: "CTAP2_ERR_UP_REQUIRED",
	StatusUVBlocked: "CTAP2_ERR_UV_BLOCKED", StatusIntegrityFailure: "CTAP2_ERR_INTEGRITY_FAILURE",
	StatusInvalidSubcommand: "CTAP2_ERR_INVALID_SUBCOMMAND", StatusUVInvalid: "CTAP2_ERR_UV_INVALID",
	StatusUnauthorizedPermission: "CTAP2_ERR_UNAUTHORIZED_PERMISSION", StatusOther: "CTAP2_ERR_OTHER",
}

// Error returns the specification's name for the status.
func (s Status) Error() string {
	if n, ok := statusNames[s]; ok {
		return n
	}
	return fmt.Sprintf("CTAP status 0x%02x", byte(s))
}

// StatusOf maps err to the status sent on the wire: a Status anywhere in
// the chain is returned as is; nil is StatusOK; anything else is
// StatusOther (the caller logs the cause).
func StatusOf(err error) Status {
	if err == nil {
		return StatusOK
	}
	var s Status
	if errors.As(err, &s) {
		return s
	}
	return StatusOther
}
