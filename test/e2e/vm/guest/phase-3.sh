# Phase 3 (issue 6 scenario 9): a fresh swtpm (a cleared TPM) with the old
# state disk. The daemon must refuse with a clear message and leave the
# state untouched.
#
# Then issue 5 acceptance 3 and 4 on the same boot (they need no state from
# earlier boots): `tpm-fido setup --root /`, Debian's systemd-udevd running
# the installed rules, the virtual key's hidraw node tagged uaccess and as
# a security token, /dev/uhid 0660 in group uhid, and the test user (in
# groups uhid and tss, not root) running the daemon, ssh-keygen -t
# ecdsa-sk, and `tpm-fido doctor` with every check passing (the TPM's
# strict dictionary-attack policy and the daemon's test-mode presence
# answer are the expected warnings).
#
# What stands in for a desktop: there is no logind seat in the guest, so
# systemd's uaccess builtin grants no ACL. The test rule below gives a
# hidraw node to the test user only if the installed rules tagged it
# uaccess, as logind would for the seat's user; everything else is the
# real rules acting.

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

USER_HOME=/home/user

# as_user CMD: run a shell command as the test user (groups from
# /etc/group), with its own HOME.
as_user() {
	su -s /bin/sh -c "cd $USER_HOME && export HOME=$USER_HOME PATH=/usr/bin:/usr/sbin && $1" user
}

s_udev_setup() {
	out=$(t tpm-fido setup --root / 2>&1)
	rc=$?
	echo "$out"
	[ $rc -eq 0 ] || fail "tpm-fido setup --root / exited $rc"
	[ -f /etc/udev/rules.d/70-tpm-fido.rules ] || fail "setup installed no /etc/udev/rules.d/70-tpm-fido.rules"
	[ -f /etc/modules-load.d/tpm-fido.conf ] || fail "setup installed no modules-load.d entry"
	echo "$out" | grep -q 'groupadd --system uhid' || fail "setup does not say to create the uhid group"
	again=$(t tpm-fido setup --root / 2>&1)
	echo "$again"
	echo "$again" | grep -q 'nothing changed' || fail "a second setup run changed something"
	# What setup tells the admin to do (groupadd --system uhid; usermod
	# -aG uhid,tss user), by editing /etc/group: Debian's busybox-static
	# has no addgroup/adduser. tss (user and group) is what Debian's
	# tpm-udev package creates.
	grep -q '^uhid:' /etc/group && fail "group uhid exists before setup"
	echo 'uhid:x:990:user' >>/etc/group
	echo 'tss:x:991:user' >>/etc/group
	echo 'tss:x:991:991:TPM software stack:/var/lib/tpm:/usr/sbin/nologin' >>/etc/passwd
	grep -E '^(uhid|tss):' /etc/group
	# The seat stand-in (see the top of this file).
	echo 'SUBSYSTEM=="hidraw", TAG=="uaccess", OWNER="user"' >/etc/udev/rules.d/99-e2e-seat-stand-in.rules
	ls -l /etc/udev/rules.d /usr/lib/udev/rules.d
	before=$(stat -c '%a %U:%G' /dev/uhid)
	echo "before udev: /dev/uhid $before"
	t /usr/lib/systemd/systemd-udevd --daemon || fail "systemd-udevd --daemon failed"
	t udevadm trigger --action=add || fail "udevadm trigger failed"
	t udevadm settle --timeout=50 || fail "udevadm settle timed out"
	uhid=$(stat -c '%a %G' /dev/uhid)
	tpm=$(stat -c '%a %U:%G' /dev/tpmrm0)
	echo "/dev/uhid $uhid, /dev/tpmrm0 $tpm"
	[ "$uhid" = "660 uhid" ] || fail "/dev/uhid is '$uhid', want '660 uhid'"
	[ "$tpm" = "660 tss:tss" ] || fail "/dev/tpmrm0 is '$tpm', want '660 tss:tss'"
	note "setup installed the rules (second run: nothing changed); udevd: /dev/uhid $before -> $uhid, /dev/tpmrm0 $tpm"
}

s_user_daemon() {
	mkdir -p $USER_HOME && chown user:user $USER_HOME && chmod 0755 $USER_HOME
	id user
	# exec all the way down: the pid is the daemon's.
	timeout 900 su -s /bin/sh -c "cd $USER_HOME && exec env HOME=$USER_HOME PATH=/usr/bin:/usr/sbin \
		/usr/bin/tpm-fido serve --presence always-allow --insecure-test-mode --log-level debug" user \
		>>"$LOGDIR/daemon.log" 2>&1 &
	echo $! >/run/daemon.pid
	i=0
	while ! ls /dev/hidraw* >/dev/null 2>&1 && [ $i -lt 150 ]; do
		daemon_alive || fail "the daemon run by user exited: $(tail -n 3 "$LOGDIR/daemon.log")"
		sleep 0.1
		i=$((i+1))
	done
	ls /dev/hidraw* >/dev/null 2>&1 || fail "no /dev/hidraw* 15 s after the user's daemon started"
	daemon_alive || fail "the daemon run by user exited"
	pid=$(cat /run/daemon.pid)
	who=$(stat -c %U "/proc/$pid")
	grep -E '^(Uid|Groups):' "/proc/$pid/status"
	[ "$who" = user ] || fail "the daemon runs as '$who', not as user"
	state=$(stat -c '%a %U' $USER_HOME/.local/share/tpm-fido 2>&1)
	note "daemon pid $pid runs as $who (groups $(sed -n 's/^Groups:[[:space:]]*//p' "/proc/$pid/status" | xargs)), state dir ~/.local/share/tpm-fido $state, node $(ls /dev/hidraw*)"
}

s_udev_hidraw() {
	h=$(ls /dev/hidraw* | head -n 1)
	[ -n "$h" ] || fail "no hidraw node"
	t udevadm settle --timeout=50 || fail "udevadm settle timed out"
	info=$(t udevadm info "$h") || fail "udevadm info $h failed"
	echo "$info"
	tags=$(echo "$info" | sed -n 's/^E: TAGS=//p')
	cur=$(echo "$info" | sed -n 's/^E: CURRENT_TAGS=//p')
	case "$tags" in *:uaccess:*) ;; *) fail "$h TAGS='$tags' lacks uaccess" ;; esac
	case "$cur" in *:uaccess:*) ;; *) fail "$h CURRENT_TAGS='$cur' lacks uaccess" ;; esac
	echo "$info" | grep -q '^E: ID_SECURITY_TOKEN=1$' || fail "$h is not ID_SECURITY_TOKEN=1"
	fido=no
	echo "$info" | grep -q '^E: ID_FIDO_TOKEN=1$' && fido=yes
	own=$(stat -c '%a %U:%G' "$h")
	note "$h TAGS=$tags CURRENT_TAGS=$cur ID_SECURITY_TOKEN=1 ID_FIDO_TOKEN=$fido; node $own"
}

# systemd's own FIDO detection (fido_id reads the report descriptor's
# usage page) on our device, run directly: the udev database cannot tell
# its ID_FIDO_TOKEN from the one our rule sets too.
s_fido_id() {
	h=$(ls /dev/hidraw* | head -n 1)
	out=$(t /usr/lib/udev/fido_id "/sys/class/hidraw/${h#/dev/}" 2>&1)
	rc=$?
	echo "$out"
	[ $rc -eq 0 ] || fail "fido_id exited $rc: $out"
	echo "$out" | grep -q '^ID_FIDO_TOKEN=1$' || fail "systemd's fido_id does not see a FIDO device: $out"
	note "systemd's fido_id on ${h#/dev/}: $(echo "$out" | xargs)"
}

s_user_ssh_keygen() {
	rm -f $USER_HOME/id_user $USER_HOME/id_user.pub
	as_user "timeout 60 ssh-keygen -t ecdsa-sk -N '' -C e2e-user -f $USER_HOME/id_user </dev/null" ||
		fail "ssh-keygen -t ecdsa-sk as user failed"
	cat $USER_HOME/id_user.pub
	grep -q '^sk-ecdsa-sha2-nistp256@openssh.com ' $USER_HOME/id_user.pub || fail "no sk-ecdsa public key"
	own=$(stat -c %U $USER_HOME/id_user)
	[ "$own" = user ] || fail "the key file belongs to $own"
	note "as user: $(ssh-keygen -l -f $USER_HOME/id_user.pub)"
}

s_doctor() {
	# doctor is given the daemon's own --presence: a headless guest has no
	# way to ask anyone (doctor tries the prompt as the daemon would).
	out=$(as_user "timeout 60 tpm-fido doctor --presence always-allow --insecure-test-mode" 2>&1)
	rc=$?
	echo "$out"
	bad=$(echo "$out" | grep -E '^(FAIL|WARN)' | head -n 2 | tr '\n' ' ')
	[ $rc -eq 0 ] || fail "doctor exited $rc: $bad"
	# The guest's swtpm keeps the reference dictionary-attack policy (3
	# failures, 1000 s): one expected warning is that a FIDO PIN gets
	# fewer than CTAP's 8 tries, with the command that relaxes it; the
	# other, that the daemon's presence answer is a fixed test one.
	others=$(echo "$out" | grep -E '^(FAIL|WARN)' | grep -v '^WARN  tpm-da:' | grep -v '^WARN  prompt:  --presence always-allow uses always-allow')
	[ -z "$others" ] || fail "doctor did not pass every check: $others"
	echo "$out" | grep -q '^WARN  tpm-da: .*[0-9] of 3 failures counted' || fail "doctor does not report the TPM's 3-failure policy"
	echo "$out" | grep -q 'tpm2_dictionarylockout --setup-parameters --max-tries=32 --recovery-time=600' ||
		fail "doctor does not print the command that relaxes the policy"
	note "doctor as user, exit 0: $(echo "$out" | grep -c '^ok') checks ok ($(echo "$out" | sed -n 's/^ok  *\([a-z-]*\):.*/\1/p' | xargs)), tpm-da warns: $(echo "$out" | grep -A1 '^WARN  tpm-da' | tail -n 1 | sed 's/^ *fix: *//')"
}

if [ -z "$E2E_DEFINE_ONLY" ]; then
	scenario other-tpm 90
	for s in udev-setup user-daemon udev-hidraw fido-id user-ssh-keygen doctor; do
		scenario "$s" 150
	done
	tail -n 30 "$LOGDIR/daemon.log" 2>/dev/null | sed 's/^/E2E-DAEMON /'
fi
