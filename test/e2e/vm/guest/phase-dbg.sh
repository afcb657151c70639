s_dbg() {
	mkdir -p "$E2E" /root/.ssh
	: >"$E2E/authorized_keys"
	start_sshd
	ssh-keygen -q -t ed25519 -N '' -f /tmp/k || fail keygen
	authorize /tmp/k.pub
	login /tmp/k || { cat $LOGDIR/sshd.log; ls -la /state/e2e; fail login; }
	grep Accepted "$LOGDIR/sshd.log"
	printf '%s\n%s\n' a b | setsid sh -c 'read x; read y; echo "got $x $y"'
	ls -la /state /dev/tpm*
	echo "hex test: $(printf '\130\045abc' | xxd -p -l 39 | tr -d '\n')"
}
if [ -z "$E2E_DEFINE_ONLY" ]; then
	scenario dbg 60
	cat $LOGDIR/dbg.log
	if true; then echo "E2E-RESULT dbg PASS"; fi
fi
