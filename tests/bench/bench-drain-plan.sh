#!/bin/sh
# The drain plan (lib/drain/plan.c) on generated fleets: makespan against
# the lower bound max(total / (lanes x rate), largest / rate), lanes =
# min(targets, --max-parallel), 2 s setup per move, 100 MiB/s per target.
# 40 sandboxes of mixed sizes (256 MiB .. 16 GiB, current memory 30-100 %),
# 4 targets, seeds 1..${VMOPS_BENCH_DRAIN_SEEDS:-10}; ample room and tight
# room (1.2x what the sandboxes need); 4 and 2 outbound at once; plain
# greedy and with lookahead 3.  No database.  Fails when a ratio is over 1.15.
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
seeds=${VMOPS_BENCH_DRAIN_SEEDS:-10}
out=build/bench/bench-drain-plan
mkdir -p build/bench
${CC:-cc} -std=c17 -D_GNU_SOURCE -O2 -Ilib $(pkg-config --cflags libpq) -o "$out" \
	tests/bench/bench-drain-plan.c lib/drain/plan.c lib/error.c -lm
rc=0
echo "== drain plan: 40 sandboxes, 4 targets, seeds 1..$seeds"
for par in 4 2; do
	for room in ample tight; do
		for look in 0 3; do
			echo "-- max-parallel $par, room $room, lookahead $look"
			r=0
			"$out" 40 4 "$par" "$seeds" "$look" "$room" > "$out.txt" || r=$?
			if [ "${VMOPS_BENCH_VERBOSE:-}" ]; then cat "$out.txt"; else tail -n 1 "$out.txt"; fi
			[ "$r" = 0 ] || rc=1
		done
	done
done
exit $rc
