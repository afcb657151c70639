# Phase 2 (issue 6 scenario 8): reboot with the same swtpm state and the same
# state disk. Old keys still log in, the signature counter went up, resident
# keys are still listed.

s_reboot_daemon() {
	daemon_alive || fail "the daemon did not start on the old state"
	t fido2-token -I "$(dev)" >/dev/null || fail "fido2-token -I failed after the reboot"
}

s_reboot_login() {
	login "$KEYS/id_basic" || fail "the scenario-1 key no longer logs in"
	login "$KEYS/id_res" || fail "the recovered resident key no longer logs in"
}

s_reboot_counter() {
	before=$(cat "$E2E/counter-before") || fail "no counter saved before the reboot"
	now=$(counter "$(cat "$E2E/credid")") || fail "fido2-assert failed after the reboot"
	note "signature counter $before before the reboot, $now after"
	[ "$now" -gt "$before" ] || fail "counter $now is not higher than $before from before the reboot"
}

s_reboot_resident_list() {
	rm -rf "$LOGDIR/rk" && mkdir -p "$LOGDIR/rk" && cd "$LOGDIR/rk" || return 1
	t ssh-keygen -K -N '' </dev/null || fail "ssh-keygen -K failed after the reboot"
	for k in id_res id_work; do
		want=$(cut -d' ' -f2 "$KEYS/$k.pub")
		[ -n "$want" ] || fail "no saved public key $k"
		cat ./*.pub | grep -q "$want" || fail "resident key $k not listed after the reboot"
	done
	return 0
}

if [ -z "$E2E_DEFINE_ONLY" ]; then
	start_sshd
	start_daemon always-allow
	for s in reboot-daemon reboot-login reboot-counter reboot-resident-list; do
		scenario "$s" 150
	done
	tail -n 40 "$LOGDIR/daemon.log" 2>/dev/null | sed 's/^/E2E-DAEMON /'
fi
