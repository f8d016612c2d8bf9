#!/bin/sh
# The whole `make check` suite, inside one throwaway PostgreSQL cluster.
#   1. unit + integration tests (Criterion; real PostgreSQL, real QEMU)
#   2. the same tests built with ASan/UBSan, real QEMU included (not the
#      fault matrix, which runs in pass 1 only)
#      test_pgrestart (the matrix's PostgreSQL-restart column) restarts this
#      cluster: like every suite it runs alone, and with --jobs 1.
#      test_soak (the concurrency soak) runs only with VMOPS_CHECK_LONG=1
#      (`make check-long`).
#   3. valgrind over the pure-library suites
#   4. CLI golden tests (tests/cli)
#   5. --help / man page / completions agreement and man page lint, and
#      this script's own skip policy (tests/check-skip-policy.sh)
#   6. the hypervisor fakes against their API documents (tests/fakes/conformance)
# Ends with "check: N passed, N failed, N skipped".  A skipped test fails the
# run unless the operator opted out explicitly (VMOPS_SKIP_QEMU=1), and then a
# line before the tally says so.  Cases a pass leaves to another pass on
# purpose (valgrind runs no real QEMU) are counted apart, never as passed.
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
passed=0
failed=0
skipped=0
elsewhere=0
failures=""
skip_list=""
jobs=${VMOPS_TEST_JOBS:-2}

note_fail() { failed=$((failed + ${2:-1})); failures="$failures $1"; }

# Criterion: sum its Synthesis line into our totals.
#   run_criterion NAME COMMAND...   (COMMAND gets --jobs N appended)
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
	s=$(( $(grep -a -c '^\[SKIP\] ' "$out") - e ))
	elsewhere=$((elsewhere + e))
	if [ "$s" -gt 0 ]; then
		skipped=$((skipped + s))
		skip_list="$skip_list $name"
		grep -a '^\[SKIP\] ' "$out" | grep -av ': elsewhere: ' | sed "s/^/skip $name: /" | head -20
	fi
	p=$(echo "$syn" | sed -n 's/.*Passing: \([0-9]*\).*/\1/p')
	f=$(echo "$syn" | sed -n 's/.*Failing: \([0-9]*\).*/\1/p')
	c=$(echo "$syn" | sed -n 's/.*Crashing: \([0-9]*\).*/\1/p')
	passed=$((passed + ${p:-0}))
	if [ "$rc" -ne 0 ] || [ -z "$syn" ]; then
		n=$(( ${f:-0} + ${c:-0} )); [ "$n" -eq 0 ] && n=1
		note_fail "$name" "$n"
		echo "FAIL $name (exit $rc, ${secs}s)"; grep -a -E '\[----\]|\[FAIL\]|ERROR|Assertion|runtime error|Sanitizer|Synthesis|==[0-9]+==' "$out" | head -40
	else
		echo "ok   $name: $syn(${secs}s)" | sed 's/\[====\] //'
	fi
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
			note_fail guest
		fi
	fi

	# test_hosts runs inside its test hosts (network namespaces, sshd).
	hosts_for() {
		case $(basename "$1") in test_hosts) echo "$top/tests/hosts/with-hosts.sh" ;; esac
	}

	# The soak belongs to `make check-long`.
	long_only() {
		case $(basename "$1") in
		test_soak) [ "${VMOPS_CHECK_LONG:-0}" = 0 ] ;;
		*) false ;;
		esac
	}

	for t in build/tests/test_*; do
		[ -x "$t" ] || continue
		long_only "$t" && continue
		run_criterion "$(basename "$t")" env VMOPS_BIN_DIR="$top/bin" $(hosts_for "$t") "$t"
	done

	# Real QEMU runs under ASan too (the programs under test are the sanitized
	# ones), except the fault matrix, which would double its minutes.
	asan_elsewhere=${VMOPS_ASAN_QEMU_ELSEWHERE:-test_faults test_pgrestart test_soak test_drain test_snapshot}
	for t in build-san/tests/test_*; do
		[ -x "$t" ] || continue
		long_only "$t" && continue
		where=plain
		case " $asan_elsewhere " in *" $(basename "$t") "*) where=elsewhere ;; esac
		run_criterion "asan:$(basename "$t")" env VMOPS_BIN_DIR="$top/build-san/bin" \
			VMOPS_QEMU_CASES=$where \
			ASAN_OPTIONS=abort_on_error=1:detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
			LSAN_OPTIONS=suppressions="$top/tests/lsan.supp":print_suppressions=0 $(hosts_for "$t") "$t"
	done

	if command -v valgrind >/dev/null; then
		for n in ${VMOPS_VALGRIND_SUITES:-test_parse test_output test_proc test_qmp}; do
			t=build/tests/$n
			[ -x "$t" ] || continue
			run_criterion "valgrind:$n" env VMOPS_QEMU_CASES=elsewhere VMOPS_BIN_DIR="$top/bin" \
				valgrind --quiet --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
				--suppressions="$top/tests/valgrind.supp" --trace-children=yes "$t"
		done
	fi

	# CLI golden tests and the documentation checks print their own tallies.
	for s in tests/cli/run.sh tests/check-docs.sh tests/check-skip-policy.sh tests/fakes/conformance tests/check-nonroot.sh; do
		[ -x "$s" ] || continue
		"$s" >"$log/$(basename "$s").log" 2>&1
		rc=$?
		tally=$(grep -E '^[a-z-]+: [0-9]+ passed, [0-9]+ failed' "$log/$(basename "$s").log" | tail -n1)
		p=$(echo "$tally" | sed -n 's/.*: \([0-9]*\) passed.*/\1/p')
		f=$(echo "$tally" | sed -n 's/.* \([0-9]*\) failed.*/\1/p')
		passed=$((passed + ${p:-0}))
		if [ "$rc" -ne 0 ] || [ -z "$tally" ]; then
			n=${f:-1}; [ "$n" -eq 0 ] && n=1
			note_fail "$(basename "$s")" "$n"
			echo "FAIL $s"; grep -E '^(FAIL|---|\+\+\+|[-+])' "$log/$(basename "$s").log" | head -60
		else
			echo "ok   $s: $tally"
		fi
	done
}

# tests/check-skip-policy.sh runs this script on stand-in suites
# (VMOPS_CHECK_SUITES, executables printing Criterion's lines): only they run.
if [ -n "${VMOPS_CHECK_SUITES:-}" ]; then
	for t in $VMOPS_CHECK_SUITES; do
		run_criterion "$(basename "$t")" "$t"
	done
else
	run_everything
fi

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
