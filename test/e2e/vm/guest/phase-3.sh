# Phase 3 (issue 6 scenario 9): a fresh swtpm (a cleared TPM) with the old
# state disk. The daemon must refuse with a clear message and leave the
# state untouched.

state_hash() {
	(cd "$STATE" && find . -type f | sort | xargs sha256sum)
}

s_other_tpm() {
	[ -d "$STATE" ] && [ -n "$(ls -A "$STATE")" ] || fail "no state from the earlier boots"
	state_hash >"$LOGDIR/hash-before"
	cat "$LOGDIR/hash-before"
	timeout 60 /usr/bin/tpm-fido serve --transport uhid --tpm /dev/tpmrm0 \
		--state-dir "$STATE" --presence always-allow --insecure-test-mode \
		>"$LOGDIR/other.log" 2>&1
	rc=$?
	cat "$LOGDIR/other.log"
	state_hash >"$LOGDIR/hash-after"
	[ $rc -ne 0 ] && [ $rc -ne 143 ] || fail "the daemon did not exit with an error (status $rc)"
	grep -qiE 'different TPM|another TPM|other TPM' "$LOGDIR/other.log" ||
		fail "the daemon's error does not say the state belongs to another TPM"
	cmp -s "$LOGDIR/hash-before" "$LOGDIR/hash-after" || fail "the state files changed"
	note "exit $rc, $(wc -l <"$LOGDIR/hash-before") state files unchanged: $(grep -iE 'different TPM|another TPM|other TPM' "$LOGDIR/other.log" | head -n 1)"
}

if [ -z "$E2E_DEFINE_ONLY" ]; then
	scenario other-tpm 90
fi
