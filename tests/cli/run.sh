#!/bin/sh
# CLI golden tests: each tests/cli/cases/NAME.sh runs real binaries against
# a fresh database; its transcript (commands, stdout, stderr, exit codes),
# with the throwaway cluster's socket dir and port masked, must equal
# tests/expected/NAME.out.  VMOPS_UPDATE_GOLDEN=1 rewrites the golden files.
# Helpers for cases: tests/cli/lib.sh.  PROG-usage cases are bad command
# lines (no database contact), PROG-basic ones real runs on fixture rows.
#   tests/cli/run.sh [GLOB]      e.g. 'parity-*'; default: every case
# Ends with "cli: N passed, N failed".
set -u
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
if [ -z "${VMOPS_TEST_PGHOST:-}" ]; then
	exec tests/pgcluster.sh "$0" "$@"
fi
export VMOPS_BIN_DIR="${VMOPS_BIN_DIR:-$top/bin}"
passed=0
failed=0
n=0
for c in tests/cli/cases/${1:-*}.sh; do
	name=$(basename "$c" .sh)
	n=$((n + 1))
	db="cli_${name}_$$_$n"
	db=$(echo "$db" | tr -c 'a-zA-Z0-9_\n' '_')
	psql -qAtX -c "CREATE DATABASE $db" >/dev/null || exit 1
	want=tests/expected/$name.out
	got=$(mktemp)
	DB="host=$PGHOST port=$PGPORT dbname=$db" PATH="$VMOPS_BIN_DIR:$PATH" \
		sh "$top/tests/cli/lib.sh" "$c" 2>&1 |
		sed -e "s#$PGHOST#<PGHOST>#g" -e "s#$PGPORT#<PGPORT>#g" -e "s#$db#<DB>#g" >"$got"
	if [ "${VMOPS_UPDATE_GOLDEN:-}" = 1 ]; then
		cp "$got" "$want"
	fi
	if [ -f "$want" ] && diff -u "$want" "$got" >"$got.diff"; then
		passed=$((passed + 1))
	else
		failed=$((failed + 1))
		echo "FAIL $name"
		if [ -f "$want" ]; then cat "$got.diff"; else echo "  (no $want)"; cat "$got"; fi
	fi
	rm -f "$got" "$got.diff"
done
echo "cli: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
