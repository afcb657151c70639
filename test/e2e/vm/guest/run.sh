# Runs one scenario function (s_NAME) of the current phase.
. /e2e/lib.sh
phase=$(sed -n 's/.*e2e\.phase=\([a-z0-9]*\).*/\1/p' /proc/cmdline)
E2E_DEFINE_ONLY=1
. "/e2e/phase-$phase.sh"
"s_$(echo "$1" | tr - _)"
