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
# strict dictionary-attack policy, its empty lockout password and the
# daemon's test-mode presence answer are the expected warnings); then,
# with the daemon stopped, `tpm-fido pin set` and doctor again: both say
# the PIN needs a lockout password.
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

s_udev_setup() {
	grep -q '^uhid:' /etc/group && fail "group uhid exists before setup"
	before=$(stat -c '%a %U:%G' /dev/uhid)
	echo "before: /dev/uhid $before"
	install_system
	rc=$?
	cat "$LOGDIR/setup.log"
	[ $rc -eq 0 ] || fail "the install failed"
	out=$(cat "$LOGDIR/setup.log")
	for f in /etc/udev/rules.d/70-tpm-fido.rules /etc/modules-load.d/tpm-fido.conf /etc/sysusers.d/tpm-fido.conf \
		/etc/systemd/system/tpm-fido-relay.service /etc/systemd/user/tpm-fido.service; do
		[ -f "$f" ] || fail "setup installed no $f"
	done
	grep -qx "$(id -u user) # user" /etc/tpm-fido/relay-users || fail "the relay's list does not name user by uid: $(cat /etc/tpm-fido/relay-users)"
	echo "$out" | grep -q 'sudo systemd-sysusers' || fail "setup does not say to run systemd-sysusers"
	echo "$out" | grep -q 'usermod -aG uhid' && fail "setup still puts the user in group uhid"
	again=$(t tpm-fido setup --root / --allow-user user 2>&1)
	echo "$again"
	echo "$again" | grep -q 'nothing changed' || fail "a second setup run changed something"
	grep -E '^(uhid|tss|tpm-fido-relay):' /etc/group
	grep '^tpm-fido-relay:' /etc/passwd
	ls -l /etc/udev/rules.d /usr/lib/udev/rules.d
	members=$(sed -n 's/^uhid:[^:]*:[^:]*://p' /etc/group)
	[ "$members" = tpm-fido-relay ] || fail "group uhid has members '$members', want only tpm-fido-relay"
	uhid=$(stat -c '%a %G' /dev/uhid)
	tpm=$(stat -c '%a %U:%G' /dev/tpmrm0)
	echo "/dev/uhid $uhid, /dev/tpmrm0 $tpm"
	[ "$uhid" = "660 uhid" ] || fail "/dev/uhid is '$uhid', want '660 uhid'"
	[ "$tpm" = "660 tss:tss" ] || fail "/dev/tpmrm0 is '$tpm', want '660 tss:tss'"
	rpid=$(cat /run/relay.pid)
	grep -E '^(Uid|Groups):' "/proc/$rpid/status"
	ruid=$(sed -n 's/^Uid:[[:space:]]*\([0-9]*\).*/\1/p' "/proc/$rpid/status")
	[ "$ruid" = "$(id -u tpm-fido-relay)" ] || fail "the relay runs as uid $ruid, not as tpm-fido-relay"
	sock=$(stat -c '%a %U' "$RELAY_SOCK")
	note "setup + systemd-sysusers: group uhid = {$members}; udevd: /dev/uhid $before -> $uhid, /dev/tpmrm0 $tpm; relay pid $rpid as tpm-fido-relay (uid $ruid, groups $(sed -n 's/^Groups:[[:space:]]*//p' "/proc/$rpid/status" | xargs)), socket $RELAY_SOCK $sock"
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
	grep -E '^(Uid|Groups):' "/proc/$pid/status"
	uid=$(sed -n 's/^Uid:[[:space:]]*\([0-9]*\).*/\1/p' "/proc/$pid/status")
	who=$(awk -F: -v u="$uid" '$3 == u { print $1 }' /etc/passwd)
	[ "$who" = user ] || fail "the daemon runs as '$who' (uid $uid), not as user"
	# Not dumpable (prctl at start): its /proc/PID files are root's, not
	# the user's, and the user's other processes cannot read them.
	owner=$(stat -c %U "/proc/$pid/environ")
	[ "$owner" = root ] || fail "/proc/$pid/environ belongs to $owner: the daemon is dumpable"
	peek=$(as_user "head -c 1 /proc/$pid/environ" 2>&1) && fail "user read the daemon's /proc/$pid/environ"
	echo "as user, head -c 1 /proc/$pid/environ: $peek"
	state=$(stat -c '%a %U' $USER_HOME/.local/share/tpm-fido 2>&1)
	grep -q 'the relay created the device' "$LOGDIR/daemon.log" || fail "the daemon did not get its device from the relay"
	note "daemon pid $pid runs as $who (groups $(sed -n 's/^Groups:[[:space:]]*//p' "/proc/$pid/status" | xargs)), not dumpable (/proc/$pid/environ is $owner's; as user: $(echo "$peek" | tail -n 1)), device from the relay, state dir ~/.local/share/tpm-fido $state, node $(ls /dev/hidraw*)"
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
	# failures, 1000 s) and an empty lockout password. Expected warnings:
	# tpm-da, a FIDO PIN gets fewer than CTAP's 8 tries, with the command
	# that relaxes the policy; lockout, anyone who can open the TPM can
	# reset its counter (the running daemon holds the state, so doctor
	# cannot tell whether a PIN is set); prompt, the daemon's presence
	# answer is a fixed test one.
	others=$(echo "$out" | grep -E '^(FAIL|WARN)' | grep -v '^WARN  tpm-da:' | grep -v '^WARN  lockout: ' |
		grep -v '^WARN  prompt:  --presence always-allow uses always-allow')
	[ -z "$others" ] || fail "doctor did not pass every check: $others"
	echo "$out" | grep -q '^WARN  tpm-da: .*[0-9] of 3 failures counted' || fail "doctor does not report the TPM's 3-failure policy"
	echo "$out" | grep -q 'tpm2_dictionarylockout --setup-parameters --max-tries=32 --recovery-time=600 --lockout-recovery-time=1000$' ||
		fail "doctor does not print the command that relaxes the policy (without -p: no lockout password is set)"
	echo "$out" | grep -q "^WARN  lockout: the TPM's lockout password is empty.*the running daemon holds the state, so doctor cannot tell whether a FIDO PIN is set" ||
		fail "doctor does not warn that the TPM's lockout password is empty"
	echo "$out" | grep -q 'fix: *tpm2_changeauth -c lockout LOCKOUT_PASSWORD' || fail "doctor does not print the command that sets a lockout password"
	# With the daemon stopped, a PIN set with `tpm-fido pin set` (which
	# gives the same advice in one line): doctor knows the PIN is set.
	stop_daemon
	pin=$(as_user "printf '4931\n4931\n' | timeout 60 tpm-fido pin set" 2>&1)
	echo "$pin"
	echo "$pin" | grep -q '^The PIN is set' || fail "tpm-fido pin set failed: $pin"
	echo "$pin" | grep -q '^note: this TPM has no lockout password.*tpm2_changeauth -c lockout LOCKOUT_PASSWORD' ||
		fail "tpm-fido pin set does not advise a lockout password: $pin"
	again=$(as_user "timeout 60 tpm-fido doctor --presence always-allow --insecure-test-mode" 2>&1)
	echo "$again"
	echo "$again" | grep -q "^WARN  lockout: a FIDO PIN is set and the TPM's lockout password is empty" ||
		fail "doctor with a PIN set does not warn that the TPM's lockout password is empty"
	note "doctor as user, exit 0: $(echo "$out" | grep -c '^ok') checks ok ($(echo "$out" | sed -n 's/^ok  *\([a-z-]*\):.*/\1/p' | xargs)), tpm-da warns: $(echo "$out" | grep -A1 '^WARN  tpm-da' | tail -n 1 | sed 's/^ *fix: *//'); after pin set: $(echo "$again" | grep '^WARN  lockout' | cut -c1-80)...; lockout fix: $(echo "$again" | grep -A1 '^WARN  lockout' | tail -n 1 | sed 's/^ *fix: *//')"
}

if [ -z "$E2E_DEFINE_ONLY" ]; then
	scenario other-tpm 90
	for s in udev-setup user-daemon udev-hidraw fido-id user-ssh-keygen doctor; do
		scenario "$s" 150
	done
	tail -n 30 "$LOGDIR/daemon.log" 2>/dev/null | sed 's/^/E2E-DAEMON /'
fi
