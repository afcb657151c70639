# Phase 2 (issue 6 scenario 8): reboot with the same swtpm state and the same
# state disk. Old keys still log in (the verify-required one with the PIN),
# the signature counter went up, resident keys are still listed. Then a PIN
# change keeps the verify-required key working, and the TPM's
# dictionary-attack counter is never driven into lockout.

s_reboot_daemon() {
	daemon_alive || fail "the daemon did not start on the old state"
	t fido2-token -I "$(dev)" >/dev/null || fail "fido2-token -I failed after the reboot"
}

s_reboot_login() {
	login "$KEYS/id_basic" || fail "the scenario-1 key no longer logs in"
	login "$KEYS/id_res" || fail "the recovered resident key no longer logs in"
	login "$KEYS/id_uv" || fail "the verify-required key no longer logs in with the PIN"
}

# da_line prints doctor's line about the TPM's dictionary-attack state.
da_line() { t tpm-fido doctor --tpm /dev/tpmrm0 --state-dir "$STATE" 2>&1 | grep 'tpm-da:' | head -n 1; }

# A verify-required key's TPM key is bound to the PIN object, which a PIN
# change keeps (TPM2_ObjectChangeAuth): the key made before the change
# logs in with the new PIN, the old PIN is refused. The guest TPM keeps
# the reference dictionary-attack policy (3 failures, 1000 s): phase 1's
# wrong PIN and the old PIN here make 2, so the next try could lock the
# TPM, and the daemon refuses it without trying (PIN_AUTH_BLOCKED), the
# right PIN too, and says when the next try is possible; the TPM never
# goes into lockout.
s_pin_change_uv() {
	d=$(dev)
	[ -n "$d" ] || fail "no device listed"
	newpin=7305-changed-pin
	printf '%s\n%s\n%s\n' "$PIN" "$newpin" "$newpin" | t setsid fido2-token -C "$d" || fail "fido2-token -C failed"
	echo "$newpin" >"$E2E/pin"
	login "$KEYS/id_uv" || fail "the verify-required key made before the PIN change does not log in with the new PIN"
	grep -q 'signing with a PIN-bound key' "$LOGDIR/daemon.log" || fail "the verify-required key was not signed in a TPM policy session"
	echo "after the change: $(da_line)"
	SSH_ASKPASS=/e2e/old-pin login "$KEYS/id_uv" && fail "the old PIN still logs in"
	da=$(da_line)
	echo "after the old PIN: $da"
	echo "$da" | grep -q '2 of 3 failures counted' || fail "the TPM did not count the old PIN as one failure: $da"
	login "$KEYS/id_uv" && fail "a PIN try was made that could lock the TPM"
	da=$(da_line)
	echo "after the refused try: $da"
	echo "$da" | grep -q '2 of 3 failures counted.*not in lockout' || fail "the TPM's counter moved or it is in lockout: $da"
	grep -q 'next try possible in about' "$LOGDIR/daemon.log" || fail "the daemon does not say when the next PIN try is possible"
	note "new PIN logs in with the old verify-required key, old PIN refused; $(grep -o 'PIN not tried[^"]*next try possible in about [0-9hms]*' "$LOGDIR/daemon.log" | tail -n 1)"
}

s_reboot_counter() {
	before=$(cat "$E2E/counter-before") || fail "no counter saved before the reboot"
	now=$(counter "$(cat "$E2E/credid")") || fail "fido2-assert failed after the reboot"
	note "signature counter $before before the reboot, $now after"
	[ "$now" -gt "$before" ] || fail "counter $now is not higher than $before from before the reboot"
}

s_reboot_resident_list() {
	recover_keys rk " after the reboot" || return 1
	expect_recovered " after the reboot" id_res id_work
	return 0
}

if [ -z "$E2E_DEFINE_ONLY" ]; then
	start_sshd
	start_daemon always-allow
	for s in reboot-daemon reboot-login reboot-counter reboot-resident-list pin-change-uv; do
		scenario "$s" 150
	done
	tail -n 40 "$LOGDIR/daemon.log" 2>/dev/null | sed 's/^/E2E-DAEMON /'
fi
