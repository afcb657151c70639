package tpmstore

import (
	"fmt"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// The TPM has one dictionary-attack (DA) counter for the whole machine:
// every failed authorisation of a DA-protected object (the PIN object,
// but also systemd-cryptenroll's TPM2+PIN, ssh-tpm-agent keys, tpm2-pkcs11
// tokens) counts, and when failedTries reaches maxTries every DA-protected
// object on the machine is refused until the TPM forgives failures again
// (one per recovery interval). A FIDO PIN typo must never do that, so the
// store reads the counter before every PIN attempt that could fail and
// does not make the attempt that could bring failedTries to maxTries.

// TPMA_PERMANENT bits (TPM 2.0 Part 2, §8.6).
const (
	permOwnerAuthSet   = 1 << 0
	permLockoutAuthSet = 1 << 2
	permInLockout      = 1 << 9
)

// CTAPPINFailures is how many wrong PINs CTAP 2.1 allows in all before
// the PIN is blocked for good (§6.5.2.1). A TPM policy lets tpm-fido
// offer all of them within one recovery interval only when it allows at
// least CTAPPINFailures+1 failures (the last try must not reach maxTries).
const CTAPPINFailures = maxPINRetries

// DAStatus is the TPM's dictionary-attack state, read with one
// TPM2_GetCapability (TPM_PT_PERMANENT up to TPM_PT_LOCKOUT_RECOVERY).
type DAStatus struct {
	FailedTries     uint32        // TPM_PT_LOCKOUT_COUNTER
	MaxTries        uint32        // TPM_PT_MAX_AUTH_FAIL
	RecoveryTime    time.Duration // TPM_PT_LOCKOUT_INTERVAL: one failure is forgiven per interval
	LockoutRecovery time.Duration // TPM_PT_LOCKOUT_RECOVERY (after a failed lockoutAuth)
	InLockout       bool          // TPMA_PERMANENT.inLockout
	LockoutAuthSet  bool          // TPMA_PERMANENT.lockoutAuthSet
	OwnerAuthSet    bool          // TPMA_PERMANENT.ownerAuthSet
}

// ReadDAStatus reads the TPM's dictionary-attack state with one
// TPM2_GetCapability. It needs no authorisation.
func ReadDAStatus(tpm transport.TPM) (DAStatus, error) {
	first := tpm2.TPMPTPermanent
	last := tpm2.TPMPTLockoutRecovery
	rsp, err := tpm2.GetCapability{
		Capability:    tpm2.TPMCapTPMProperties,
		Property:      uint32(first),
		PropertyCount: uint32(last-first) + 1,
	}.Execute(tpm)
	if err != nil {
		return DAStatus{}, fmt.Errorf("tpmstore: reading the TPM's dictionary-attack state: %w", err)
	}
	props, err := rsp.CapabilityData.Data.TPMProperties()
	if err != nil {
		return DAStatus{}, fmt.Errorf("tpmstore: reading the TPM's dictionary-attack state: %w", err)
	}
	var st DAStatus
	seen := 0
	for _, p := range props.TPMProperty {
		switch p.Property {
		case tpm2.TPMPTPermanent:
			st.OwnerAuthSet = p.Value&permOwnerAuthSet != 0
			st.LockoutAuthSet = p.Value&permLockoutAuthSet != 0
			st.InLockout = p.Value&permInLockout != 0
		case tpm2.TPMPTLockoutCounter:
			st.FailedTries = p.Value
		case tpm2.TPMPTMaxAuthFail:
			st.MaxTries = p.Value
		case tpm2.TPMPTLockoutInterval:
			st.RecoveryTime = time.Duration(p.Value) * time.Second
		case tpm2.TPMPTLockoutRecovery:
			st.LockoutRecovery = time.Duration(p.Value) * time.Second
		default:
			continue
		}
		seen++
	}
	if seen != 5 {
		return DAStatus{}, fmt.Errorf("tpmstore: the TPM reported %d of the 5 dictionary-attack properties", seen)
	}
	return st, nil
}

// countsFailures reports whether failed authorisations count at all: a
// recovery time of zero disables the TPM's dictionary-attack protection.
func (d DAStatus) countsFailures() bool { return d.RecoveryTime > 0 }

// SafeToTry reports whether one more failed authorisation leaves the
// TPM out of lockout: failedTries+1 < maxTries.
func (d DAStatus) SafeToTry() bool {
	if !d.countsFailures() {
		return !d.InLockout
	}
	return !d.InLockout && uint64(d.FailedTries)+1 < uint64(d.MaxTries)
}

// SafeTries is how many failures in a row the TPM takes now before
// tpm-fido stops trying (maxTries-1-failedTries, at least 0); -1 when
// failures do not count.
func (d DAStatus) SafeTries() int {
	if !d.countsFailures() {
		return -1
	}
	n := int64(d.MaxTries) - 1 - int64(d.FailedTries)
	if n < 0 {
		n = 0
	}
	return int(n)
}

// AllowsCTAPRetries reports whether the policy lets a FIDO PIN have all
// of CTAP's 8 tries within one recovery interval without the TPM ever
// reaching lockout (maxTries >= 9, or failures not counted).
func (d DAStatus) AllowsCTAPRetries() bool {
	return !d.countsFailures() || d.MaxTries > CTAPPINFailures
}

// CanEverTry reports whether the policy allows any PIN attempt at all
// (maxTries >= 2: with fewer, a single wrong PIN would lock the TPM).
func (d DAStatus) CanEverTry() bool {
	return !d.countsFailures() || d.MaxTries >= 2
}

// Wait is how long until a PIN try is safe again, from the status alone
// (0: now; negative: never under this policy). It assumes the TPM's
// recovery timer restarted just now, so it is an upper bound unless
// another program fails meanwhile.
func (d DAStatus) Wait() time.Duration { return d.waitFor() }

// waitFor is how long until a try is safe again, from the status alone:
// the number of failures the TPM must forgive times the recovery time.
// It is an upper bound as long as no other program fails meanwhile
// (each failure restarts the TPM's recovery timer). Negative: never.
func (d DAStatus) waitFor() time.Duration {
	if d.SafeToTry() {
		return 0
	}
	if !d.CanEverTry() {
		return -1
	}
	need := int64(d.FailedTries) + 2 - int64(d.MaxTries)
	if need < 1 {
		need = 1 // in lockout with a counter below maxTries: the TPM still decrements
	}
	return time.Duration(need) * d.RecoveryTime
}

// String describes the policy and the state in one line.
func (d DAStatus) String() string {
	lock := "not in lockout"
	if d.InLockout {
		lock = "IN LOCKOUT"
	}
	if !d.countsFailures() {
		return fmt.Sprintf("dictionary-attack protection disabled (recovery time 0), %s", lock)
	}
	return fmt.Sprintf("%d of %d failures counted, one forgiven every %s (lockout recovery %s), %s",
		d.FailedTries, d.MaxTries, d.RecoveryTime, d.LockoutRecovery, lock)
}

// RelaxCommand is the tpm2-tools command that gives the TPM the policy
// Windows 10 and later provision (32 failures, one forgiven every 10
// minutes), keeping its lockout recovery time. It needs the lockout
// password: while none is set (TPMA_PERMANENT.lockoutAuthSet clear) the
// command has no -p; once one is, it must carry it (-p LOCKOUT_PASSWORD,
// the placeholder to replace): a try without it, or with a wrong one,
// blocks every use of the lockout password for the lockout recovery
// time.
func (d DAStatus) RelaxCommand() string {
	rec := uint64(d.LockoutRecovery / time.Second)
	if rec == 0 {
		rec = 86400
	}
	cmd := fmt.Sprintf("tpm2_dictionarylockout --setup-parameters --max-tries=32 --recovery-time=600 --lockout-recovery-time=%d", rec)
	if d.LockoutAuthSet {
		cmd += " -p " + LockoutPasswordPlaceholder
	}
	return cmd
}

// LockoutPasswordPlaceholder stands for the TPM's lockout password in
// the commands tpm-fido prints.
const LockoutPasswordPlaceholder = "LOCKOUT_PASSWORD"

// SetLockoutAuthCommand is the tpm2-tools command that sets the TPM's
// lockout password while it is empty. tpm-fido never runs it: the
// password is machine-wide and its owner must keep it.
const SetLockoutAuthCommand = "tpm2_changeauth -c lockout " + LockoutPasswordPlaceholder

// GuessingUnlimited reports whether anyone who can send the TPM commands
// can reset its dictionary-attack counter (TPM2_DictionaryAttackLockReset
// needs the lockout password, and none is set), so the TPM does not
// limit guesses of a PIN that protects a key: whoever holds a copy of
// the state directory guesses the PIN of a verify-required key at the
// TPM's speed (TestPINGuessingNeedsLockoutAuth).
func (d DAStatus) GuessingUnlimited() bool { return !d.LockoutAuthSet }

// DAWaitError says that a PIN was not tried because of the TPM's
// dictionary-attack state: one more failure could put the TPM into
// lockout, or it is in lockout already. No PIN retry was spent.
// errors.Is(err, ErrTPMLockout) holds.
type DAWaitError struct {
	DA DAStatus
	// Wait is how long until the next try is possible (an estimate,
	// exact unless another program fails meanwhile); negative when the
	// TPM's policy allows no PIN failure at all.
	Wait time.Duration
}

func (e *DAWaitError) Error() string {
	switch {
	case e.Wait < 0:
		return fmt.Sprintf("tpmstore: PIN not tried: the TPM locks out after %d failure(s), so one wrong PIN would lock every TPM key on this machine (%s)", e.DA.MaxTries, e.DA)
	case e.DA.InLockout:
		return fmt.Sprintf("tpmstore: PIN not tried: the TPM is in dictionary-attack lockout (%s); next try possible in about %s", e.DA, e.Wait.Round(time.Second))
	}
	return fmt.Sprintf("tpmstore: PIN not tried: one more failure would put the TPM into dictionary-attack lockout (%s); next try possible in about %s", e.DA, e.Wait.Round(time.Second))
}

// Is makes DAWaitError match ErrTPMLockout.
func (e *DAWaitError) Is(target error) bool { return target == ErrTPMLockout }

// daGuard reads the DA state (one TPM command) and returns a
// *DAWaitError when a failed attempt could lock the TPM.
func (s *Store) daGuard() error {
	st, err := ReadDAStatus(s.tpm)
	if err != nil {
		return err
	}
	if st.SafeToTry() {
		return nil
	}
	return &DAWaitError{DA: st, Wait: s.daWait(st)}
}

// daWait refines DAStatus.waitFor with the time of this store's last
// failed PIN: the TPM forgives the first failure one recovery time after
// the last one.
func (s *Store) daWait(st DAStatus) time.Duration {
	w := st.waitFor()
	if w <= 0 || s.lastDAFailure.IsZero() {
		return w
	}
	since := s.now().Sub(s.lastDAFailure)
	if since <= 0 {
		return w
	}
	since %= st.RecoveryTime
	return w - since
}

// DAStatus reads the TPM's dictionary-attack state (one TPM command)
// and how long until a PIN try is possible again (0: now; negative:
// never under this policy).
func (s *Store) DAStatus() (DAStatus, time.Duration, error) {
	if err := s.lock(); err != nil {
		return DAStatus{}, 0, err
	}
	defer s.mu.Unlock()
	st, err := ReadDAStatus(s.tpm)
	if err != nil {
		return DAStatus{}, 0, err
	}
	return st, s.daWait(st), nil
}
