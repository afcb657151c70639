# Phase 1: first boot with a fresh TPM and an empty state disk. The daemon
# runs as the test user, installed as the README says: its device comes
# from the relay, and the user cannot open /dev/uhid (user-no-uhid). Issue
# 2 and issue 4 smoke scenarios, then the OpenSSH flows of issue 6 (1-7,
# 10), all through that daemon.

# The user set up per the README has no right on /dev/uhid: not in group
# uhid, opening it fails, and doctor (told the daemon would open it
# directly) says so; the relay's system user holds it.
s_user_no_uhid() {
	id user
	ls -l /dev/uhid "$RELAY_SOCK"
	ids=$(id user)
	case "$ids" in *"(uhid)"*) fail "user is in group uhid: $ids" ;; esac
	out=$(as_user "exec 3<>/dev/uhid && echo OPENED" 2>&1)
	echo "as user, open /dev/uhid read-write: $out"
	case "$out" in *OPENED*) fail "user opened /dev/uhid" ;; esac
	echo "$out" | grep -q 'Permission denied' || fail "opening /dev/uhid as user did not fail with Permission denied: $out"
	doc=$(as_user "timeout 60 tpm-fido doctor --transport uhid --presence always-allow --insecure-test-mode" 2>&1)
	echo "$doc"
	line=$(echo "$doc" | grep '^FAIL  uhid:')
	echo "$line" | grep -q 'is not writable by you' || fail "doctor --transport uhid as user does not say /dev/uhid is not writable: $doc"
	pid=$(cat /run/daemon.pid)
	duid=$(sed -n 's/^Uid:[[:space:]]*\([0-9]*\).*/\1/p' "/proc/$pid/status")
	[ "$duid" = "$(id -u user)" ] || fail "the daemon runs as uid $duid, not as user"
	rgroups=$(sed -n 's/^Groups:[[:space:]]*//p' "/proc/$(cat /run/relay.pid)/status" | xargs)
	note "$(id user | cut -d' ' -f1,3); /dev/uhid $(stat -c '%A %U:%G' /dev/uhid); as user: $(echo "$out" | tail -n 1); $line; the daemon (pid $pid) runs as user, the relay as tpm-fido-relay (groups $rgroups)"
}

s_token_list() {
	out=$(t fido2-token -L 2>&1)
	echo "$out"
	echo "$out" | grep -q '^/dev/hidraw' || fail "fido2-token -L lists no hidraw device"
}

s_token_info() {
	d=$(dev)
	[ -n "$d" ] || fail "no device listed"
	t fido2-token -I "$d" || fail "fido2-token -I $d exited $?"
}

s_info_options() {
	d=$(dev)
	out=$(t fido2-token -I "$d" 2>&1) || fail "fido2-token -I failed"
	echo "$out"
	for want in credProtect hmac-secret clientPin credMgmt; do
		echo "$out" | grep -q "$want" || fail "fido2-token -I does not show $want"
	done
}

s_cred_assert() {
	d=$(dev)
	[ -n "$d" ] || fail "no device listed"
	cd "$LOGDIR" || return 1
	printf '%s\n%s\n%s\n%s\n' "$(head -c 32 /dev/urandom | base64 -w 0)" e2e.example e2e-user \
		"$(head -c 16 /dev/urandom | base64 -w 0)" >mc.in
	t fido2-cred -M -i mc.in -o mc.out "$d" || fail "fido2-cred -M"
	t fido2-cred -V -i mc.out -o cred.out || fail "fido2-cred -V rejects the attestation"
	credid=$(head -n 1 cred.out)
	sed 1d cred.out >cred.pem
	printf '%s\n%s\n%s\n' "$(head -c 32 /dev/urandom | base64 -w 0)" e2e.example "$credid" >ga.in
	t fido2-assert -G -i ga.in -o ga.out "$d" || fail "fido2-assert -G"
	t fido2-assert -V -p -i ga.out cred.pem es256 || fail "fido2-assert -V rejects the assertion"
	mkdir -p "$E2E"
	echo "$credid" >"$E2E/credid"
	c=$(counter "$credid") || fail "cannot read the signature counter"
	echo "$c" >"$E2E/counter-before"
	note "assertion verified, signature counter $c"
}

# Issue 6 scenario 1.
s_ssh_basic() {
	mkdir -p "$KEYS"
	newkey "$KEYS/id_basic" || fail "ssh-keygen -t ecdsa-sk failed"
	authorize "$KEYS/id_basic.pub"
	login "$KEYS/id_basic" || fail "ssh login with the ecdsa-sk key failed"
	grep -q 'Accepted publickey for user .*ECDSA-SK' "$LOGDIR/sshd.log" || fail "sshd log does not show an ECDSA-SK login"
	note "sshd: $(grep 'Accepted publickey' "$LOGDIR/sshd.log" | tail -n 1)"
}

# Issue 6 scenario 7.
s_ed25519_rejected() {
	rm -f "$LOGDIR/id_ed"
	out=$(t ssh-keygen -q -t ed25519-sk -N '' -f "$LOGDIR/id_ed" </dev/null 2>&1)
	rc=$?
	echo "$out"
	[ $rc -ne 0 ] || fail "ssh-keygen -t ed25519-sk succeeded"
	echo "$out" | grep -qi 'not supported' || fail "ssh-keygen did not say 'not supported'"
	note "ssh-keygen: $(echo "$out" | grep -i 'not supported' | tail -n 1)"
	daemon_alive || fail "the daemon died"
	t fido2-token -I "$(dev)" >/dev/null || fail "the device no longer answers"
}

# Issue 6 scenario 6: the host verifies the file (write-attestation-verify).
s_write_attestation() {
	head -c 32 /dev/urandom >"$LOGDIR/challenge"
	newkey "$LOGDIR/id_att" -O write-attestation="$LOGDIR/attestation" \
		-O challenge="$LOGDIR/challenge" || fail "ssh-keygen with write-attestation failed"
	[ -s "$LOGDIR/attestation" ] || fail "no attestation file written"
	emit_file attestation "$LOGDIR/attestation" >/dev/console
	emit_file challenge "$LOGDIR/challenge" >/dev/console
	emit_file attestation-pub "$LOGDIR/id_att.pub" >/dev/console
}

s_pin_set() {
	d=$(dev)
	printf '%s\n%s\n' "$PIN" "$PIN" | t setsid fido2-token -S "$d" || fail "fido2-token -S failed"
	t fido2-token -I "$d" | grep -q 'clientPin' || fail "clientPin not reported after setting the PIN"
	t fido2-token -I "$d" | grep -q 'noclientPin' && fail "device still reports noclientPin"
	return 0
}

# Issue 6 scenario 2.
s_resident() {
	newkey "$KEYS/id_res" -O resident || fail "ssh-keygen -O resident failed"
	authorize "$KEYS/id_res.pub"
	want=$(cut -d' ' -f2 "$KEYS/id_res.pub")
	rm -f "$KEYS/id_res" "$KEYS/id_res.pub"
	recover_keys rk || return 1
	got=""
	for p in id_*_rk*.pub; do
		[ "$(cut -d' ' -f2 "$p")" = "$want" ] && got=${p%.pub}
	done
	[ -n "$got" ] || fail "ssh-keygen -K did not recover the resident key"
	cp "$got" "$KEYS/id_res" && cp "$got.pub" "$KEYS/id_res.pub"
	login "$KEYS/id_res" || fail "login with the recovered resident key failed"
}

# Issue 6 scenario 3.
s_verify_required() {
	newkey "$KEYS/id_uv" -O verify-required || fail "ssh-keygen -O verify-required failed"
	authorize verify-required "$KEYS/id_uv.pub"
	login "$KEYS/id_uv" || fail "login with verify-required and the right PIN failed"
	SSH_ASKPASS=/e2e/askpass-bad login "$KEYS/id_uv" && fail "login with a wrong PIN succeeded"
	login "$KEYS/id_uv" || fail "login with the right PIN after a wrong one failed"
	# An assertion without UV: the basic key, listed as verify-required.
	cp "$E2E/authorized_keys" "$LOGDIR/ak.saved"
	grep -v "$(cut -d' ' -f2 "$KEYS/id_basic.pub")" "$LOGDIR/ak.saved" >"$E2E/authorized_keys"
	authorize verify-required "$KEYS/id_basic.pub"
	login "$KEYS/id_basic"
	rc=$?
	cp "$LOGDIR/ak.saved" "$E2E/authorized_keys"
	[ $rc -ne 0 ] || fail "sshd accepted an assertion without UV for a verify-required key"
	grep -qi 'verification' "$LOGDIR/sshd.log" || fail "sshd log does not name the missing user verification"
	note "sshd: $(grep -i 'verification' "$LOGDIR/sshd.log" | tail -n 1)"
}

# Issue 6 scenario 4.
s_no_touch() {
	newkey "$KEYS/id_nt" -O no-touch-required || fail "ssh-keygen -O no-touch-required failed"
	authorize no-touch-required "$KEYS/id_nt.pub"
	stop_daemon
	start_daemon always-deny || fail "daemon did not start with always-deny"
	login "$KEYS/id_nt"
	rc1=$?
	login "$KEYS/id_basic"
	rc2=$?
	stop_daemon
	start_daemon always-allow || fail "daemon did not restart with always-allow"
	[ $rc1 -eq 0 ] || fail "no-touch-required login failed with presence denied"
	[ $rc2 -ne 0 ] || fail "a normal key logged in with presence denied"
	return 0
}

# Issue 6 scenario 5.
s_application() {
	newkey "$KEYS/id_work" -O resident -O application=ssh:work || fail "ssh-keygen -O application=ssh:work failed"
	authorize "$KEYS/id_work.pub"
	login "$KEYS/id_work" || fail "login with the ssh:work key failed"
	login "$KEYS/id_res" || fail "login with the default-application resident key failed"
	recover_keys rk2 || return 1
	expect_recovered "" id_work id_res
	ls ./*_rk_work* >/dev/null 2>&1 || fail "no key recovered for application ssh:work"
	return 0
}

# Issue 6 scenario 10.
s_parallel() {
	credid=$(cat "$E2E/credid") || fail "no credential from cred-assert"
	(login "$KEYS/id_basic" && echo ok >"$LOGDIR/par-ssh") >"$LOGDIR/par-ssh.log" 2>&1 &
	sshpid=$!
	n=0
	i=0
	while [ $i -lt 6 ]; do
		counter "$credid" >/dev/null && n=$((n+1))
		i=$((i+1))
	done
	wait $sshpid
	cat "$LOGDIR/par-ssh.log"
	[ -f "$LOGDIR/par-ssh" ] || fail "the ssh login run in parallel failed"
	[ $n -eq 6 ] || fail "only $n of 6 parallel fido2-assert runs succeeded"
	if grep -qi 'busy' "$LOGDIR/par-ssh.log"; then fail "CHANNEL_BUSY reached the user"; fi
	return 0
}

s_counter_before() {
	c=$(counter "$(cat "$E2E/credid")") || fail "cannot read the signature counter"
	echo "$c" >"$E2E/counter-before"
	note "signature counter before the reboot: $c"
	sync
}

if [ -z "$E2E_DEFINE_ONLY" ]; then
	mkdir -p "$E2E" "$KEYS"
	start_sshd
	start_daemon always-allow
	for s in user-no-uhid token-list token-info info-options cred-assert ssh-basic ed25519-rejected \
		write-attestation pin-set resident verify-required no-touch application parallel \
		counter-before; do
		scenario "$s" 150
	done
	daemon_alive || echo "E2E-LOG phase1: the daemon is not running at the end"
	tail -n 40 "$LOGDIR/daemon.log" 2>/dev/null | sed 's/^/E2E-DAEMON /'
fi
