#!/bin/sh
# The whole `make check` suite, inside one throwaway PostgreSQL cluster.
#   1. unit + integration tests (Criterion; real PostgreSQL, real QEMU),
#      in the plain build and again built with ASan/UBSan.  Each real-QEMU
#      case runs in one of the two: the plain build for the fault matrix and
#      the suites too slow under ASan (VMOPS_ASAN_QEMU_ELSEWHERE), the ASan
#      build for the others; the other build counts it as left elsewhere.
#      test_pgrestart (the matrix's PostgreSQL-restart column) restarts this
#      cluster: it runs first, alone, with --jobs 1.
#      test_soak (the concurrency soak) runs only with VMOPS_CHECK_LONG=1
#      (`make check-long`).
#   2. valgrind over the pure-library suites, one case at a time
#   3. --help / man page / completions agreement and man page lint, and
#      this script's own skip policy (tests/check-skip-policy.sh)
#   4. the hypervisor fakes against their API documents (tests/fakes/conformance)
#   5. CLI golden tests (tests/cli) and the unprivileged run
#      (tests/check-nonroot.sh), last and alone: they look at this host's
#      processes.
# After test_pgrestart, two lanes run at once: the real-QEMU suites, and the
# light lane (VMOPS_LIGHT_SUITES: suites without a guest, whose cases mostly
# wait on the database or the fakes, then 2 to 4; then VMOPS_LIGHT_TAIL, the
# guest suites that mostly wait: test_hosts).
# Ends with "check: N passed, N failed, N skipped".  A skipped test fails the
# run unless the operator opted out explicitly (VMOPS_SKIP_QEMU=1), and then a
# line before the tally says so.  Cases a pass leaves to another pass on
# purpose are counted apart, never as passed.
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"

if [ -z "${VMOPS_TEST_PGHOST:-}" ]; then
	exec tests/pgcluster.sh "$0" "$@"
fi

log=$(mktemp -d /tmp/vmops-check.XXXXXX)
# The launch-spec policy (vmops(7)): the test guest, and the images tests
# make under /tmp, are where launches may take files from.
export VMOPS_IMAGE_DIRS="${VMOPS_IMAGE_DIRS:-$top/build/guest:/tmp}"
jobs=${VMOPS_TEST_JOBS:-2}

# Each suite's figures go to a file of their own (the lanes are subshells);
# the closing tally sums them.
#   tally NAME PASSED FAILED SKIPPED ELSEWHERE
tally() { echo "$2 $3 $4 $5 $1" >"$log/$1.tally"; }
# One suite's report, printed in one write so that the lanes do not mix lines.
report() { cat "$log/$1.report"; }

# Criterion: sum its Synthesis line into our totals.
#   run_criterion NAME COMMAND...   (COMMAND gets --jobs N appended)
# (The shell has no local variables: these functions' own names - name, out,
# j, rc, secs, syn, e, sk, p, f, c, nf, line - are not used by their callers.)
run_criterion() {
	name=$1; shift
	out="$log/$name.log"
	j=$jobs
	# A suite that restarts the cluster must not share it, even with itself.
	case $name in *test_pgrestart) j=1 ;; esac
	# The test hosts' cases stop sshd and take links down: one at a time.
	case $name in *test_hosts) j=1 ;; esac
	# The hypervisor fakes mostly wait (on purpose: hangs, slow answers):
	# more at once costs no CPU.
	case $name in *test_chv | *test_firecracker | *test_snapshot_rest) j=$((jobs * 2)) ;; esac
	t0=$(date +%s)
	"$@" --jobs "$j" --verbose >"$out" 2>&1
	rc=$?
	secs=$(( $(date +%s) - t0 ))
	syn=$(grep -a 'Synthesis:' "$out" | tail -n1)
	# Criterion's synthesis hides skips: count its [SKIP] lines.
	e=$(grep -a -c '^\[SKIP\] .*: elsewhere: ' "$out")
	sk=$(( $(grep -a -c '^\[SKIP\] ' "$out") - e ))
	p=$(echo "$syn" | sed -n 's/.*Passing: \([0-9]*\).*/\1/p')
	f=$(echo "$syn" | sed -n 's/.*Failing: \([0-9]*\).*/\1/p')
	c=$(echo "$syn" | sed -n 's/.*Crashing: \([0-9]*\).*/\1/p')
	nf=0
	if [ "$rc" -ne 0 ] || [ -z "$syn" ]; then
		nf=$(( ${f:-0} + ${c:-0} )); [ "$nf" -eq 0 ] && nf=1
	fi
	tally "$name" "${p:-0}" "$nf" "$sk" "$e"
	{
		[ "$sk" -gt 0 ] && grep -a '^\[SKIP\] ' "$out" | grep -av ': elsewhere: ' | sed "s/^/skip $name: /" | head -20
		if [ "$nf" -gt 0 ]; then
			echo "FAIL $name (exit $rc, ${secs}s)"
			grep -a -E '\[----\]|\[FAIL\]|ERROR|Assertion|runtime error|Sanitizer|Synthesis|==[0-9]+==' "$out" | head -40
		else
			echo "ok   $name: $syn(${secs}s)" | sed 's/\[====\] //'
		fi
	} >"$log/$name.report"
	report "$name"
}

# A script that prints its own "NAME: N passed, N failed" line.
run_script() {
	name=$(basename "$1")
	t0=$(date +%s)
	"$1" >"$log/$name.log" 2>&1
	rc=$?
	secs=$(( $(date +%s) - t0 ))
	line=$(grep -E '^[a-z-]+: [0-9]+ passed, [0-9]+ failed' "$log/$name.log" | tail -n1)
	p=$(echo "$line" | sed -n 's/.*: \([0-9]*\) passed.*/\1/p')
	f=$(echo "$line" | sed -n 's/.* \([0-9]*\) failed.*/\1/p')
	nf=0
	if [ "$rc" -ne 0 ] || [ -z "$line" ]; then
		nf=${f:-1}; [ "$nf" -eq 0 ] && nf=1
	fi
	tally "$name" "${p:-0}" "$nf" 0 0
	{
		if [ "$nf" -gt 0 ]; then
			echo "FAIL $1 (${secs}s)"; grep -E '^(FAIL|---|\+\+\+|[-+])' "$log/$name.log" | head -60
		else
			echo "ok   $1: $line (${secs}s)"
		fi
	} >"$log/$name.report"
	report "$name"
}

# Suites without a real-QEMU case: they share the machine with the QEMU lane.
light_suites=${VMOPS_LIGHT_SUITES:-test_bundle test_chv test_db test_drain_plan test_drain_schema test_firecracker \
test_interrupt test_invariants test_output test_parity test_parse test_proc test_reap test_rundir test_schema \
test_snapshot_rest}
# Guest suites that mostly wait (test_hosts: ssh, a shaped link, one case at
# a time): the light lane's tail, after valgrind, so the QEMU lane is shorter.
light_tail=${VMOPS_LIGHT_TAIL:-test_hosts}
# Suites whose real-QEMU cases run in the plain pass (the rest run them under ASan).
asan_elsewhere=${VMOPS_ASAN_QEMU_ELSEWHERE:-test_faults test_pgrestart test_soak test_drain test_snapshot}

# The soak belongs to `make check-long`.
long_only() {
	case $1 in
	test_soak) [ "${VMOPS_CHECK_LONG:-0}" = 0 ] ;;
	*) false ;;
	esac
}

# test_hosts runs inside its test hosts (network namespaces, sshd).
hosts_for() {
	case $1 in test_hosts) echo "$top/tests/hosts/with-hosts.sh" ;; esac
}

# plain NAME / asan NAME: one suite in one build; the pass that does not run
# its real-QEMU cases counts them as left elsewhere.
plain() {
	[ -x "build/tests/$1" ] && ! long_only "$1" || return 0
	where=elsewhere:asan
	case " $asan_elsewhere " in *" $1 "*) where=plain ;; esac
	run_criterion "$1" env VMOPS_BIN_DIR="$top/bin" VMOPS_QEMU_CASES=$where $(hosts_for "$1") "build/tests/$1"
}
asan() {
	[ -x "build-san/tests/$1" ] && ! long_only "$1" || return 0
	where=plain
	case " $asan_elsewhere " in *" $1 "*) where=elsewhere:plain ;; esac
	run_criterion "asan:$1" env VMOPS_BIN_DIR="$top/build-san/bin" VMOPS_QEMU_CASES=$where \
		ASAN_OPTIONS=abort_on_error=1:detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		LSAN_OPTIONS=suppressions="$top/tests/lsan.supp":print_suppressions=0 $(hosts_for "$1") "build-san/tests/$1"
}
is_light() { case " $light_suites $light_tail " in *" $1 "*) true ;; *) false ;; esac; }

lane_qemu() {
	for t in build/tests/test_*; do
		suite=$(basename "$t"); [ "$suite" = test_pgrestart ] || is_light "$suite" || plain "$suite"
	done
	for t in build-san/tests/test_*; do
		suite=$(basename "$t"); [ "$suite" = test_pgrestart ] || is_light "$suite" || asan "$suite"
	done
}

lane_light() {
	for light in $light_suites; do
		plain "$light"
		asan "$light"
	done
	for s in tests/check-docs.sh tests/check-skip-policy.sh tests/fakes/conformance; do
		[ -x "$s" ] && run_script "$s"
	done
	# valgrind one case at a time: it is CPU-bound, and the QEMU lane is not
	if command -v valgrind >/dev/null; then
		for vg in ${VMOPS_VALGRIND_SUITES:-test_parse test_output test_proc test_qmp}; do
			[ -x "build/tests/$vg" ] || continue
			jobs=1 run_criterion "valgrind:$vg" env VMOPS_QEMU_CASES=elsewhere:asan VMOPS_BIN_DIR="$top/bin" \
				valgrind --quiet --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
				--suppressions="$top/tests/valgrind.supp" --trace-children=yes "build/tests/$vg"
		done
	fi
	for light in $light_tail; do
		plain "$light"
		asan "$light"
	done
}

# A suite that should have run and has no tally failed: it did not run.
must_have_run() {
	for want in "$@"; do
		[ -e "$log/$want.tally" ] && continue
		echo "FAIL $want: did not run"
		tally "$want" 0 1 0 0
	done
}

run_everything() {
	echo "check: PostgreSQL at $PGHOST (port $PGPORT)"
	psql -qAtX -c "CREATE DATABASE vmops_template" >/dev/null || exit 1
	bin/vm-fleet --db "dbname=vmops_template" -q init || exit 1

	# The test guest (kernel + busybox initramfs), built once and cached.
	if [ -z "${VMOPS_SKIP_QEMU:-}" ] || [ "${VMOPS_SKIP_QEMU}" = 0 ]; then
		if tests/guest/build-guest.sh "$top/build/guest" >"$log/guest.log" 2>&1; then
			eval "$(grep '^VMOPS_TEST_[A-Z]*=' "$log/guest.log" | sed 's/^/export /')"
			echo "check: test guest $VMOPS_TEST_KERNEL $VMOPS_TEST_INITRD"
		else
			echo "check: building the test guest failed:"; tail -20 "$log/guest.log"
			tally guest 0 1 0 0
		fi
	fi

	# It restarts the cluster: alone.
	plain test_pgrestart
	asan test_pgrestart

	lane_light &
	light_pid=$!
	lane_qemu
	wait "$light_pid"

	# Every suite ran in both builds: one that did not is a failure, not a pass.
	for t in build/tests/test_*; do
		suite=$(basename "$t")
		[ -x "$t" ] && ! long_only "$suite" || continue
		must_have_run "$suite"
		[ -x "build-san/tests/$suite" ] && must_have_run "asan:$suite"
	done

	# They look at this host's processes and hypervisors: after the lanes.
	for s in tests/cli/run.sh tests/check-nonroot.sh; do
		[ -x "$s" ] && run_script "$s"
	done
}

# tests/check-skip-policy.sh runs this script on stand-in suites
# (VMOPS_CHECK_SUITES, executables printing Criterion's lines): only they run,
# and those of VMOPS_CHECK_EXPECT must have run.
# Those named in VMOPS_LIGHT_SUITES run in a lane of their own, as the real ones.
if [ -n "${VMOPS_CHECK_SUITES:-}" ]; then
	(for t in $VMOPS_CHECK_SUITES; do is_light "$(basename "$t")" && run_criterion "$(basename "$t")" "$t"; done) &
	light_pid=$!
	for t in $VMOPS_CHECK_SUITES; do is_light "$(basename "$t")" || run_criterion "$(basename "$t")" "$t"; done
	wait "$light_pid"
	# VMOPS_CHECK_EXPECT: the suites that should have run (default: the stand-ins).
	for t in ${VMOPS_CHECK_EXPECT:-$VMOPS_CHECK_SUITES}; do must_have_run "$(basename "$t")"; done
else
	run_everything
fi

passed=0 failed=0 skipped=0 elsewhere=0 failures="" skip_list=""
for f in "$log"/*.tally; do
	[ -e "$f" ] || continue
	read -r p n sk e name <"$f"
	passed=$((passed + p)); elsewhere=$((elsewhere + e))
	[ "$n" -gt 0 ] && failed=$((failed + n)) && failures="$failures $name"
	[ "$sk" -gt 0 ] && skipped=$((skipped + sk)) && skip_list="$skip_list $name"
done

# A skip is a failure unless the operator asked for it.
if [ "$skipped" -gt 0 ]; then
	if [ -n "${VMOPS_SKIP_QEMU:-}" ] && [ "${VMOPS_SKIP_QEMU}" != 0 ]; then
		echo "check: VMOPS_SKIP_QEMU=$VMOPS_SKIP_QEMU: $skipped tests skipped by request (in:$skip_list)"
	else
		echo "check: $skipped tests skipped without VMOPS_SKIP_QEMU=1 (in:$skip_list): counted as failures"
		failed=$((failed + skipped))
		failures="$failures skipped:$skip_list"
	fi
fi
[ "$elsewhere" -gt 0 ] &&
	echo "check: $elsewhere cases left to another pass (the fault matrix under ASan, real QEMU and pidfds under valgrind): not counted as passed"
if [ "$failed" -ne 0 ]; then
	echo "check: failed:$failures (logs in $log)"
else
	rm -rf "$log"
fi
echo "check: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
