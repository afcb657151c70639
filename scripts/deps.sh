#!/usr/bin/env bash
# Installs the Debian packages that `make test` (or `make demo`) needs, as
# listed in scripts/packages.txt, the one place they are named.
#
#   scripts/deps.sh [test|demo]            install what is missing
#   scripts/deps.sh --list [test|demo]     print the packages
#   scripts/deps.sh --missing [test|demo]  print the ones not installed
#
# Installing needs root: as another user it runs apt-get through sudo.
# apt's output goes to a log file, shown only when apt fails. When another
# apt or dpkg holds the lock, it waits (up to $APT_LOCK_WAIT seconds,
# default 600) instead of failing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
list="$here/packages.txt"

mode=install
case "${1:-}" in
--list | --missing) mode=${1#--}; shift ;;
-h | --help) sed -n '2,12s/^# \{0,1\}//p' "$0"; exit 0 ;;
esac
set_=${1:-test}
case "$set_" in
test | demo) ;;
*) echo "deps: unknown set '$set_' (want test or demo)" >&2; exit 2 ;;
esac

# packages of the set: every line for test, lines marked demo for demo.
packages() {
	sed -e 's/#.*//' "$list" | awk -v set="$set_" 'NF && (set == "test" || $2 == "demo") { print $1 }'
}

missing() {
	local p
	for p in $(packages); do
		dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
	done
}

case $mode in
list) packages; exit 0 ;;
missing) missing; exit 0 ;;
esac

need=$(missing | tr '\n' ' ')
need=${need% }
[ -z "$need" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null; then
		echo "deps: installing with sudo: $need"
		exec sudo "$0" "$set_"
	fi
	echo "deps: as root, run:  apt-get install --no-install-recommends $need" >&2
	exit 1
fi

export DEBIAN_FRONTEND=noninteractive
log=$(mktemp "${TMPDIR:-/tmp}/tpm-fido-apt.XXXXXX")
wait_max=${APT_LOCK_WAIT:-600}

# apt_get runs apt-get with its output in $log. While another apt or dpkg
# holds a lock (apt-get update has no lock timeout of its own), it retries
# every 5 s for up to $wait_max seconds.
apt_get() {
	local start=$SECONDS said=""
	while :; do
		if apt-get -q -o DPkg::Lock::Timeout="$wait_max" "$@" >"$log.try" 2>&1; then
			cat "$log.try" >>"$log"
			rm -f "$log.try"
			return 0
		fi
		cat "$log.try" >>"$log"
		if ! grep -qE 'Could not get lock|Unable to lock|Unable to acquire the dpkg frontend lock' "$log.try" ||
			((SECONDS - start >= wait_max)); then
			rm -f "$log.try"
			return 1
		fi
		if [ -z "$said" ]; then
			echo "deps: another apt or dpkg is running; waiting for it (up to ${wait_max}s)"
			said=1
		fi
		sleep 5
	done
}

start=$SECONDS
echo "deps: installing $(wc -w <<<"$need") Debian package(s): $need"
if ! apt_get update || ! apt_get install -y --no-install-recommends $need; then
	echo "deps: apt-get failed; its last lines (all of it in $log):" >&2
	tail -n 20 "$log" >&2
	exit 1
fi
rm -f "$log"
echo "deps: done in $((SECONDS - start))s"
