#!/bin/sh
# Run one Criterion suite (or a few) against a throwaway PostgreSQL, with the
# test guest built: the quick loop while working on one area.
#   tests/run-one.sh test_migrate [criterion options, e.g. --filter 'migrate/*']
# Build first with `make tests`.  Uses build/ and bin/ of this tree.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
if [ -z "${VMOPS_TEST_PGHOST:-}" ]; then
	exec tests/pgcluster.sh "$0" "$@"
fi
suite=$1; shift
# The launch-spec policy (vmops(7)): the test guest, and the images tests
# make under /tmp, are where launches may take files from.
export VMOPS_IMAGE_DIRS="${VMOPS_IMAGE_DIRS:-$top/build/guest:/tmp}"
psql -qAtX -c "CREATE DATABASE vmops_template" >/dev/null
bin/vm-fleet --db "dbname=vmops_template" -q init
if [ -z "${VMOPS_SKIP_QEMU:-}" ]; then
	eval "$(tests/guest/build-guest.sh "$top/build/guest" 2>/dev/null | grep '^VMOPS_TEST_[A-Z]*=' | sed 's/^/export /')"
fi
wrap=""
# The test hosts' suite runs inside them (tests/hosts/with-hosts.sh), one case at a time.
[ "$suite" = test_hosts ] && wrap="$top/tests/hosts/with-hosts.sh" && set -- --jobs 1 "$@"
VMOPS_BIN_DIR="${VMOPS_BIN_DIR:-$top/bin}" $wrap "build/tests/$suite" "$@"
