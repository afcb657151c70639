// Package tpmtest holds TPM helpers for tests and benchmarks that the
// product never uses: CountingTPM, which counts the commands sent to a
// TPM, and setting the TPM's dictionary-attack policy, which tpm-fido
// itself never changes (it is machine-wide and belongs to the platform).
package tpmtest

import (
	"encoding/binary"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// SetDAParameters sends TPM2_DictionaryAttackParameters (TPM 2.0 Part 3
// §25.3) authorised by the empty lockout password of a fresh TPM:
// lockout after maxTries failures, one failure forgiven every
// recoveryTime seconds, lockoutRecovery seconds after a failed
// lockoutAuth. (go-tpm's direct API has no wrapper for the command.)
func SetDAParameters(tpm transport.TPM, maxTries, recoveryTime, lockoutRecovery uint32) error {
	var params []byte
	params = binary.BigEndian.AppendUint32(params, maxTries)
	params = binary.BigEndian.AppendUint32(params, recoveryTime)
	params = binary.BigEndian.AppendUint32(params, lockoutRecovery)
	rc, err := sendLockout(tpm, 0x13A, "TPM2_DictionaryAttackParameters", nil, params) // TPM_CC_DictionaryAttackParameters
	if err != nil {
		return err
	}
	if rc != 0 {
		return fmt.Errorf("tpmtest: TPM2_DictionaryAttackParameters: TPM response code 0x%x", rc)
	}
	return nil
}

// DALockReset sends TPM2_DictionaryAttackLockReset (TPM 2.0 Part 3
// §25.2) authorised with lockoutAuth as the lockout password: it sets
// the TPM's failedTries to 0 and ends a lockout. A TPM's response code
// comes back as a tpm2.TPMRC. (go-tpm's direct API has no wrapper for
// the command.)
func DALockReset(tpm transport.TPM, lockoutAuth []byte) error {
	rc, err := sendLockout(tpm, 0x139, "TPM2_DictionaryAttackLockReset", lockoutAuth, nil) // TPM_CC_DictionaryAttackLockReset
	if err != nil {
		return err
	}
	if rc != 0 {
		return tpm2.TPMRC(rc)
	}
	return nil
}

// sendLockout sends the command cc (called name in errors) on
// TPM_RH_LOCKOUT, authorised with the password lockoutAuth, with params
// after the authorisation area, and returns the TPM's response code.
func sendLockout(tpm transport.TPM, cc uint32, name string, lockoutAuth, params []byte) (uint32, error) {
	var b []byte
	b = binary.BigEndian.AppendUint16(b, 0x8002)     // TPM_ST_SESSIONS
	b = binary.BigEndian.AppendUint32(b, 0)          // size, patched below
	b = binary.BigEndian.AppendUint32(b, cc)         // command code
	b = binary.BigEndian.AppendUint32(b, 0x4000000A) // TPM_RH_LOCKOUT
	b = binary.BigEndian.AppendUint32(b, uint32(9+len(lockoutAuth)))
	b = binary.BigEndian.AppendUint32(b, 0x40000009) // TPM_RS_PW
	b = binary.BigEndian.AppendUint16(b, 0)          // nonce
	b = append(b, 0)                                 // session attributes
	b = binary.BigEndian.AppendUint16(b, uint16(len(lockoutAuth)))
	b = append(b, lockoutAuth...)
	b = append(b, params...)
	binary.BigEndian.PutUint32(b[2:], uint32(len(b)))
	rsp, err := tpm.Send(b)
	if err != nil {
		return 0, err
	}
	if len(rsp) < 10 {
		return 0, fmt.Errorf("tpmtest: %s: short response % x", name, rsp)
	}
	return binary.BigEndian.Uint32(rsp[6:10]), nil
}
