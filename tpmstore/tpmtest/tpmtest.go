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
	var b []byte
	b = binary.BigEndian.AppendUint16(b, 0x8002) // TPM_ST_SESSIONS
	b = binary.BigEndian.AppendUint32(b, 0)      // size, patched below
	b = binary.BigEndian.AppendUint32(b, 0x13A)  // TPM_CC_DictionaryAttackParameters
	b = binary.BigEndian.AppendUint32(b, 0x4000000A)
	b = binary.BigEndian.AppendUint32(b, 9)          // authorization size
	b = binary.BigEndian.AppendUint32(b, 0x40000009) // TPM_RS_PW
	b = binary.BigEndian.AppendUint16(b, 0)          // nonce
	b = append(b, 0)                                 // session attributes
	b = binary.BigEndian.AppendUint16(b, 0)          // empty password
	b = binary.BigEndian.AppendUint32(b, maxTries)
	b = binary.BigEndian.AppendUint32(b, recoveryTime)
	b = binary.BigEndian.AppendUint32(b, lockoutRecovery)
	binary.BigEndian.PutUint32(b[2:], uint32(len(b)))
	rsp, err := tpm.Send(b)
	if err != nil {
		return err
	}
	if len(rsp) < 10 {
		return fmt.Errorf("tpmtest: TPM2_DictionaryAttackParameters: short response % x", rsp)
	}
	if rc := binary.BigEndian.Uint32(rsp[6:10]); rc != 0 {
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
	var b []byte
	b = binary.BigEndian.AppendUint16(b, 0x8002)     // TPM_ST_SESSIONS
	b = binary.BigEndian.AppendUint32(b, 0)          // size, patched below
	b = binary.BigEndian.AppendUint32(b, 0x139)      // TPM_CC_DictionaryAttackLockReset
	b = binary.BigEndian.AppendUint32(b, 0x4000000A) // TPM_RH_LOCKOUT
	b = binary.BigEndian.AppendUint32(b, uint32(9+len(lockoutAuth)))
	b = binary.BigEndian.AppendUint32(b, 0x40000009) // TPM_RS_PW
	b = binary.BigEndian.AppendUint16(b, 0)          // nonce
	b = append(b, 0)                                 // session attributes
	b = binary.BigEndian.AppendUint16(b, uint16(len(lockoutAuth)))
	b = append(b, lockoutAuth...)
	binary.BigEndian.PutUint32(b[2:], uint32(len(b)))
	rsp, err := tpm.Send(b)
	if err != nil {
		return err
	}
	if len(rsp) < 10 {
		return fmt.Errorf("tpmtest: TPM2_DictionaryAttackLockReset: short response % x", rsp)
	}
	if rc := binary.BigEndian.Uint32(rsp[6:10]); rc != 0 {
		return tpm2.TPMRC(rc)
	}
	return nil
}
