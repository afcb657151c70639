#!/bin/sh
# tpm-fido demo: boots a small VM (qemu software emulation, a swtpm TPM, the
# kernel's uhid driver) running the real daemon, and shows fido2-token,
# ssh-keygen -t ecdsa-sk, an ssh login and ssh-keygen -K against it.
# Needs nothing from the host but the packages below and Go; as root it
# installs the packages with apt-get.
set -eu
cd "$(dirname "$0")/../.."

pkgs="qemu-system-x86 swtpm swtpm-tools busybox-static fido2-tools openssh-server openssh-client zstd pinentry-curses"
missing=""
for p in $pkgs; do
	dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
	if [ "$(id -u)" -eq 0 ]; then
		echo "demo: installing$missing"
		DEBIAN_FRONTEND=noninteractive apt-get update -q
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
	else
		echo "demo: please install:  sudo apt-get install --no-install-recommends$missing" >&2
		exit 1
	fi
fi
if ! command -v go >/dev/null 2>&1; then
	if [ -x /usr/local/go/bin/go ]; then
		PATH=$PATH:/usr/local/go/bin
	else
		echo "demo: Go (the version go.mod names) is needed: https://go.dev/dl/" >&2
		exit 1
	fi
fi
exec go run ./test/e2e/cmd/demo "$@"
