#!/usr/bin/env bash
# Runs every Go fuzz target in the module for $FUZZTIME (default 60s) each
# and prints the executions each one reached. A target fails the run when
# the fuzzer reports a failure. The one exception is the fuzzing engine's
# own end-of-run race ("context deadline exceeded" with no failing input
# written), which is not a finding: that target is run once more.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime="${FUZZTIME:-60s}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0

fuzz_once() { # pkg name
	go test -run='^$' -fuzz="^$2\$" -fuzztime="$fuzztime" "$1" >"$log" 2>&1
}

engine_timeout_only() {
	grep -q 'context deadline exceeded' "$log" && ! grep -q 'Failing input written' "$log"
}

while IFS=: read -r file name; do
	pkg="./$(dirname "$file")"
	echo "== fuzz $pkg $name ($fuzztime)"
	if ! fuzz_once "$pkg" "$name" && engine_timeout_only; then
		echo "   (the fuzzing engine timed out at the end of the run without a failing input; running again)"
		fuzz_once "$pkg" "$name" || true
	fi
	grep -E 'fuzz: elapsed' "$log" | tail -1 || true
	if grep -qE '^(FAIL|--- FAIL)' "$log"; then
		cat "$log"
		status=1
	else
		grep -E '^ok' "$log" || true
	fi
done < <(grep -rHoE --include='*_test.go' '^func (Fuzz[A-Za-z0-9_]+)' . | sed -E 's#^\./##; s#:func #:#' | sort)
exit $status
