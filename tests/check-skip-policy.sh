#!/bin/sh
# tests/run-all.sh's tally, tried on stand-in suites (scripts that print
# Criterion's lines): a skipped test fails the run unless the operator opted
# out with VMOPS_SKIP_QEMU=1; a case left to another pass ("elsewhere:") is
# counted apart, never as passed or skipped; a failing suite fails the run,
# and so does a suite that should have run and did not.
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
d=$(mktemp -d /tmp/vmops-skip-policy.XXXXXX)
trap 'rm -rf "$d"' EXIT
passed=0
failed=0

standin() {   # NAME EXIT LINES...
	f="$d/$1"; rc=$2; shift 2
	{ echo '#!/bin/sh'; for l in "$@"; do printf "echo '%s'\n" "$l"; done; echo "exit $rc"; } >"$f"
	chmod +x "$f"
}
standin test_skips 0 "[SKIP] standin::needs_guest: no test guest" "[PASS] standin::other: (0.00s)" \
	"[====] Synthesis: Tested: 2 | Passing: 1 | Failing: 0 | Crashing: 0 "
standin test_elsewhere 0 "[SKIP] standin::real_qemu: elsewhere: real-QEMU case, runs in the plain pass" \
	"[PASS] standin::other: (0.00s)" "[====] Synthesis: Tested: 2 | Passing: 1 | Failing: 0 | Crashing: 0 "
standin test_fails 1 "[FAIL] standin::broken: (0.00s)" \
	"[====] Synthesis: Tested: 1 | Passing: 0 | Failing: 1 | Crashing: 0 "

expect() {   # WHAT WANT_RC WANT_TALLY [WANT_LINE] -- ENV...
	what=$1 want_rc=$2 want_tally=$3 want_line=$4; shift 5
	out=$(env "$@" tests/run-all.sh 2>&1)
	rc=$?
	tally=$(echo "$out" | tail -n1)
	if { [ "$want_rc" = 0 ] && [ "$rc" -ne 0 ]; } || { [ "$want_rc" != 0 ] && [ "$rc" -eq 0 ]; } ||
		[ "$tally" != "$want_tally" ] || ! echo "$out" | grep -qF -- "$want_line"; then
		echo "FAIL $what: exit $rc, expected ${want_rc}; output:"; echo "$out" | sed 's/^/  /'
		failed=$((failed + 1))
	else
		passed=$((passed + 1))
	fi
}

expect "a skip without the opt-out fails" 1 "check: 1 passed, 1 failed, 1 skipped" \
	"1 tests skipped without VMOPS_SKIP_QEMU=1" -- VMOPS_CHECK_SUITES="$d/test_skips" VMOPS_SKIP_QEMU=
expect "a skip with VMOPS_SKIP_QEMU=1 passes and says so" 0 "check: 1 passed, 0 failed, 1 skipped" \
	"VMOPS_SKIP_QEMU=1: 1 tests skipped by request" -- VMOPS_CHECK_SUITES="$d/test_skips" VMOPS_SKIP_QEMU=1
expect "VMOPS_SKIP_QEMU=0 is no opt-out" 1 "check: 1 passed, 1 failed, 1 skipped" \
	"skipped without" -- VMOPS_CHECK_SUITES="$d/test_skips" VMOPS_SKIP_QEMU=0
expect "a case left to another pass is counted apart" 0 "check: 1 passed, 0 failed, 0 skipped" \
	"1 cases left to another pass" -- VMOPS_CHECK_SUITES="$d/test_elsewhere" VMOPS_SKIP_QEMU=
expect "a failing suite fails" 1 "check: 1 passed, 1 failed, 0 skipped" \
	"FAIL test_fails" -- VMOPS_CHECK_SUITES="$d/test_elsewhere $d/test_fails" VMOPS_SKIP_QEMU=
# The lanes (run-all.sh): a failure or a skip in the light lane counts as in the other.
expect "a failing suite in the light lane fails" 1 "check: 1 passed, 1 failed, 0 skipped" \
	"FAIL test_fails" -- VMOPS_CHECK_SUITES="$d/test_elsewhere $d/test_fails" VMOPS_LIGHT_SUITES=test_fails \
	VMOPS_SKIP_QEMU=
expect "a skip in the light lane fails" 1 "check: 2 passed, 1 failed, 1 skipped" \
	"1 tests skipped without VMOPS_SKIP_QEMU=1" -- VMOPS_CHECK_SUITES="$d/test_skips $d/test_elsewhere" \
	VMOPS_LIGHT_SUITES=test_skips VMOPS_SKIP_QEMU=
# A suite that should have run and did not (a lane that forgot it) fails the run.
expect "a suite that did not run fails" 1 "check: 1 passed, 1 failed, 0 skipped" \
	"FAIL test_forgotten: did not run" -- VMOPS_CHECK_SUITES="$d/test_elsewhere" \
	VMOPS_CHECK_EXPECT="test_elsewhere test_forgotten" VMOPS_SKIP_QEMU=
echo "skip-policy: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
