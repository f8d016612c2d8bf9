#!/bin/sh
# Runs one CLI case with its helpers.  In a case:
#   run CMD ARGS...   print "$ CMD ARGS", its stdout and stderr, "[exit N]"
#   sql "SQL"         print the query and its result (psql -At)
# $DB is the case's own fresh database; vm-fleet init is not run for you.
run() {
	echo "\$ $*"
	"$@" 2>&1
	echo "[exit $?]"
}
sql() {
	echo "sql> $1"
	psql -qAtX -d "$DB" -c "$1" 2>&1
}
. "$1"
