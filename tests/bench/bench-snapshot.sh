#!/bin/sh
# snapshot-prep on real QEMU guests, two measurements side by side in one run
# (the bundle's own throughput is tests/bench/bench-bundle.sh):
#
# 1. Snapshot downtime, paused against live.  For each guest size in
#    ${VMOPS_BENCH_SNAPSHOT_MEM_MB:-1024 2048} MiB one test guest
#    (tests/guest/build-guest.sh; TCG, 1 vCPU) is started with
#    `vm-fleet launch`, dirtying ${VMOPS_BENCH_SNAPSHOT_DIRTY_MB:-a quarter
#    of its memory} MiB, with an ext4 data disk of
#    ${VMOPS_BENCH_SNAPSHOT_DISK_MB:-64} MiB (0: none) that its writer keeps
#    rewriting, and its guest agent.  Then ${VMOPS_BENCH_SNAPSHOT_REPS:-3}
#    rounds, each `snapshot-prep snapshot` (paused: quiesce, pause, state
#    and disk written, resume, thaw, bundle) and `snapshot-prep snapshot
#    --live` (QEMU background-snapshot) of the same guest, the order
#    alternating.  Downtime from two independent facts:
#      paused_ms   snapshot-prep --json: paused, its pause to its resume;
#                  live, QEMU's own downtime of the background snapshot
#      heartbeat   the guest prints a numbered heartbeat every second of
#                  its own time, which stands still while its vCPUs are
#                  stopped; a watcher stamps each line as it appears in the
#                  serial log (5 ms polling).  The longest interval that
#                  overlaps the command, minus the median interval before
#                  it, is the guest's longest stall; "sum" adds up every
#                  such excess during the command (a live snapshot slows a
#                  dirtying guest down without stopping it)
#    plus wall time of the whole command and the bundle's size.
# 2. Restore time against QEMU loading the uncompressed stream directly.
#    The source guest is destroyed, then ${VMOPS_BENCH_SNAPSHOT_REPS} rounds,
#    order alternating, restore the first round's paused bundle:
#      vmops  snapshot-prep restore -i BUNDLE --run-dir DIR (verify +
#             decompress + extract, QEMU -incoming defer, load, cont, thaw)
#      bare   tests/bench/qmp-restore.py: the source's QEMU command line
#             with -S -incoming defer, getfd + migrate-incoming fd: from
#             the vmstate file extracted beforehand (not timed), cont, thaw
#    Each is timed until the guest runs again: query-status says running
#    (for vmops asked once the command has returned) and a heartbeat has
#    appeared in its serial log.  Both inputs are read into the page cache
#    before every restore.
#
# Health (a failure makes the exit status 1): every command succeeds; the
# source goes on printing heartbeats after every snapshot; every restored
# guest continues the source's heartbeat numbering with the source's boot
# checksum, verifies a new dirtier pass, and every heartbeat and data-disk
# check is OK; no Oops/BUG:/panic/CHECKSUM-MISMATCH/VMOPS-GUEST-ERROR.
#
# One QEMU guest of this script runs at a time.  Everything started here is
# stopped and removed at exit, also on Ctrl-C.
# `bench-snapshot.sh --summary RESULTS.jsonl` prints the tables again.
#
# Environment: VMOPS_BENCH_SNAPSHOT_MEM_MB, _DIRTY_MB, _DISK_MB, _REPS,
# _DEADLINE (seconds; no new trial starts after it, default 3600),
# _DIR (scratch, default /var/tmp), _OUT (directory to keep results.jsonl
# and the serial logs in).
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
summary() {
	python3 - "$1" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
M = 1 << 20
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
def f(x, fmt="%.0f", unit=""):
    return "–" if x is None else (fmt % x) + unit
def rng(xs, scale=1.0, fmt="%.0f"):
    xs = [x for x in xs if x is not None]
    return " ".join(fmt % (x / scale) for x in xs)
snaps = [r for r in rows if r["kind"] == "snapshot"]
rest = [r for r in rows if r["kind"] == "restore"]
mems = sorted({r["mem"] for r in rows if "mem" in r})
print("\nSnapshot downtime (medians; per-round values in the last column)")
print("| guest | method | runs ok | paused_ms (snapshot-prep) | heartbeat: longest stall | heartbeat: sum of stalls | wall | bundle | paused_ms per round |")
print("|------:|--------|-----:|------:|------:|------:|------:|------:|------|")
for mem in mems:
    for m, name in (("paused", "snapshot (paused)"), ("live", "snapshot --live")):
        rs = [r for r in snaps if r["mem"] == mem and r["method"] == m]
        ok = [r for r in rs if r["health"] == "ok"]
        print("| %d MiB | %s | %d/%d | %s | %s | %s | %s | %s | %s |" % (
            mem, name, len(ok), len(rs), f(med([r["paused_ms"] for r in ok]), unit=" ms"),
            f(med([r["hb_stall_ms"] for r in ok]), unit=" ms"), f(med([r["hb_stall_sum_ms"] for r in ok]), unit=" ms"),
            f(med([r["wall_ms"] / 1000 for r in ok]), "%.1f", " s"), f(med([r["bundle_bytes"] / M for r in ok]), "%.0f", " MiB"),
            rng([r["paused_ms"] for r in ok])))
print("\nRestore until the guest runs again (medians; per-round totals in the last column)")
print("| guest | method | runs ok | to running + heartbeat | first heartbeat | QEMU started | state loaded (bare) / command returned (vmops) | totals per round |")
print("|------:|--------|-----:|------:|------:|------:|------:|------|")
for mem in mems:
    for m, name in (("vmops", "snapshot-prep restore (bundle)"), ("bare", "bare QMP, uncompressed stream")):
        rs = [r for r in rest if r["mem"] == mem and r["method"] == m]
        ok = [r for r in rs if r["health"] == "ok"]
        print("| %d MiB | %s | %d/%d | %s | %s | %s | %s | %s |" % (
            mem, name, len(ok), len(rs), f(med([r["total_ms"] / 1000 for r in ok]), "%.2f", " s"),
            f(med([r["hb_ms"] / 1000 for r in ok]), "%.2f", " s"),
            f(med([r["qemu_start_ms"] / 1000 for r in ok]), "%.2f", " s"),
            f(med([r["mid_ms"] / 1000 for r in ok]), "%.2f", " s"), rng([r["total_ms"] for r in ok], 1000, "%.1f") + " s"))
    pairs = []
    for rep in sorted({r["rep"] for r in rest if r["mem"] == mem}):
        v = [r for r in rest if r["mem"] == mem and r["rep"] == rep and r["method"] == "vmops" and r["health"] == "ok"]
        b = [r for r in rest if r["mem"] == mem and r["rep"] == rep and r["method"] == "bare" and r["health"] == "ok"]
        if v and b:
            pairs.append(v[0]["total_ms"] / b[0]["total_ms"])
    if pairs:
        print("%d MiB: vmops / bare per round: %s (median %.2f)" % (mem, " ".join("%.2f" % x for x in pairs), statistics.median(pairs)))
for r in rows:
    if r["kind"] == "load":
        print("load %-28s %s" % (r["what"], r["load"]))
bad = [r for r in snaps + rest if r["health"] != "ok"]
print("failures (command or health): %d of %d trials" % (len(bad), len(snaps) + len(rest)))
for r in bad:
    print("  %d MiB %s %s rep %d: %s" % (r["mem"], r["kind"], r["method"], r["rep"], r["health"]))
PY
}
if [ "${1:-}" = --summary ]; then
	summary "$2"
	exit 0
fi
[ -n "${VMOPS_TEST_PGHOST:-}" ] || exec tests/pgcluster.sh "$0" "$@"

mems=${VMOPS_BENCH_SNAPSHOT_MEM_MB:-1024 2048}
reps=${VMOPS_BENCH_SNAPSHOT_REPS:-3}
disk_mb=${VMOPS_BENCH_SNAPSHOT_DISK_MB:-64}
budget=${VMOPS_BENCH_SNAPSHOT_DEADLINE:-3600}
db=snapshot_bench_$$
tmp=$(mktemp -d "${VMOPS_BENCH_SNAPSHOT_DIR:-/var/tmp}/vmops-bench-snap.XXXXXX")
out=${VMOPS_BENCH_SNAPSHOT_OUT:-$tmp/out}
mkdir -p "$out"
out=$(cd "$out" && pwd)
res=$out/results.jsonl
: >"$res"
export VMOPS_IMAGE_DIRS="$top/build/guest:$tmp"
fleet() { bin/vm-fleet --db "dbname=$db" "$@"; }
q() { psql -qAtX -d "$db" -F' ' -c "$1"; }
ms() { echo $(( $(date +%s%N) / 1000000 )); }
log() { echo "bench-snapshot: $*"; }
load() { cut -d' ' -f1-3 /proc/loadavg; }
note_load() {  # WHAT
	printf '{"kind": "load", "what": "%s", "load": "%s"}\n' "$1" "$(load)" >>"$res"
	log "load average $1: $(load)"
}

# Kill a pid only if its command line still names our temp dir (PID reuse).
kill_ours() {
	[ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -q "$tmp" || return 0
	kill "$1" 2>/dev/null || return 0
	i=0
	while [ -d "/proc/$1" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
	kill -9 "$1" 2>/dev/null || true
	i=0
	while [ -d "/proc/$1" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
}
watchers=""
stop_watchers() {
	for w in $watchers; do kill "$w" 2>/dev/null || true; wait "$w" 2>/dev/null || true; done
	watchers=""
}
cleanup() {
	rc=$?
	trap - EXIT INT TERM
	stop_watchers
	if [ -s "$tmp/sandboxes" ]; then
		while read -r s; do fleet -q destroy "$s" >/dev/null 2>&1 || true; done <"$tmp/sandboxes"
	fi
	for f in "$tmp"/*/pid "$tmp"/*/*/pid; do [ -s "$f" ] && kill_ours "$(cat "$f")"; done
	# Anything else still running from our directories (a restored VM whose
	# restore was interrupted): by pid, after checking its command line.
	for p in $(pgrep -f "$tmp/" 2>/dev/null || true); do
		[ "$p" = $$ ] || kill_ours "$p"
	done
	psql -qAtX -d postgres -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1 || true
	rm -rf "$tmp"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

py=$(python3 -c 'import sys; print(sys.executable)')
start_s=$(date +%s)
deadline=$((start_s + budget))
make --no-print-directory -s build/bench/bundle-bench >/dev/null
eval "$(tests/guest/build-guest.sh "$top/build/guest" 2>/dev/null | grep '^VMOPS_TEST_[A-Z]*=')"

psql -qAtX -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
fleet -q init
fleet -q worker add bench-a --memory 256G --vcpus 256 --run-dir "$tmp/bench-a" --ports 50300-50399

log "machine: $(nproc) CPUs, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)," \
	"$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1), load $(load)," \
	"$(qemu-system-x86_64 --version | head -n1), $(zstd --version)"
log "guests: $mems MiB, TCG, 1 vCPU; data disk ${disk_mb} MiB; $reps rounds; budget ${budget}s; scratch $tmp"

# --- the serial-log watcher ------------------------------------------------------------
# watch_log LOG OUT: append "<epoch ms> <n>" to OUT for every HEARTBEAT line as
# it appears in LOG (which may not exist yet), polling every 5 ms.
watch_log() {
	"$py" - "$1" "$2" <<'PY' &
import os, re, sys, time
log, out = sys.argv[1:3]
o = open(out, "a", buffering=1)
f, buf = None, b""
pat = re.compile(rb"HEARTBEAT (\d+) ")
while True:
    if f is None:
        try:
            f = open(log, "rb")
        except OSError:
            time.sleep(0.005)
            continue
    d = f.read(1 << 16)
    if not d:
        time.sleep(0.005)
        continue
    t = int(time.time() * 1000)
    buf += d
    while b"\n" in buf:
        line, buf = buf.split(b"\n", 1)
        m = pat.search(line)
        if m:
            o.write("%d %s\n" % (t, m.group(1).decode()))
PY
	watchers="$watchers $!"
}
# count FILE: lines in a beats file.
count() { [ -f "$1" ] && wc -l <"$1" || echo 0; }
# wait_beats FILE N TIMEOUT_S: until FILE has at least N lines.
wait_beats() {
	i=0
	while [ "$(count "$1")" -lt "$2" ]; do
		i=$((i + 1))
		[ $i -le $(($3 * 10)) ] || return 1
		sleep 0.1
	done
}

# --- guest health from its serial log -------------------------------------------------
# Complete lines only: the serial log is read while the guest writes it.
beats() {
	tr -d '\r' <"$1" 2>/dev/null |
		grep -aoE 'HEARTBEAT [0-9]+ static=[0-9a-f]+ static_ok=[01] pass=[0-9]+ pass_ok=[01] bad=[0-9]+$' || :
}
# LOG BOOT: "<beats> <passes verified in this log> <beats not OK> <first n> <last n>"
beat_state() {
	beats "$1" | awk -v boot="$2" '
		{ n++; p = substr($5, 6) + 0; if (n == 1) { first = p; fn = $2 } last = p; ln = $2
		  if ($3 != "static=" boot || $4 != "static_ok=1" || $6 != "pass_ok=1" || $7 != "bad=0") bad++ }
		END { printf "%d %d %d %d %d\n", n, last - first, bad, fn, ln }'
}
# LOG BOOT TIMEOUT_S [MIN_BEATS]: wait for MIN_BEATS (3) heartbeats and a
# dirtier pass verified in LOG; then judge it.  Prints "ok" or why not.
judge() {
	i=0
	while :; do
		set -- "$1" "$2" "$3" "${4:-3}" $(beat_state "$1" "$2")
		[ "$5" -ge "$4" ] && [ "$6" -ge 1 ] && break
		[ "$7" -eq 0 ] || break
		i=$((i + 1))
		if [ $i -gt $(($3 * 10)) ]; then echo "no verified dirtier pass within $3 s ($5 beats)"; return; fi
		sleep 0.1
	done
	if grep -aqE 'Oops|BUG:|panic|CHECKSUM-MISMATCH|VMOPS-GUEST-ERROR' "$1"; then
		echo "log: $(grep -aoE '(Oops|BUG:|panic|CHECKSUM-MISMATCH|VMOPS-GUEST-ERROR).*' "$1" | head -n1 | tr -d '"\\')"
	elif [ "$7" -ne 0 ]; then
		echo "heartbeat not OK: $(beats "$1" | grep -v "static=$2 static_ok=1 pass=[0-9]* pass_ok=1 bad=0\$" | head -n1)"
	elif [ "$disk_mb" -gt 0 ] && tr -d '\r' <"$1" | grep -ao 'VMOPS-DATA .*' | grep -qv 'ok=1 bad=0'; then
		echo "data disk: $(tr -d '\r' <"$1" | grep -ao 'VMOPS-DATA .*' | grep -v 'ok=1 bad=0' | head -n1)"
	else
		echo ok
	fi
}
qmp_status() {  # SOCKET: the run state, or "unreachable"
	"$py" - "$1" <<'PY' 2>/dev/null || echo unreachable
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(30); s.connect(sys.argv[1]); f = s.makefile("rw")
json.loads(f.readline())
def cmd(c):
    f.write(json.dumps({"execute": c}) + "\n"); f.flush()
    while True:
        r = json.loads(f.readline())
        if "return" in r or "error" in r:
            return r.get("return", {})
cmd("qmp_capabilities")
print(cmd("query-status").get("status", "unknown"))
PY
}
# Epoch ms at which process PID started: its start in clock ticks since boot
# (/proc/PID/stat field 22) against /proc/uptime read now (btime drifts on
# this machine, a VM).
proc_start_ms() {
	"$py" - "$1" <<'PY' 2>/dev/null || echo 0
import os, sys, time
st = open("/proc/%s/stat" % sys.argv[1]).read()
ticks = int(st[st.rindex(")") + 2:].split()[19])
up = float(open("/proc/uptime").read().split()[0])
print(int(time.time() * 1000 - (up - ticks / os.sysconf("SC_CLK_TCK")) * 1000))
PY
}

fails=0
# --- part 1: one snapshot ----------------------------------------------------------------
# BEATS T0 T1: "<longest stall> <sum of stalls> <base interval>" in ms, from
# the heartbeat intervals overlapping [T0, T1]; "-1 -1 -1" if not measurable.
stall() {
	"$py" - "$@" <<'PY'
import statistics, sys
beats = [tuple(map(int, l.split())) for l in open(sys.argv[1])]
t0, t1 = int(sys.argv[2]), int(sys.argv[3])
iv = [(a[0], b[0], b[1] - a[1]) for a, b in zip(beats, beats[1:])]
before = [(e - s) / k for s, e, k in iv if e <= t0 and k > 0][-10:]
during = [(s, e, k) for s, e, k in iv if e > t0 and s < t1]
if len(before) < 3 or not during:
    print("-1 -1 -1"); sys.exit()
base = statistics.median(before)
ex = [(e - s) - k * base for s, e, k in during]
print("%d %d %d" % (max(ex), sum(x for x in ex if x > 0), base))
PY
}
snap_trial() {  # MEM METHOD REP
	mem=$1 m=$2 rep=$3
	b=$d/$m-$rep.vmops
	rm -f "$b"
	n0=$(count "$d/src.beats")
	wait_beats "$d/src.beats" $((n0 + 2)) 120 || true  # two intervals of steady state before
	ld=$(cut -d' ' -f1 /proc/loadavg)
	rc=0
	t0=$(ms)
	timeout 1200 bin/snapshot-prep --db "dbname=$db" --json snapshot --sandbox "$sb" -o "$b" \
		--work-dir "$d/work" $([ "$m" = live ] && echo --live) >"$out/snap-$mem-$m-$rep.json" \
		2>"$out/snap-$mem-$m-$rep.err" || rc=$?
	t1=$(ms)
	health=ok
	if [ $rc -ne 0 ]; then
		health="exit $rc: $(head -c 300 "$out/snap-$mem-$m-$rep.err" | tr -d '"\\' | tr '\n' ' ')"
	fi
	# The source goes on: three heartbeats after the command, all OK.
	nb=$(count "$d/src.beats")
	if ! wait_beats "$d/src.beats" $((nb + 3)) 120; then
		[ "$health" != ok ] || health="source: no heartbeat within 120 s after the snapshot"
	fi
	h2=$(judge "$slog" "$boot" 120 1)
	[ "$health" != ok ] || health=$h2
	set -- $(stall "$d/src.beats" "$t0" "$t1")
	size=$(stat -c %s "$b" 2>/dev/null || echo 0)
	[ "$health" = ok ] || fails=$((fails + 1))
	"$py" - "$out/snap-$mem-$m-$rep.json" "$mem" "$m" "$rep" $((t1 - t0)) "$1" "$2" "$3" "$size" "$ld" "$health" >>"$res" <<'PY'
import json, sys
f, mem, m, rep, wall, st, ss, base, size, ld, health = sys.argv[1:]
try:
    d = json.load(open(f))["snapshot"]
except Exception:
    d = {}
neg = lambda x: None if int(x) < 0 else int(x)
print(json.dumps({"kind": "snapshot", "mem": int(mem), "method": m, "rep": int(rep), "wall_ms": int(wall),
    "paused_ms": d.get("paused_ms"), "hb_stall_ms": neg(st), "hb_stall_sum_ms": neg(ss), "hb_base_ms": neg(base),
    "bundle_bytes": int(size), "load1": float(ld), "health": health}))
PY
	log "$mem MiB $m rep $rep: wall $((t1 - t0)) ms, paused_ms $(sed -n 's/.*"paused_ms":[[:space:]]*\([0-9-]*\).*/\1/p' "$out/snap-$mem-$m-$rep.json" 2>/dev/null | head -n1)," \
		"heartbeat stall $1 ms (sum $2 ms, base interval $3 ms), bundle $size B, load $ld, $health"
	if [ "$m" = paused ] && [ ! -f "$d/restore.vmops" ] && [ "$health" = ok ]; then
		mv "$b" "$d/restore.vmops"
		# A guest restored from it continues the numbering after the last
		# beat before the command and at or before the first one after it.
		snap_lo=$(awk -v t="$t0" '$1 <= t { n = $2 } END { print n + 0 }' "$d/src.beats")
		snap_hi=$(awk -v t="$t1" '$1 > t { print $2; exit }' "$d/src.beats")
	fi
	rm -f "$b"
}

# --- part 2: one restore -----------------------------------------------------------------
rest_trial() {  # MEM METHOD REP
	mem=$1 m=$2 rep=$3
	rd=$d/$m-r$rep
	mkdir -p "$rd"
	cat "$d/restore.vmops" "$d/bare-src/vmstate" >/dev/null  # both inputs in the page cache
	[ "$disk_mb" -gt 0 ] && cp --sparse=always "$d/bare-src/disk0.img" "$rd/disk0.img"
	if [ "$m" = vmops ]; then rlog=$rd/vmm/serial.log; else rlog=$rd/serial.log; fi
	watch_log "$rlog" "$rd/beats"
	ld=$(cut -d' ' -f1 /proc/loadavg)
	rc=0
	t0=$(ms)
	if [ "$m" = vmops ]; then
		timeout 1200 bin/snapshot-prep --json restore -i "$d/restore.vmops" --run-dir "$rd" \
			--vmm-id $((990000 + rep)) >"$out/rest-$mem-$m-$rep.json" 2>"$out/rest-$mem-$m-$rep.err" || rc=$?
		t_mid=$(ms)
		pid=$(sed -n 's/.*"pid":[[:space:]]*\([0-9]*\).*/\1/p' "$out/rest-$mem-$m-$rep.json" | head -n1)
		[ -z "$pid" ] || echo "$pid" >"$rd/pid"
		st=$(qmp_status "$rd/vmm/qmp.sock")
		t_run=$(ms)
	else
		set -- --argv "$d/argv" --src-run-dir "$srd" --state "$d/bare-src/vmstate" --run-dir "$rd"
		[ "$disk_mb" -gt 0 ] && set -- "$@" --src-disk "$d/disk.img" --disk "$rd/disk0.img"
		timeout 1200 "$py" tests/bench/qmp-restore.py "$@" >"$out/rest-$mem-$m-$rep.json" \
			2>"$out/rest-$mem-$m-$rep.err" || rc=$?
		pid=$(cat "$rd/pid" 2>/dev/null || true)
		t_mid=$(sed -n 's/.*"loaded":[[:space:]]*\([0-9]*\).*/\1/p' "$out/rest-$mem-$m-$rep.json")
		t_run=$(sed -n 's/.*"running":[[:space:]]*\([0-9]*\).*/\1/p' "$out/rest-$mem-$m-$rep.json")
		st=$([ -n "$t_run" ] && echo running || echo "not running")
	fi
	t_run=${t_run:-$t0} t_mid=${t_mid:-$t0}
	health=ok
	[ $rc -eq 0 ] || health="exit $rc: $(head -c 300 "$out/rest-$mem-$m-$rep.err" | tr -d '"\\' | tr '\n' ' ')"
	[ "$health" != ok ] || [ "$st" = running ] || health="query-status: $st"
	t_hb=$t0
	if [ "$health" = ok ]; then
		wait_beats "$rd/beats" 1 120 || health="no heartbeat within 120 s"
		t_hb=$(head -n1 "$rd/beats" 2>/dev/null | cut -d' ' -f1)
	fi
	qs=$([ -n "$pid" ] && proc_start_ms "$pid" || echo 0)
	if [ "$health" = ok ]; then
		health=$(judge "$rlog" "$boot" 180 3)
		set -- $(beat_state "$rlog" "$boot")
		# The restored guest goes on from the snapshot: its heartbeat
		# numbers continue the source's where the snapshot was taken.
		[ "$health" != ok ] || { [ "$4" -gt "$snap_lo" ] && [ "$4" -le "$snap_hi" ]; } ||
			health="first heartbeat $4, not after $snap_lo and at most $snap_hi as on the source"
	fi
	[ "$health" = ok ] || { fails=$((fails + 1)); cp "$rlog" "$out/rest-$mem-$m-$rep.serial.log" 2>/dev/null || true; }
	total=$(( (t_hb > t_run ? t_hb : t_run) - t0 ))
	printf '{"kind": "restore", "mem": %d, "method": "%s", "rep": %d, "total_ms": %d, "hb_ms": %d, "running_ms": %d, "mid_ms": %d, "qemu_start_ms": %d, "load1": %s, "health": "%s"}\n' \
		"$mem" "$m" "$rep" "$total" $((t_hb - t0)) $((t_run - t0)) $((t_mid - t0)) \
		$((qs > 0 ? qs - t0 : 0)) "$ld" "$(echo "$health" | tr -d '"\\')" >>"$res"
	log "$mem MiB restore $m rep $rep: running + heartbeat after $total ms (heartbeat $((t_hb - t0)), QEMU started" \
		"$((qs > 0 ? qs - t0 : 0)), $([ "$m" = vmops ] && echo 'command returned' || echo 'state loaded') $((t_mid - t0)) ms)," \
		"load $ld, $health"
	stop_watchers
	cp "$rd/beats" "$out/rest-$mem-$m-$rep.beats" 2>/dev/null || true
	[ -n "$pid" ] && kill_ours "$pid"
	rm -rf "$rd"
}

for mem in $mems; do
	if [ "$(date +%s)" -ge $deadline ]; then log "STOPPED EARLY: budget of ${budget}s used up before the $mem MiB guest"; fails=$((fails + 1)); break; fi
	dirty=${VMOPS_BENCH_SNAPSHOT_DIRTY_MB:-$((mem / 4))}
	d=$tmp/g$mem
	mkdir -p "$d/work"
	disks=""
	if [ "$disk_mb" -gt 0 ]; then
		truncate -s "${disk_mb}M" "$d/disk.img"
		mkfs.ext4 -q -F "$d/disk.img"
		disks=", \"disks\": [{\"path\": \"$d/disk.img\"}]"
	fi
	cat >"$d/spec.json" <<SPEC
{"hypervisor": "qemu", "memory_mb": $mem, "vcpus": 1, "accel": "tcg",
 "kernel": "$VMOPS_TEST_KERNEL", "initrd": "$VMOPS_TEST_INITRD",
 "cmdline": "console=ttyS0 no_timer_check vmops.dirty_mb=$dirty"$disks}
SPEC
	sb=snap-$mem
	echo "$sb" >>"$tmp/sandboxes"
	note_load "$mem MiB, part 1 start"
	fleet -q launch --sandbox "$sb" --org bench --worker bench-a --spec "$d/spec.json"
	set -- $(q "SELECT v.pid, v.run_dir FROM sandboxes s JOIN vmms v ON v.id = s.active_vmm_id WHERE s.name = '$sb'")
	spid=$1 srd=$2 slog=$2/serial.log
	tr '\0' '\n' <"/proc/$spid/cmdline" | grep -q . && cp "/proc/$spid/cmdline" "$d/argv"
	watch_log "$slog" "$d/src.beats"
	tb=$(ms)
	if ! wait_beats "$d/src.beats" 3 600; then
		log "$mem MiB guest: no HEARTBEAT 3 within 600 s: $(tail -c 300 "$slog" | tr -d '\r' | tail -n 2)"
		fails=$((fails + 1))
		stop_watchers
		fleet -q destroy "$sb" || true
		continue
	fi
	boot=$(tr -d '\r' <"$slog" | grep -ao 'VMOPS-GUEST-READY.* static=[0-9a-f]*' | head -n1 | sed 's/.* static=//')
	log "$mem MiB guest: heartbeat 3 after $(( $(ms) - tb )) ms (dirty_mb=$dirty), boot checksum $boot"
	rep=1
	while [ $rep -le "$reps" ]; do
		if [ "$(date +%s)" -ge $deadline ]; then log "STOPPED EARLY: budget used up before round $rep"; fails=$((fails + 1)); break; fi
		if [ $((rep % 2)) -eq 1 ]; then order="paused live"; else order="live paused"; fi
		for m in $order; do snap_trial "$mem" "$m" "$rep"; done
		rep=$((rep + 1))
	done
	note_load "$mem MiB, part 1 end"
	stop_watchers
	cp "$slog" "$out/source-$mem.serial.log" 2>/dev/null || true
	cp "$d/src.beats" "$out/source-$mem.beats"
	fleet -q destroy "$sb"
	if [ ! -f "$d/restore.vmops" ]; then
		log "$mem MiB: no paused bundle to restore"
		fails=$((fails + 1))
		continue
	fi
	# The bare path's input: the same bundle, extracted (and verified) once.
	mkdir "$d/bare-src"
	build/bench/bundle-bench extract "$d/restore.vmops" "$d/bare-src" >/dev/null 2>"$out/extract-$mem.err"
	log "$mem MiB: bundle $(stat -c %s "$d/restore.vmops") B; vmstate $(stat -c %s "$d/bare-src/vmstate") B uncompressed"
	note_load "$mem MiB, part 2 start"
	rep=1
	while [ $rep -le "$reps" ]; do
		if [ "$(date +%s)" -ge $deadline ]; then log "STOPPED EARLY: budget used up before restore round $rep"; fails=$((fails + 1)); break; fi
		if [ $((rep % 2)) -eq 1 ]; then order="vmops bare"; else order="bare vmops"; fi
		for m in $order; do rest_trial "$mem" "$m" "$rep"; done
		rep=$((rep + 1))
	done
	note_load "$mem MiB, part 2 end"
	rm -rf "$d"
done
log "results: $res ($(($(date +%s) - start_s)) s)$([ -n "${VMOPS_BENCH_SNAPSHOT_OUT:-}" ] || echo ', removed at exit: set VMOPS_BENCH_SNAPSHOT_OUT to keep them')"
summary "$res"
[ "$fails" -eq 0 ]
