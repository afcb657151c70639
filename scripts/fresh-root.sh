#!/usr/bin/env bash
# Proves the README's two commands on a fresh Debian 12: builds a minbase
# root with debootstrap, gives it only what the README tells a new user to
# install (its prerequisites line, and Go, copied from this host's
# /usr/local/go as the README's tarball would put it), clones this
# repository into it, and runs exactly the README's `make demo` and
# `make test` there, as root. Prints the time of each step and the last
# lines of each command; the whole output is kept in a log file.
#
#   sudo scripts/fresh-root.sh [--keep] [REV]
#
# REV (default HEAD) is the commit tested: uncommitted changes are not.
# FUZZTIME is passed on to `make test` (the README allows a shorter one).
# TPM_FIDO_VM_LOCK (default /tmp/tpm-fido-vm.lock) is a lock file on this
# host that the root's VM boots take, so they never overlap with another
# VM on the machine. The Debian mirror is the one apt uses here.
# --keep leaves the root in place (its path is printed).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
keep=""
if [ "${1:-}" = --keep ]; then keep=1; shift; fi
rev=$(git -C "$repo" rev-parse --verify "${1:-HEAD}^{commit}")
suite=bookworm
vmlock=${TPM_FIDO_VM_LOCK:-/tmp/tpm-fido-vm.lock}

[ "$(id -u)" -eq 0 ] || { echo "fresh-root: needs root (debootstrap, chroot, mounts)" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "fresh-root: needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
[ -x /usr/local/go/bin/go ] || { echo "fresh-root: needs Go in /usr/local/go on this host" >&2; exit 1; }

# The README lines this script runs; if the README changes them, this
# script must change with it.
readme_prereq='sudo apt-get install make git ca-certificates curl'
readme_path='export PATH=$PATH:/usr/local/go/bin'
readme_demo='make demo'
readme_test='make test'
for l in "$readme_prereq" "$readme_path" "$readme_demo" "$readme_test"; do
	grep -qxF -- "$l" "$repo/README.md" ||
		{ echo "fresh-root: README.md has no line '$l' any more: update this script" >&2; exit 1; }
done

# The Debian mirror apt uses on this host (deb822 or one-line sources).
mirror=$(awk '/^URIs:/ && $2 !~ /security/ { print $2; exit }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
if [ -z "$mirror" ]; then
	mirror=$(awk '$1 == "deb" && $3 == "'$suite'" { print $2; exit }' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}

root=$(mktemp -d /tmp/tpm-fido-fresh-root.XXXXXX)
chmod 0755 "$root" # the root directory of a machine
log=$root.log
mounted=()
cleanup() {
	local m
	for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
		umount -R "${mounted[i]}" 2>/dev/null || umount -lR "${mounted[i]}" 2>/dev/null || true
	done
	if [ -n "$keep" ]; then
		echo "fresh-root: root kept in $root"
	else
		rm -rf --one-file-system "$root"
	fi
	echo "fresh-root: whole log in $log"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

t0=$SECONDS
step() { echo "fresh-root: [$(date +%T), +$((SECONDS - t0))s] $*"; }

# run_logged TITLE CMD...: runs CMD with its output in the log, prints how
# long it took and its last lines; fails the script when CMD fails.
run_logged() {
	local title=$1 s=$SECONDS rc=0
	shift
	echo "===== $title" >>"$log"
	"$@" >>"$log" 2>&1 || rc=$?
	step "$title: $([ $rc -eq 0 ] && echo ok || echo "FAILED (exit $rc)") in $((SECONDS - s))s; last lines:"
	tail -n "${TAIL:-12}" "$log" | sed 's/^/    | /'
	return $rc
}

step "debootstrap --variant=minbase $suite from $mirror into $root"
run_logged "debootstrap" debootstrap --variant=minbase "$suite" "$root" "$mirror"

# What a Debian 12 machine has that debootstrap leaves out: apt sources
# with their package lists, name resolution. apt answers "yes" for the
# non-interactive user that this script is.
if ls /etc/apt/sources.list.d/*.sources >/dev/null 2>&1; then
	cp /etc/apt/sources.list.d/*.sources "$root/etc/apt/sources.list.d/"
	: >"$root/etc/apt/sources.list"
fi
cp /etc/resolv.conf "$root/etc/resolv.conf"
echo 'APT::Get::Assume-Yes "true";' >"$root/etc/apt/apt.conf.d/90assume-yes"

# Go, where the README's tarball puts it.
step "copying this host's Go ($(/usr/local/go/bin/go version | awk '{print $3}')) into /usr/local/go"
cp -a /usr/local/go "$root/usr/local/go"

# The source, as `git clone` would give it (from this repository, at REV).
step "cloning $repo at $(git -C "$repo" log -1 --format='%h %s' "$rev")"
git clone -q --no-hardlinks "$repo" "$root/root/tpm-fido"
git -C "$root/root/tpm-fido" checkout -q "$rev"

mount -t proc proc "$root/proc" && mounted+=("$root/proc")
mount --rbind /sys "$root/sys" && mount --make-rslave "$root/sys" && mounted+=("$root/sys")
mount --rbind /dev "$root/dev" && mount --make-rslave "$root/dev" && mounted+=("$root/dev")
touch "$vmlock" "$root/run/tpm-fido-vm.lock"
mount --bind "$vmlock" "$root/run/tpm-fido-vm.lock" && mounted+=("$root/run/tpm-fido-vm.lock")

# extra_cas ROOT: adds to ROOT's trusted CAs the ones in this host's bundle
# that ROOT's bundle lacks.
extra_cas() {
	local bundle=/etc/ssl/certs/ca-certificates.crt dir="$1/usr/local/share/ca-certificates/host"
	[ -f "$bundle" ] && [ -f "$1$bundle" ] || return 0
	mkdir -p "$dir"
	awk -v dir="$dir" '
		/BEGIN CERTIFICATE/ { pem = "" }
		{ pem = pem $0 "\n" }
		/END CERTIFICATE/ {
			if (FILENAME == ARGV[1]) have[pem] = 1
			else if (!(pem in have)) { n++; f = dir "/host-" n ".crt"; printf "%s", pem > f; close(f) }
		}
		END { print n + 0 }' "$1$bundle" "$bundle" >"$dir.count"
	step "adding this host's $(cat "$dir.count") CA certificate(s) that Debian's bundle lacks (this network's)"
	rm -f "$dir.count"
	chroot "$1" update-ca-certificates >>"$log" 2>&1
}

# in_root CMD: runs a shell command in the root as a login shell of root
# would, in the clone, with nothing from this host's environment.
in_root() {
	env -i HOME=/root LANG=C.UTF-8 TERM=dumb USER=root LOGNAME=root \
		PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		${FUZZTIME:+FUZZTIME=$FUZZTIME} TPM_FIDO_VM_LOCK=/run/tpm-fido-vm.lock \
		chroot "$root" /bin/bash -c "set -e; cd /root/tpm-fido; $1"
}

run_logged "apt-get update (a fresh install has its package lists)" in_root 'apt-get update -q'
run_logged "README: $readme_prereq" in_root "${readme_prereq#sudo }"
# This network's own CAs (a TLS-intercepting proxy, for one), which every
# machine on it trusts: the certificates of this host's bundle that the
# root's fresh ca-certificates lacks. Without them Go cannot fetch its
# modules here.
extra_cas "$root"
run_logged "README: $readme_demo" in_root "$readme_path; $readme_demo"
TAIL=25 run_logged "README: $readme_test${FUZZTIME:+ (FUZZTIME=$FUZZTIME)}" in_root "$readme_path; $readme_test"
step "both README commands passed in a fresh $suite root"
