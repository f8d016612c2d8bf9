#!/bin/sh
# Runs one CLI case with its helpers.  In a case:
#   runs CMD ARGS...  print the command with its arguments quoted where
#                     needed: "$ CMD ARGS", stdout as is, then
#                     each stderr line as "stderr: LINE", "[exit N]".  With
#                     --json among ARGS, a stdout that is not empty must be
#                     exactly one JSON document, else the line
#                     "[stdout is not one JSON document]" follows it.
#   sql "SQL"         print the query and its result (psql -At)
# $DB is the case's own fresh database; vm-fleet init is not run for you.
# $NODB is a database that does not exist: a usage error must come before
# any connection (reaching for it would be exit 5, not 2).
# Cases run from the top of the tree, so tests/fixtures/... is a stable
# path.  A case masks what varies from run to run (times, durations, its
# own processes' pids and sockets) by piping run/runs through sed.
NODB="host=/nonexistent-vmops port=1"
# The JSON check: Debian's python3 (a dependency) when there, as a version
# manager's shim may take a second to start.
PYTHON3=python3
[ -x /usr/bin/python3 ] && PYTHON3=/usr/bin/python3
_tmp=$(mktemp -d)
runs() {
	_line='$'
	for _a in "$@"; do
		case $_a in
		*"'"*) _line="$_line '$(printf %s "$_a" | sed "s/'/'\\\\''/g")'" ;;
		'' | *[!A-Za-z0-9_./=:@%+,-]*) _line="$_line '$_a'" ;;
		*) _line="$_line $_a" ;;
		esac
	done
	echo "$_line"
	"$@" >"$_tmp/out" 2>"$_tmp/err"
	_rc=$?
	cat "$_tmp/out"
	for _a in "$@"; do
		if [ "$_a" = --json ] && [ -s "$_tmp/out" ]; then
			"$PYTHON3" -c 'import json, sys; json.load(sys.stdin)' <"$_tmp/out" 2>/dev/null ||
				echo "[stdout is not one JSON document]"
			break
		fi
	done
	while IFS= read -r _l || [ -n "$_l" ]; do
		echo "stderr: $_l"
	done <"$_tmp/err"
	echo "[exit $_rc]"
}
sql() {
	echo "sql> $1"
	psql -qAtX -d "$DB" -c "$1" 2>&1
}
. "$1"
rm -rf "$_tmp"
