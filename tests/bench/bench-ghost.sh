#!/bin/sh
# ghost-reap's full scan-and-compare against `ps -eo pid,stat,lstart,args`
# over the same processes, side by side in one hyperfine run, with
# ${VMOPS_BENCH_GHOST_PROCS:-5000} extra processes on the machine (sleepers
# started here, killed at the end, and bounded to 30 min should the kill be
# missed).  The worker has 200 running VMMs in the database whose processes
# are some of those sleepers (each checked by pid and start time), plus three
# bare QEMUs (-machine none) carrying fleet tokens: one healthy, one ghost
# (its VMM destroyed), one unknown to the database.  ghost-reap runs with
# --dry-run, so every run does the same work.  Prints the medians; fails
# when ghost-reap is slower than ps alone.
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
[ -n "${VMOPS_TEST_PGHOST:-}" ] || exec tests/pgcluster.sh "$0" "$@"

n=${VMOPS_BENCH_GHOST_PROCS:-5000}
runs=${VMOPS_BENCH_GHOST_RUNS:-15}
db=ghost_bench
tmp=$(mktemp -d /tmp/vmops-bench-ghost.XXXXXX)

cleanup() {
	set +e  # every step, even when one fails (the spawner exits with its children)
	[ -s "$tmp/pids" ] && kill $(cat "$tmp/pids") 2>/dev/null
	[ -s "$tmp/spawner" ] && kill $(cat "$tmp/spawner") 2>/dev/null
	[ -s "$tmp/qemu.pids" ] && kill $(cat "$tmp/qemu.pids") 2>/dev/null
	wait 2>/dev/null
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

if ! command -v hyperfine >/dev/null; then
	echo "bench-ghost: hyperfine is not installed (make bench installs it): failed" >&2
	exit 1
fi

PGOPTIONS=-cclient_min_messages=warning psql -qAtX -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
bin/vm-fleet --db "dbname=$db" -q init
mkdir -p "$tmp/w"
# ghost-reap acts only on the host the worker records: this one.
export VMOPS_HOST_ID=bench-host
psql -qAtX -d "$db" -c "INSERT INTO workers (name, memory_mb, vcpus, run_dir, host_id)
	VALUES ('bench-w', 1048576, 4096, '$tmp/w', '$VMOPS_HOST_ID')" >/dev/null

before=$(ps -e --no-headers | wc -l)
# The sleepers: forked by one perl process (fork and exec of 5000 sleep(1)
# binaries takes minutes on a busy 2-core machine), each sleeping 30 min at
# most; their pids go to a file in this run's fresh directory.
perl -e '
	my ($n, $out) = @ARGV;
	my @p;
	for (1 .. $n) {
		my $c = fork;
		unless (defined $c) { kill "TERM", @p; die "fork: $!\n" }
		if (!$c) { $0 = "vmops-bench-sleeper"; sleep 1800; exit 0 }
		push @p, $c;
	}
	open my $f, ">", "$out.tmp" or die "$out: $!\n";
	print $f "$_\n" for @p;
	close $f;
	rename "$out.tmp", $out or die "$out: $!\n";
	1 while wait != -1;
' "$n" "$tmp/pids" &
echo $! >"$tmp/spawner"
for _ in $(seq 600); do
	[ -s "$tmp/pids" ] && break
	kill -0 "$(cat "$tmp/spawner")" 2>/dev/null || { echo "bench-ghost: could not start $n processes"; exit 1; }
	sleep 0.1
done
[ -s "$tmp/pids" ] || { echo "bench-ghost: could not start $n processes in time"; exit 1; }
starttime() { awk '{ print $22 }' "/proc/$1/stat"; }

# 200 running VMMs whose processes are the first 200 sleepers.
head -n 200 "$tmp/pids" | while read -r p; do
	echo "$p $(starttime "$p")"
done >"$tmp/vmms"
{
	echo "BEGIN;"
	k=0
	while read -r p st; do
		k=$((k + 1))
		echo "WITH s AS (INSERT INTO sandboxes (name, org_id, status, worker_id, memory_mb, vcpus)
			VALUES ('sb-$k', 'acme', 'running', 1, 256, 1) RETURNING id)
			INSERT INTO vmms (sandbox_id, worker_id, hypervisor, state, pid, pid_start_time)
			SELECT id, 1, 'qemu', 'running', $p, $st FROM s;"
	done <"$tmp/vmms"
	echo "COMMIT;"
} | psql -qX -v ON_ERROR_STOP=1 -d "$db" >/dev/null

# Three bare QEMUs with fleet tokens: healthy, ghost, unknown.
: >"$tmp/qemu.pids"
if command -v qemu-system-x86_64 >/dev/null; then
	for id in 201 202 999999; do
		mkdir -p "$tmp/w/vmm-$id"
		qemu-system-x86_64 -name "vmops-vmm-$id" -machine none -nodefaults -no-user-config \
			-display none -S -qmp "unix:$tmp/w/vmm-$id/qmp.sock,server=on,wait=off" \
			</dev/null >/dev/null 2>&1 &
		echo "$id $!" >>"$tmp/qemu.list"
		echo $! >>"$tmp/qemu.pids"
	done
	sleep 1
	while read -r id p; do
		[ "$id" = 999999 ] && continue
		state=running
		[ "$id" = 202 ] && state=destroyed
		psql -qAtX -v ON_ERROR_STOP=1 -d "$db" -c "
			WITH s AS (INSERT INTO sandboxes (name, org_id, status, worker_id, memory_mb, vcpus)
				VALUES ('sb-q$id', 'acme', 'running', 1, 256, 1) RETURNING id)
			INSERT INTO vmms (id, sandbox_id, worker_id, hypervisor, state, pid, pid_start_time, run_dir)
				OVERRIDING SYSTEM VALUE SELECT $id, id, 1, 'qemu', '$state', $p, $(starttime "$p"),
				'$tmp/w/vmm-$id' FROM s" >/dev/null
	done <"$tmp/qemu.list"
fi
after=$(ps -e --no-headers | wc -l)

reap="bin/ghost-reap --db dbname=$db --worker bench-w --min-age 0s --dry-run --json"
$reap >"$tmp/reap.json" || [ $? -eq 3 ]
summary=$(sed -n '/"summary"/,/}/p' "$tmp/reap.json" | tr -d '\t\n ' | sed 's/"summary"://')
echo "bench-ghost: $after processes ($((after - before)) started here), 200 VMMs on the worker"
echo "bench-ghost: ghost-reap found $summary"

hyperfine -N -i --warmup 3 --runs "$runs" --export-json "$tmp/h.json" \
	-n ghost-reap "$reap" -n ps "ps -eo pid,stat,lstart,args" >"$tmp/h.txt" 2>&1 || {
	cat "$tmp/h.txt"
	exit 1
}
medians=$(grep -o '"median": *[0-9.e-]*' "$tmp/h.json" | sed 's/.*: *//')
m_reap=$(echo "$medians" | sed -n 1p)
m_ps=$(echo "$medians" | sed -n 2p)
awk -v r="$m_reap" -v p="$m_ps" -v runs="$runs" 'BEGIN {
	printf "bench-ghost: median of %d runs: ghost-reap %.1f ms (scan + database), ps %.1f ms: ps/ghost-reap %.1fx\n",
		runs, r * 1000, p * 1000, p / r
}'
awk -v r="$m_reap" -v p="$m_ps" 'BEGIN { exit !(r <= p) }' || {
	echo "bench-ghost: FAIL: ghost-reap is slower than ps alone"
	exit 1
}
