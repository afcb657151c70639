#!/bin/sh
# tpm-fido demo: boots a small VM (qemu software emulation, a swtpm TPM, the
# kernel's uhid driver) running the real daemon, and shows fido2-token,
# ssh-keygen -t ecdsa-sk, an ssh login and ssh-keygen -K against it.
# Needs nothing from the host but Go and the Debian packages marked "demo"
# in scripts/packages.txt, which it installs (as root, or through sudo).
set -eu
cd "$(dirname "$0")/../.."

scripts/deps.sh demo

if ! command -v go >/dev/null 2>&1; then
	if [ -x /usr/local/go/bin/go ]; then
		PATH=$PATH:/usr/local/go/bin
	else
		echo "demo: Go (the version go.mod names) is needed: see README.md, \"Go\"" >&2
		exit 1
	fi
fi
# Built, then run in this process's place (not `go run`), so that a
# SIGTERM reaches the demo itself, which then stops the VM and removes its
# temporary files as it does on Ctrl-C. Go's module downloads stay out of
# the transcript unless the build fails.
bin=bin/tpm-fido-demo
mkdir -p bin
if ! out=$(go build -o "$bin" ./test/e2e/cmd/demo 2>&1); then
	printf '%s\n' "$out" >&2
	exit 1
fi
if [ -n "${TPM_FIDO_VM_LOCK:-}" ]; then
	# The lock is held on fd 9, which the demo (and its VM) inherit.
	exec 9>>"$TPM_FIDO_VM_LOCK"
	flock 9
fi
exec "$bin" "$@"
