# Shell helpers for the end-to-end guest, sourced by /init and by every
# scenario run (sh /e2e/run.sh NAME).

PIN=4821-e2e-pin
STATE=/state/tpm-fido
E2E=/state/e2e
KEYS=$E2E/keys
LOGDIR=/run/e2e
export SSH_ASKPASS=/e2e/askpass-good
export SSH_ASKPASS_REQUIRE=force
export DISPLAY=:0
mkdir -p "$LOGDIR"

# t runs one command under a 60-second timeout.
t() { timeout 60 "$@"; }

# note records a fact the host shows with the PASS line (the last one wins).
note() { echo "NOTE: $*"; }

# fail prints its arguments as the failure reason and ends the scenario
# (each scenario runs in its own shell).
fail() {
	echo "FAIL: $*"
	exit 1
}

USER_HOME=/home/user
RELAY_SOCK=/run/tpm-fido/relay.sock

# as_user CMD: run a shell command as the test user (groups from
# /etc/group), with its own HOME.
as_user() {
	su -s /bin/sh -c "cd $USER_HOME && export HOME=$USER_HOME PATH=/usr/bin:/usr/sbin && $1" user
}

# install_system does, once per boot, the README's install steps in this
# guest: `tpm-fido setup` (serving the test user), systemd-sysusers for
# group uhid and the relay's system user, the tss group with the test
# user in it (what tpm-udev and `usermod -aG tss` do; busybox has no
# usermod), udevd applying the installed rules (the demo's guest has no
# udevd: the same modes are set by hand), the state directory, and the
# relay started as its system user the way tpm-fido-relay.service runs it
# (RuntimeDirectory=tpm-fido, User=tpm-fido-relay). The test user is never
# put in group uhid.
install_system() {
	[ -f /run/e2e-installed ] && return 0
	t tpm-fido setup --root / --allow-user user >"$LOGDIR/setup.log" 2>&1 || {
		echo "E2E-LOG install: tpm-fido setup failed: $(tail -n 3 "$LOGDIR/setup.log")"
		return 1
	}
	if ! grep -q '^tss:' /etc/group; then
		echo 'tss:x:991:user' >>/etc/group
		echo 'tss:x:991:991:TPM software stack:/var/lib/tpm:/usr/sbin/nologin' >>/etc/passwd
	fi
	t systemd-sysusers /etc/sysusers.d/tpm-fido.conf >>"$LOGDIR/setup.log" 2>&1 || {
		echo "E2E-LOG install: systemd-sysusers failed: $(tail -n 3 "$LOGDIR/setup.log")"
		return 1
	}
	mkdir -p $USER_HOME && chown user:user $USER_HOME && chmod 0755 $USER_HOME
	if [ -x /usr/lib/systemd/systemd-udevd ]; then
		# The seat stand-in: the guest has no logind seat (see phase-3.sh).
		echo 'SUBSYSTEM=="hidraw", TAG=="uaccess", OWNER="user"' >/etc/udev/rules.d/99-e2e-seat-stand-in.rules
		t /usr/lib/systemd/systemd-udevd --daemon >>"$LOGDIR/setup.log" 2>&1
		t udevadm trigger --action=add
		t udevadm settle --timeout=50
	else
		chgrp uhid /dev/uhid && chmod 0660 /dev/uhid
		chgrp tss /dev/tpmrm0 && chmod 0660 /dev/tpmrm0
	fi
	mkdir -p "$STATE" && chown user:user "$STATE" && chmod 0700 "$STATE"
	mkdir -p /run/tpm-fido && chown tpm-fido-relay:tpm-fido-relay /run/tpm-fido && chmod 0755 /run/tpm-fido
	start_relay || return 1
	touch /run/e2e-installed
}

# start_relay runs `tpm-fido relay` as the system user tpm-fido-relay and
# waits for its socket.
start_relay() {
	timeout 900 su -s /bin/sh -c 'exec /usr/bin/tpm-fido relay --log-level debug' tpm-fido-relay \
		>>"$LOGDIR/relay.log" 2>&1 &
	echo $! >/run/relay.pid
	i=0
	while [ ! -S "$RELAY_SOCK" ] && [ $i -lt 100 ]; do
		sleep 0.1
		i=$((i+1))
	done
	[ -S "$RELAY_SOCK" ] || {
		echo "E2E-LOG relay: no socket after 10 s: $(tail -n 3 "$LOGDIR/relay.log")"
		return 1
	}
}

# start_daemon [PRESENCE]: install (once), then start tpm-fido as the test
# user, the way the README sets it up: its device comes from the relay,
# it has no right on /dev/uhid. Waits for the hidraw node.
start_daemon() {
	presence=${1:-always-allow}
	install_system || return 1
	# exec all the way down: the pid is the daemon's.
	timeout 900 su -s /bin/sh -c "cd $USER_HOME && exec env HOME=$USER_HOME PATH=/usr/bin:/usr/sbin \
		/usr/bin/tpm-fido serve --transport relay --tpm /dev/tpmrm0 \
		--state-dir $STATE --presence $presence --insecure-test-mode --log-level debug" user \
		>>"$LOGDIR/daemon.log" 2>&1 &
	echo $! >/run/daemon.pid
	i=0
	while [ $i -lt 150 ]; do
		if ls /dev/hidraw* >/dev/null 2>&1; then return 0; fi
		if ! kill -0 "$(cat /run/daemon.pid)" 2>/dev/null; then
			echo "E2E-LOG daemon: exited before its device appeared"
			return 1
		fi
		sleep 0.1
		i=$((i+1))
	done
	echo "E2E-LOG daemon: no /dev/hidraw* after 15 s"
	return 1
}

daemon_alive() { [ -f /run/daemon.pid ] && kill -0 "$(cat /run/daemon.pid)" 2>/dev/null; }

stop_daemon() {
	[ -f /run/daemon.pid ] || return 0
	pid=$(cat /run/daemon.pid)
	kill "$pid" 2>/dev/null
	i=0
	while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
	kill -9 "$pid" 2>/dev/null
	rm -f /run/daemon.pid
	i=0
	while ls /dev/hidraw* >/dev/null 2>&1 && [ $i -lt 30 ]; do sleep 0.1; i=$((i+1)); done
}

start_sshd() {
	mkdir -p /run/sshd "$E2E"
	chmod 0755 /run/sshd /state "$E2E"
	touch "$E2E/authorized_keys"
	chmod 0644 "$E2E/authorized_keys"
	timeout 900 /usr/sbin/sshd -D -f /etc/ssh/sshd_config -E "$LOGDIR/sshd.log" &
	echo $! >/run/sshd.pid
	i=0
	while ! grep -q 'Server listening' "$LOGDIR/sshd.log" 2>/dev/null && [ $i -lt 100 ]; do
		sleep 0.1
		i=$((i+1))
	done
}

stop_services() {
	stop_daemon
	[ -f /run/relay.pid ] && kill "$(cat /run/relay.pid)" 2>/dev/null
	rm -f /run/relay.pid
	[ -f /run/sshd.pid ] && kill "$(cat /run/sshd.pid)" 2>/dev/null
	rm -f /run/sshd.pid
}

# dev prints the first FIDO device fido2-token lists.
dev() { t fido2-token -L 2>/dev/null | sed -n '1s/^\([^:]*\):.*/\1/p'; }

# login KEY: ssh to the test user on 127.0.0.1 with only KEY and run a
# marker command; succeeds only if the marker comes back.
login() {
	out=$(t ssh -n -i "$1" -o IdentitiesOnly=yes -o IdentityAgent=none \
		-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
		-o PasswordAuthentication=no -o KbdInteractiveAuthentication=no \
		-o ConnectTimeout=30 -o LogLevel=ERROR \
		user@127.0.0.1 echo e2e-login-ok 2>&1)
	rc=$?
	echo "$out" >&2
	[ $rc -eq 0 ] && echo "$out" | grep -q e2e-login-ok
}

# authorize [OPTIONS] PUBFILE: append the key to authorized_keys.
authorize() {
	if [ $# -eq 2 ]; then
		printf '%s %s\n' "$1" "$(cat "$2")" >>"$E2E/authorized_keys"
	else
		cat "$1" >>"$E2E/authorized_keys"
	fi
}

# newkey FILE [ssh-keygen options...]: enroll an ecdsa-sk key.
newkey() {
	f=$1
	shift
	rm -f "$f" "$f.pub"
	t ssh-keygen -q -t ecdsa-sk -N '' -C "e2e-$(basename "$f")" -f "$f" "$@" </dev/null
}

# recover_keys DIR [WHEN]: ssh-keygen -K in a new $LOGDIR/DIR, which
# stays the current directory; WHEN ends the failure message.
recover_keys() {
	rm -rf "$LOGDIR/$1" && mkdir -p "$LOGDIR/$1" && cd "$LOGDIR/$1" || return 1
	t ssh-keygen -K -N '' </dev/null || fail "ssh-keygen -K failed$2"
	ls -l
}

# expect_recovered WHEN KEY...: the keys recover_keys wrote include each
# saved $KEYS/KEY.pub; WHEN ends the failure message.
expect_recovered() {
	when=$1
	shift
	for k in "$@"; do
		want=$(cut -d' ' -f2 "$KEYS/$k.pub")
		[ -n "$want" ] || fail "no saved public key $k"
		cat ./*.pub | grep -q "$want" || fail "ssh-keygen -K does not list $k$when"
	done
}

# counter CREDID_B64: one fido2-assert -G on the credential, prints the
# signature counter from the authenticator data.
counter() {
	d=$(dev)
	printf '%s\n%s\n%s\n' "$(head -c 32 /dev/urandom | base64 -w 0)" e2e.example "$1" >"$LOGDIR/ga.in"
	t fido2-assert -G -i "$LOGDIR/ga.in" -o "$LOGDIR/ga.out" "$d" || return 1
	# authdata (line 3) is a CBOR byte string: 0x58 LEN rpIdHash(32) flags(1) counter(4)
	ad=$(sed -n 3p "$LOGDIR/ga.out" | base64 -d | xxd -p -l 39 | tr -d '\n')
	case "$ad" in 58*) ;; *) return 1 ;; esac
	hex=$(echo "$ad" | cut -c71-78)
	[ ${#hex} -eq 8 ] || return 1
	echo $((0x$hex))
}

# scenario NAME: run s_NAME in a fresh shell under a timeout and print its
# result marker; on failure the tail of its output follows.
scenario() {
	name=$1
	limit=${2:-120}
	start=$(date +%s)
	timeout "$limit" sh /e2e/run.sh "$name" >"$LOGDIR/$name.log" 2>&1
	rc=$?
	secs=$(( $(date +%s) - start ))
	if [ $rc -eq 0 ]; then
		echo "E2E-RESULT $name PASS ${secs}s $(grep '^NOTE: ' "$LOGDIR/$name.log" | tail -n 1 | cut -c7-)"
	else
		why=$(grep '^FAIL: ' "$LOGDIR/$name.log" | tail -n 1 | cut -c7-)
		[ $rc -eq 143 ] && why="timed out after ${limit}s"
		[ -n "$why" ] || why="exit status $rc"
		echo "E2E-RESULT $name FAIL $why"
		tail -n 25 "$LOGDIR/$name.log" | sed "s/^/E2E-LOG $name: /"
		if [ -f "$LOGDIR/daemon.log" ]; then
			tail -n 15 "$LOGDIR/daemon.log" | sed "s/^/E2E-LOG $name: daemon: /"
		fi
		if [ -f "$LOGDIR/relay.log" ]; then
			tail -n 8 "$LOGDIR/relay.log" | sed "s/^/E2E-LOG $name: relay: /"
		fi
	fi
	return $rc
}

# emit_file NAME PATH: copy a file out through the console as base64.
emit_file() {
	if [ -f "$2" ]; then
		echo "E2E-FILE $1 $(base64 -w 0 "$2")"
	fi
}
