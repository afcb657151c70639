#!/bin/sh
# PID 1 of the browser guest, running in the host's root under a tmpfs
# overlay (test/e2e/vm/rootshare/init put us here); /e2e is the host's
# work directory. Sets the machine up as root, runs the flows as the
# desktop user "e2e", powers off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LANG=C.UTF-8
umask 022
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p /dev/pts /dev/shm /tmp/.X11-unix
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
chmod 1777 /tmp/.X11-unix
busybox ip link set lo up
busybox hostname e2e
echo "E2E-BOOT phase=browsers kernel=$(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime)"

log() { echo "E2E-INFO guest: $*"; }
step() { "$@" >>/e2e/out/setup.log 2>&1 || log "failed ($?): $*"; }

# Installed as the README says (tpm-fido setup, systemd-sysusers, udev,
# the relay as its system user): the desktop user "e2e" is in group tss
# (may use the TPM) and has no right on /dev/uhid; its daemon gets the
# key's device from the relay.
getent group tss >/dev/null || step groupadd -r tss
step useradd -m -u 1500 -U -G tss -s /bin/sh e2e
step /e2e/tpm-fido setup --root / --allow-user e2e --binary /e2e/tpm-fido
step systemd-sysusers /etc/sysusers.d/tpm-fido.conf
# Stand-in for logind: there is no seat, so systemd's uaccess builtin grants
# nothing; hand a hidraw node the rules tagged "uaccess" to the user, as
# logind does for the user at the seat.
echo 'SUBSYSTEM=="hidraw", TAG=="uaccess", OWNER="e2e"' >/etc/udev/rules.d/99-e2e-seat-stand-in.rules
step /lib/systemd/systemd-udevd --daemon
step udevadm trigger --action=add
step udevadm settle --timeout=60
# Without Debian's tpm-udev rules /dev/tpmrm0 stays root's: give it to tss.
if [ "$(stat -c %G /dev/tpmrm0)" != tss ]; then
	chgrp tss /dev/tpmrm0 && chmod 0660 /dev/tpmrm0
	log "tpmrm0 given to group tss by hand (no tpm-udev rules)"
fi
# The relay, as tpm-fido-relay.service runs it (RuntimeDirectory=tpm-fido,
# User=tpm-fido-relay, in group uhid).
mkdir -p /run/tpm-fido
chown tpm-fido-relay:tpm-fido-relay /run/tpm-fido
chmod 0755 /run/tpm-fido
timeout 1000 setpriv --reuid=tpm-fido-relay --regid=tpm-fido-relay --init-groups \
	/e2e/tpm-fido relay --log-level debug >/e2e/out/relay.log 2>&1 &
i=0
while [ ! -S /run/tpm-fido/relay.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
[ -S /run/tpm-fido/relay.sock ] || log "the relay made no socket in 10 s: $(tail -n 3 /e2e/out/relay.log)"
log "$(id e2e); $(ls -l /dev/uhid /dev/tpmrm0 | tr -s ' ' | cut -d' ' -f1,3,4,10 | tr '\n' ' ')"
mkdir -p /run/user/1500
chown e2e:e2e /run/user/1500
chmod 0700 /run/user/1500

cd /home/e2e
timeout 1000 setpriv --reuid=e2e --regid=e2e --init-groups \
	env -i HOME=/home/e2e USER=e2e LOGNAME=e2e PATH=/usr/local/bin:/usr/bin:/bin \
	XDG_RUNTIME_DIR=/run/user/1500 LANG=C.UTF-8 \
	/e2e/browsers-guest /e2e/config.json
log "driver exited with status $?"
sync
echo "E2E-DONE phase=browsers"
poweroff -f
