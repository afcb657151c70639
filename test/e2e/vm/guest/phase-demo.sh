# The demo: show on the console, step by step, what a user sees.

show() {
	echo
	line="guest#"
	for a in "$@"; do
		case "$a" in
		"" | *" "* | *'$'* | *'"'*) line="$line '$a'" ;;
		*) line="$line $a" ;;
		esac
	done
	echo "$line"
	timeout 60 "$@" 2>&1
	rc=$?
	[ $rc -eq 0 ] || echo "(exit status $rc)"
	return $rc
}

demo() {
	mkdir -p "$E2E" /root/.ssh
	: >"$E2E/authorized_keys"
	start_sshd
	start_daemon always-allow || { tail -n 20 "$LOGDIR/daemon.log"; return 1; }
	echo "== tpm-fido is running in the guest, backed by the guest's TPM (swtpm)"
	show fido2-token -L
	d=$(dev)
	echo "== a new ecdsa-sk key; its private key is a TPM key wrapped into the credential ID"
	show ssh-keygen -t ecdsa-sk -N '' -f /root/.ssh/id_ecdsa_sk -C demo </dev/null
	cat /root/.ssh/id_ecdsa_sk.pub >>"$E2E/authorized_keys"
	echo "== ssh login to sshd on 127.0.0.1 with that key"
	show ssh -n -i /root/.ssh/id_ecdsa_sk -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
		-o LogLevel=ERROR user@127.0.0.1 'echo "logged in as $(whoami) on $(hostname)"'
	grep 'Accepted publickey' "$LOGDIR/sshd.log" | tail -n 1 | sed 's/^/sshd: /'
	echo "== a PIN on the authenticator, then a resident key"
	echo
	echo "guest# fido2-token -S $d        (new PIN given twice on stdin)"
	printf '%s\n%s\n' "$PIN" "$PIN" | timeout 60 setsid fido2-token -S "$d" >/dev/null 2>&1 && echo "PIN set"
	echo "(ssh-keygen gets the PIN from SSH_ASKPASS=$SSH_ASKPASS, SSH_ASKPASS_REQUIRE=force)"
	show ssh-keygen -t ecdsa-sk -O resident -N '' -f /root/.ssh/id_resident -C demo-resident </dev/null
	cat /root/.ssh/id_resident.pub >>"$E2E/authorized_keys"
	echo "== delete the local key files and recover them from the authenticator"
	rm -f /root/.ssh/id_resident /root/.ssh/id_resident.pub
	mkdir -p /root/recovered && cd /root/recovered || return 1
	show ssh-keygen -K -N '' </dev/null
	show ls -l /root/recovered
	k=$(ls /root/recovered/id_*_rk 2>/dev/null | head -n 1)
	echo "== ssh login with the recovered key"
	show ssh -n -i "$k" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
		-o LogLevel=ERROR user@127.0.0.1 'echo "logged in again with the recovered resident key"'
}

if [ -z "$E2E_DEFINE_ONLY" ]; then
	if demo; then echo "E2E-RESULT demo PASS"; else echo "E2E-RESULT demo FAIL"; fi
fi
