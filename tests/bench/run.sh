#!/bin/sh
# All vmops benchmarks in one throwaway PostgreSQL cluster; the fleet is
# generated once (tests/bench/gen-fleet.sh) and shared.  Figures go to
# stdout; BENCHMARKS.md says how to read them.
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
[ -n "${VMOPS_TEST_PGHOST:-}" ] || exec tests/pgcluster.sh "$0" "$@"

echo "bench: $(nproc) CPUs, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)," \
	"$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1), load $(cut -d' ' -f1-3 /proc/loadavg)"
rc=0
tests/bench/gen-fleet.sh
for b in tests/bench/bench-*.sh; do
	"$b" || rc=1
done
exit $rc
