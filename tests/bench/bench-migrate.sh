#!/bin/sh
# vm-migrate end to end against a bare QMP script (tests/bench/qmp-migrate.py)
# that drives the same migration of the same VM, side by side in one run:
# a ${VMOPS_BENCH_MIGRATE_MEM_MB:-2048} MiB TCG guest dirtying
# ${VMOPS_BENCH_MIGRATE_DIRTY_MB:-512} MiB, moved between two workers on this
# machine with 1, 2 and 4 connections, ${VMOPS_BENCH_MIGRATE_REPS:-3}
# repetitions of each, interleaved (the order of the two alternates).  Every
# migration gets a freshly launched guest (`vm-fleet launch`, so both paths
# run the exact same QEMU command line) and starts once the guest has written
# "HEARTBEAT 2"; afterwards the target's serial log must show three
# heartbeats and a dirtier pass verified on the target, every heartbeat with
# the source's boot checksum of the static region and its checks OK
# (tests/guest/build-guest.sh), and no Oops/BUG:/panic/CHECKSUM-MISMATCH.
# Loopback TCP bandwidth (iperf3 with 1, 2 and 4 streams,
# else a python transfer) is measured before and after, as the ceiling.
#
# Wall time: vm-migrate's whole command (database claim, receiver launch,
# transfer, switchover, bookkeeping, source stopped) against the script's
# whole command (receiver launch, transfer, target running, source stopped).
# Prints per-run lines and a median table; exits 1 if any migration or
# health check failed.  Everything started here is stopped at exit.
#
# `bench-migrate.sh --summary RESULTS.jsonl` prints the tables again from a
# kept results file (VMOPS_BENCH_MIGRATE_OUT).
#
# Environment: VMOPS_BENCH_MIGRATE_MEM_MB, _DIRTY_MB, _REPS, _CONNS ("1 2 4"),
# _DEADLINE (seconds for the whole run, default 3000: no new migration is
# started after it), _OUT (directory to keep results.jsonl and logs in).
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
summary() {
	python3 - "$1" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
mig = [r for r in rows if r["kind"] == "migration"]
lb = [r for r in rows if r["kind"] == "loopback"]
fails = [r for r in mig if r["health"] != "ok"]
def med(xs):
    return statistics.median(xs) if xs else float("nan")
G, M = 1 << 30, 1 << 20
ns = sorted({r["connections"] for r in mig})
ok = lambda n, m: [r for r in mig if r["connections"] == n and r["method"] == m and r["health"] == "ok"]
print("\n| conns | path | runs | wall (bare: script's own) | QEMU total-time | wall − total-time (bare: script's own) | downtime | transferred | throughput | wall range |")
print("|------:|------|-----:|-----:|------:|------:|------:|------:|------:|------|")
S = {}
for n in ns:
    for m, name in (("vm", "vm-migrate"), ("bare", "bare QMP")):
        rs = ok(n, m)
        if not rs:
            print("| %d | %s | 0 | | | | | | | |" % (n, name))
            S[(n, m)] = (float("nan"),) * 3
            continue
        w = [r["wall_ms"] for r in rs]
        outside = [(r.get("tool_wall_ms") or r["wall_ms"] if m == "bare" else r["wall_ms"]) - r["total_time_ms"] for r in rs]
        S[(n, m)] = (med(w), med(outside))
        inner = [r["tool_wall_ms"] for r in rs if r.get("tool_wall_ms")] if m == "bare" else w
        S[(n, m)] += (med(inner),)
        print("| %d | %s | %d | %.1f s%s | %.1f s | %.2f s | %d ms | %.2f GiB | %.0f MiB/s | %.1f–%.1f s |" % (
            n, name, len(rs), med(w) / 1000, " (%.1f s)" % (med(inner) / 1000) if m == "bare" else "", med([r["total_time_ms"] for r in rs]) / 1000, med(outside) / 1000,
            med([r["downtime_ms"] for r in rs]), med([r["transferred_bytes"] for r in rs]) / G,
            med([r["throughput_bps"] for r in rs]) / M, min(w) / 1000, max(w) / 1000))
print("\nvm-migrate's added wall time (goal: < 5 % and < 1 s)")
print("(bare: against the script's own wall time, interpreter start-up excluded; in brackets: whole command)")
print("\n| conns | median wall vm − bare | % of bare | goal | median (wall − total-time) vm − bare | goal on that | paired wall vm − bare (per rep) |")
print("|------:|------:|------:|------|------:|------|------|")
for n in ns:
    (vw, vo, _), (bw, bo, bi) = S[(n, "vm")], S[(n, "bare")]
    d, dw = vw - bi, vw - bw
    pairs = [v["wall_ms"] - b["tool_wall_ms"] for v in ok(n, "vm") for b in ok(n, "bare") if b["rep"] == v["rep"]]
    do = vo - bo
    print("| %d | %+.2f s (%+.2f s) | %+.1f %% (%+.1f %%) | %s | %+.2f s (%+.1f %%) | %s | %s |" % (
        n, d / 1000, dw / 1000, 100 * d / bi, 100 * dw / bw, "met" if d < 1000 and d < 0.05 * bi else "NOT met",
        do / 1000, 100 * do / bi, "met" if do < 1000 and do < 0.05 * bi else "NOT met", " ".join("%+.1f" % (x / 1000) for x in pairs) + " s"))
print("\nloopback TCP (ceiling): " + "; ".join("%s %d stream(s) %.2f GiB/s" % (
    r["phase"], r["streams"], r["bytes_per_s"] / G) for r in lb) + (" (%s)" % lb[0]["tool"] if lb else ""))
print("failures (migration or health): %d of %d migrations" % (len(fails), len(mig)))
for r in fails:
    print("  %s n=%d rep %d: %s" % (r["method"], r["connections"], r["rep"], r["health"]))
PY
}
if [ "${1:-}" = --summary ]; then
	summary "$2"
	exit 0
fi
[ -n "${VMOPS_TEST_PGHOST:-}" ] || exec tests/pgcluster.sh "$0" "$@"

mem=${VMOPS_BENCH_MIGRATE_MEM_MB:-2048}
dirty=${VMOPS_BENCH_MIGRATE_DIRTY_MB:-512}
reps=${VMOPS_BENCH_MIGRATE_REPS:-3}
conns=${VMOPS_BENCH_MIGRATE_CONNS:-1 2 4}
budget=${VMOPS_BENCH_MIGRATE_DEADLINE:-3000}
db=migrate_bench
tmp=$(mktemp -d /tmp/vmops-bench-migrate.XXXXXX)
out=${VMOPS_BENCH_MIGRATE_OUT:-$tmp/out}
mkdir -p "$out"
out=$(cd "$out" && pwd)
res=$out/results.jsonl
: >"$res"
fleet() { bin/vm-fleet --db "dbname=$db" "$@"; }
q() { psql -qAtX -d "$db" -F' ' -c "$1"; }
ms() { echo $(( $(date +%s%N) / 1000000 )); }
log() { echo "bench-migrate: $*"; }

# Kill a pid only if its command line still names our temp dir (PID reuse).
kill_ours() {
	[ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -q "$tmp" || return 0
	kill "$1" 2>/dev/null || return 0
	i=0
	while [ -d "/proc/$1" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
	kill -9 "$1" 2>/dev/null || true
}
cleanup() {
	rc=$?
	trap - EXIT INT TERM
	[ -s "$tmp/iperf.pid" ] && kill "$(cat "$tmp/iperf.pid")" 2>/dev/null
	if [ -s "$tmp/sandboxes" ]; then
		while read -r s; do fleet -q destroy "$s" >/dev/null 2>&1 || true; done <"$tmp/sandboxes"
	fi
	for f in "$tmp"/bare-*/pid; do [ -s "$f" ] && kill_ours "$(cat "$f")"; done
	# Anything else still running from our run dirs (e.g. a receiver of a
	# vm-migrate that was interrupted): by pid, after checking its cmdline.
	for p in $(pgrep -f "$tmp/" 2>/dev/null || true); do
		[ "$p" = $$ ] || kill_ours "$p"
	done
	psql -qAtX -d postgres -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
	rm -rf "$tmp"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The real interpreter, resolved once: a pyenv shim costs 0.5-3 s per start
# on a loaded machine, which would be charged to the bare path.
py=$(python3 -c 'import sys; print(sys.executable)')
start_s=$(date +%s)
deadline=$((start_s + budget))

eval "$(tests/guest/build-guest.sh "$top/build/guest" 2>/dev/null | grep '^VMOPS_TEST_[A-Z]*=')"
cat >"$tmp/spec.json" <<SPEC
{"hypervisor": "qemu", "memory_mb": $mem, "vcpus": 1, "accel": "tcg",
 "kernel": "$VMOPS_TEST_KERNEL", "initrd": "$VMOPS_TEST_INITRD",
 "cmdline": "console=ttyS0 no_timer_check vmops.dirty_mb=$dirty"}
SPEC

psql -qAtX -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
fleet -q init
fleet -q worker add bench-a --memory 256G --vcpus 256 --run-dir "$tmp/bench-a" --ports 50100-50199
fleet -q worker add bench-b --memory 256G --vcpus 256 --run-dir "$tmp/bench-b" --ports 50200-50299

log "machine: $(nproc) CPUs, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)," \
	"$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1), load $(cut -d' ' -f1-3 /proc/loadavg)," \
	"$(qemu-system-x86_64 --version | head -n1)"
log "guest: ${mem} MiB, dirty_mb=$dirty, TCG, 1 vCPU; connections: $conns; $reps repetitions; budget ${budget}s"

# --- loopback ceiling ----------------------------------------------------------------
loopback() {
	phase=$1
	for n in 1 2 4; do
		if command -v iperf3 >/dev/null; then
			port=$((5300 + $$ % 500))
			iperf3 -s -B 127.0.0.1 -p $port >/dev/null 2>&1 &
			echo $! >"$tmp/iperf.pid"
			sleep 0.5
			bps=$(timeout 30 iperf3 -c 127.0.0.1 -p $port -t 3 -P $n -J 2>/dev/null |
				python3 -c 'import json,sys; print(int(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 8))' ||
				echo 0)
			kill "$(cat "$tmp/iperf.pid")" 2>/dev/null || true
			wait "$(cat "$tmp/iperf.pid")" 2>/dev/null || true
			: >"$tmp/iperf.pid"
			tool=iperf3
		else
			bps=$(timeout 60 python3 - "$n" <<'PY'
import socket, sys, threading, time
n = int(sys.argv[1]); size = 1 << 30; buf = b"\0" * (1 << 20)
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(n)
def sink():
    c, _ = srv.accept()
    while c.recv_into(bytearray(1 << 20)): pass
ts = [threading.Thread(target=sink) for _ in range(n)]
for t in ts: t.start()
def src():
    s = socket.create_connection(srv.getsockname())
    for _ in range(size // len(buf)): s.sendall(buf)
    s.close()
t0 = time.monotonic()
ss = [threading.Thread(target=src) for _ in range(n)]
for t in ss: t.start()
for t in ss + ts: t.join()
print(int(n * size / (time.monotonic() - t0)))
PY
) || bps=0
			tool=python
		fi
		printf '{"kind": "loopback", "phase": "%s", "tool": "%s", "streams": %d, "bytes_per_s": %s}\n' \
			"$phase" "$tool" "$n" "$bps" >>"$res"
		log "loopback ($phase, $tool, $n stream(s)): $(awk -v b="$bps" 'BEGIN { printf "%.2f GiB/s", b / 1073741824 }')"
	done
}

# --- one migration of a fresh guest --------------------------------------------------
wait_line() {  # FILE REGEX TIMEOUT_S
	i=0
	while ! grep -qE "$2" "$1" 2>/dev/null; do
		i=$((i + 1))
		[ $i -le $(($3 * 10)) ] || return 1
		sleep 0.1
	done
}
# Heartbeats of a serial log (markers may follow console junk on a line).
beats() { cat "$1" 2>/dev/null | tr -d '\r' | grep -ao 'HEARTBEAT [0-9]* static=.*' || :; }
# LOG BOOT: "<beats> <passes verified in this log> <beats not OK>", where OK
# is the static region at its boot checksum BOOT and all checks passed.
beat_state() {
	beats "$1" | awk -v boot="$2" '
		{ n++; p = substr($5, 6) + 0; if (n == 1) first = p; last = p
		  if ($3 != "static=" boot || $4 != "static_ok=1" || $6 != "pass_ok=1" || $7 != "bad=0") bad++ }
		END { printf "%d %d %d\n", n, last - first, bad }'
}
# LOG BOOT TIMEOUT_S: wait for 3 heartbeats and a pass verified in LOG.
wait_checked() {
	i=0
	while :; do
		set -- "$1" "$2" "$3" $(beat_state "$1" "$2")
		[ "$4" -ge 3 ] && [ "$5" -ge 1 ] && return 0
		[ "$6" -eq 0 ] || return 0
		i=$((i + 1))
		[ $i -le $(($3 * 10)) ] || return 1
		sleep 0.1
	done
}
fails=0
trial() {
	method=$1 n=$2 rep=$3
	sb=mig-$rep-$n-$method
	echo "$sb" >>"$tmp/sandboxes"
	fleet -q launch --sandbox "$sb" --org bench --worker bench-a --spec "$tmp/spec.json"
	set -- $(q "SELECT v.pid, v.control_socket, v.run_dir FROM sandboxes s JOIN vmms v ON v.id = s.active_vmm_id WHERE s.name = '$sb'")
	pid=$1 sock=$2 rdir=$3
	tb=$(ms)
	if ! wait_line "$rdir/serial.log" 'HEARTBEAT 2 ' 300; then
		log "$sb: no HEARTBEAT 2 within 300 s"
		fails=$((fails + 1))
		fleet -q destroy "$sb" || true
		return 0
	fi
	boot_ms=$(( $(ms) - tb ))
	last=$(beats "$rdir/serial.log" | tail -n1 | cut -d' ' -f2)
	boot=$(grep -ao 'VMOPS-GUEST-READY.* static=[0-9a-f]*' "$rdir/serial.log" | head -n1 | sed 's/.* static=//')
	load=$(cut -d' ' -f1 /proc/loadavg)
	rc=0
	t0=$(ms)
	if [ "$method" = vm ]; then
		timeout 900 bin/vm-migrate --db "dbname=$db" --json "$sb" --to bench-b --connections "$n" \
			>"$out/$sb.json" 2>"$out/$sb.err" || rc=$?
	else
		timeout 900 "$py" tests/bench/qmp-migrate.py --pid "$pid" --qmp "$sock" --connections "$n" \
			--run-dir "$tmp/bare-$rep-$n" --timeout 600 >"$out/$sb.json" 2>"$out/$sb.err" || rc=$?
	fi
	wall=$(( $(ms) - t0 ))
	if [ "$method" = vm ]; then
		tlog=$(q "SELECT v.run_dir FROM sandboxes s JOIN vmms v ON v.id = s.active_vmm_id WHERE s.name = '$sb'")/serial.log
	else
		tlog=$tmp/bare-$rep-$n/serial.log
	fi
	# Health: the guest's checks on the target, nothing bad logged.
	health=ok
	if [ $rc -ne 0 ]; then
		health="exit $rc"
	elif ! wait_checked "$tlog" "$boot" 120; then
		health="no verified dirtier pass on the target within 120 s"
	elif grep -aqE 'Oops|BUG:|panic|CHECKSUM-MISMATCH|VMOPS-GUEST-ERROR' "$tlog"; then
		health="target log: $(grep -aoE '(Oops|BUG:|panic|CHECKSUM-MISMATCH|VMOPS-GUEST-ERROR).*' "$tlog" | head -n1)"
	elif [ "$(beat_state "$tlog" "$boot" | cut -d' ' -f3)" -ne 0 ]; then
		health="target: heartbeat not OK (boot static=$boot): $(beats "$tlog" |
			grep -v "static=$boot static_ok=1 pass=[0-9]* pass_ok=1 bad=0\$" | head -n1)"
	fi
	first=$(beats "$tlog" | head -n1 | cut -d' ' -f2)
	[ "$health" = ok ] || { fails=$((fails + 1)); cp "$tlog" "$out/$sb.target-serial.log" 2>/dev/null || true; }
	python3 - "$out/$sb.json" "$method" "$n" "$rep" "$wall" "$boot_ms" "$load" "$health" \
		"${last:-0}" "${first:-0}" >>"$res" <<'PY'
import json, sys
f, method, n, rep, wall, boot, load, health, last, first = sys.argv[1:]
try:
    d = json.load(open(f))
except Exception:
    d = {}
d = d.get("migration", d)
print(json.dumps({"kind": "migration", "method": method, "connections": int(n), "rep": int(rep),
    "wall_ms": int(wall), "boot_ms": int(boot), "load1": float(load), "health": health,
    "hb_source_last": int(last), "hb_target_first": int(first),
    "state": d.get("state", d.get("status")), "connections_used": d.get("connections_used", d.get("connections")),
    "downtime_ms": d.get("downtime_ms"), "total_time_ms": d.get("total_time_ms"),
    "transferred_bytes": d.get("transferred_bytes"), "throughput_bps": d.get("throughput_bps"),
    "tool_wall_ms": d.get("wall_ms")}))
PY
	tail -n1 "$res" | python3 -c 'import json,sys; r=json.load(sys.stdin)
print("bench-migrate: %-4s n=%d rep %d: wall %6d ms, migration %s ms, downtime %s ms, %s B, heartbeat %d -> %d, load %.1f, %s" % (
    r["method"], r["connections"], r["rep"], r["wall_ms"], r["total_time_ms"], r["downtime_ms"], r["transferred_bytes"],
    r["hb_source_last"], r["hb_target_first"], r["load1"], r["health"]))'
	# Stop what this trial left: the sandbox (vm: its VM on bench-b; bare:
	# the record of the now-gone source) and the bare receiver.
	fleet -q destroy "$sb" || true
	[ -s "$tmp/bare-$rep-$n/pid" ] && kill_ours "$(cat "$tmp/bare-$rep-$n/pid")"
	rm -rf "$tmp/bare-$rep-$n"
}

loopback before
rep=1
stopped=""
while [ $rep -le "$reps" ]; do
	i=0
	for n in $conns; do
		if [ "$(date +%s)" -ge $deadline ]; then stopped="budget of ${budget}s used up before rep $rep n=$n"; break 2; fi
		if [ $(((rep + i) % 2)) -eq 1 ]; then order="vm bare"; else order="bare vm"; fi
		for m in $order; do trial "$m" "$n" "$rep"; done
		i=$((i + 1))
	done
	rep=$((rep + 1))
done
[ -z "$stopped" ] || log "STOPPED EARLY: $stopped"
loopback after
log "results: $res ($(($(date +%s) - start_s)) s)$([ -n "${VMOPS_BENCH_MIGRATE_OUT:-}" ] || echo ', removed at exit: set VMOPS_BENCH_MIGRATE_OUT to keep them')"

summary "$res"
[ "$fails" -eq 0 ]
