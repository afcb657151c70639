#!/usr/bin/env bash
# Runs every Go fuzz target in the module for $FUZZTIME (default 60s) each
# and prints the executions each one reached.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime="${FUZZTIME:-60s}"
status=0
while IFS=: read -r file name; do
	pkg="./$(dirname "$file")"
	echo "== fuzz $pkg $name ($fuzztime)"
	if ! go test -run='^$' -fuzz="^${name}\$" -fuzztime="$fuzztime" "$pkg" 2>&1 | tee /tmp/fuzz-$$.log | grep -E 'fuzz: elapsed|^(ok|FAIL|---)' | tail -3; then
		:
	fi
	if grep -qE '^(FAIL|--- FAIL)' /tmp/fuzz-$$.log; then
		cat /tmp/fuzz-$$.log
		status=1
	fi
done < <(grep -rHoE --include='*_test.go' '^func (Fuzz[A-Za-z0-9_]+)' . | sed -E 's#^\./##; s#:func #:#' | sort)
rm -f /tmp/fuzz-$$.log
exit $status
