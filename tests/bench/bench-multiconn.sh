#!/bin/sh
# The multi-connection headline (issue 13), measured: one live migration of
# the same test guest between two test hosts (network namespaces, made by
# tests/hosts/with-hosts.sh) with 1, 2 and 4 connections, where every TCP
# flow from the source host is capped at ${VMOPS_BENCH_MULTICONN_RATE_MBIT:-20}
# Mbit/s: far below what the two CPUs push under TCG, so the link's per-flow
# limit, not the CPU, decides the speed, and N connections should move about
# N times as fast (goal: >= 0.8 x N times the 1-connection throughput).
#
# The cap: this kernel has no fq, netem or flow classifier, so inside the
# source host the ephemeral port range is narrowed to PORTS ports
# (net.ipv4.ip_local_port_range is per network namespace) and its eth0 gets
# an htb root with one class per port (rate = ceil = the cap), each picked by
# a u32 filter on the TCP/UDP source port; anything else (sshd's replies)
# goes to an uncapped default class.  The connections of one migration all
# go to the receiver's one listening port, so they always have distinct
# source ports: one class each.  QEMU multifd's channels cannot be told
# apart by destination port (all use the receiver's one port), hence source
# ports.  The cap is checked first with iperf3 -P 1/2/4 (a python transfer
# when iperf3 is missing), uncapped and capped, and again at the end.
#
# Each migration: a fresh guest (${VMOPS_BENCH_MULTICONN_MEM_MB:-256} MiB,
# TCG, 1 vCPU, vmops.static_mb=${VMOPS_BENCH_MULTICONN_STATIC_MB:-4}, checked
# on every heartbeat; about 110 MiB of non-zero RAM in all; a small dirtier,
# vmops.dirty_mb=${VMOPS_BENCH_MULTICONN_DIRTY_MB:-1} every
# ${VMOPS_BENCH_MULTICONN_DIRTY_PAUSE_US:-1000000} us, small enough to
# converge at one capped flow) started in the source host; once it printed
# HEARTBEAT 2 it is migrated to the target host with N connections (N = 1:
# classic migration; N > 1: multifd with multifd-channels N, as vm-migrate
# does).  ROUNDS rounds, the order of the connection counts rotating from
# round to round.  Throughput = QEMU's ram.transferred / total-time
# (query-migrate).  Per migration the htb classes' byte counters say how
# many flows carried the data and at what rate.  Afterwards the target's
# serial log must show heartbeats with the source's boot checksum, a dirtier
# pass verified there, and no Oops/BUG:/panic/CHECKSUM-MISMATCH.
#
# The migration step (migrate_guest) has two drivers:
#   bare (default)  tests/bench/qmp-migrate.py, run in the target host's
#                   network namespace (ip netns exec), so the receiver it
#                   starts listens on the target's address; the source QEMU
#                   is started here in the source host's namespace;
#   vm              vm-fleet launch on ssh worker h1, `vm-migrate --json
#                   SANDBOX --to h2 --connections N` (needs vm-migrate
#                   across ssh workers; runs in a throwaway PostgreSQL).
#
# Environment (VMOPS_BENCH_MULTICONN_*): DRIVER (bare|vm), ROUNDS (default 1:
# about 7 min at load 15; BENCHMARKS.md used 3),
# CONNS ("1 2 4"), RATE_MBIT (20), PORTS (64, from PORT_BASE 40000),
# MEM_MB, STATIC_MB, DIRTY_MB, DIRTY_PAUSE_US, DEADLINE (seconds; no new
# migration starts after it, default 1800), LINK_S (iperf seconds, 5),
# LINK_TOOL (iperf3, or python to use the fallback), OUT (directory to keep
# results.jsonl and logs in); VMOPS_BIN_DIR (the vm
# driver's programs, default bin/; with-hosts.sh puts it first in the hosts' PATH).
#   bench-multiconn.sh --summary RESULTS.jsonl   prints the tables again.
# Needs root (namespaces, tc), QEMU, the test guest, iperf3 or python3.
# Everything made here (qdisc, port range, guests, receivers, files) is
# removed at exit, also on Ctrl-C; with-hosts.sh removes the hosts.
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
self=tests/bench/bench-multiconn.sh

summary() {
	python3 - "$1" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
mig = [r for r in rows if r["kind"] == "migration"]
link = [r for r in rows if r["kind"] == "link"]
cfg = next((r for r in rows if r["kind"] == "config"), {})
M = 1 << 20
med = lambda xs: statistics.median(xs) if xs else float("nan")
ok = lambda n: [r for r in mig if r["connections"] == n and r["health"] == "ok"]
if cfg:
    print("\ncap %s Mbit/s per flow (%d source ports), driver %s, guest %s MiB static_mb=%s dirty_mb=%s dirty_pause_us=%s" % (
        cfg["rate_mbit"], cfg["ports"], cfg["driver"], cfg["mem_mb"], cfg["static_mb"], cfg["dirty_mb"], cfg["dirty_pause_us"]))
print("\nlink check (%s, %s s per run, Mbit/s):" % (link[0]["tool"] if link else "-", link[0]["seconds"] if link else "-"))
print("\n| phase | streams | total | per stream (min–max) |")
print("|-------|--------:|------:|------|")
for r in link:
    ps = r.get("per_stream_bps") or []
    print("| %s | %d | %.1f | %s |" % (r["phase"], r["streams"], r["bps"] / 1e6,
          "%.1f–%.1f" % (min(ps) / 1e6, max(ps) / 1e6) if ps else ""))
ns = sorted({r["connections"] for r in mig})
tp = lambda r: r["throughput_Bps"]
tx = lambda r: r["transferred_bytes"] * 1000.0 / r["transfer_time_ms"] if r.get("transfer_time_ms") else float("nan")
base = med([tp(r) for r in ok(1)])
base_x = med([tx(r) for r in ok(1)])
goal = lambda x, n: ("met" if x >= 0.8 * n else "NOT met") + " (≥ %.1f)" % (0.8 * n)
runs = lambda n: "%d of %d" % (len(ok(n)), len([r for r in mig if r["connections"] == n]))
print("\nthroughput = QEMU's ram.transferred / total-time (query-migrate); medians; × 1-conn against the 1-connection median")
print("\n| conns | runs ok | throughput | Mbit/s | range | × 1-conn | goal ≥ 0.8 × N | over transfer time (total − setup) | × 1-conn |")
print("|------:|--------:|------:|------:|------|------:|------|------:|------:|")
for n in ns:
    rs = ok(n)
    if not rs:
        print("| %d | %s | | | | | | | |" % (n, runs(n)))
        continue
    t = [tp(r) for r in rs]
    print("| %d | %s | %.2f MiB/s | %.1f | %.2f–%.2f MiB/s | %.2f | %s | %.2f MiB/s | %.2f |" % (
        n, runs(n), med(t) / M, med(t) * 8 / 1e6, min(t) / M, max(t) / M, med(t) / base, goal(med(t) / base, n),
        med([tx(r) for r in rs]) / M, med([tx(r) for r in rs]) / base_x))
print("\nwhere the time went, and the flows as the htb classes counted them (medians):")
print("\n| conns | transferred | total-time | setup | downtime | flows with data | steady rate, all flows (middle half) | per flow | bytes outside the capped classes (max) |")
print("|------:|------:|------:|------:|------:|------|------:|------:|------:|")
for n in ns:
    rs = ok(n)
    if not rs:
        continue
    flows = sorted({r["flows"] for r in rs})
    st = [r["steady_bps"] for r in rs if r.get("steady_bps")]
    print("| %d | %.0f MiB | %.1f s | %.2f s | %d ms | %s | %.1f Mbit/s | %.1f Mbit/s | %d B |" % (
        n, med([r["transferred_bytes"] for r in rs]) / M, med([r["total_time_ms"] for r in rs]) / 1000,
        med([r["setup_time_ms"] or 0 for r in rs]) / 1000, med([r["downtime_ms"] for r in rs]),
        "%d–%d" % (flows[0], flows[-1]) if len(flows) > 1 else str(flows[0]),
        med(st) / 1e6, med(st) / 1e6 / max(1, flows[0]), max(r["default_bytes"] or 0 for r in rs)))
rounds = sorted({r["round"] for r in mig})
print("\nper round, throughput ÷ the same round's 1-connection throughput:")
for k in rounds:
    one = [r for r in mig if r["round"] == k and r["connections"] == 1 and r["health"] == "ok"]
    parts = []
    for n in ns:
        rr = [r for r in mig if r["round"] == k and r["connections"] == n and r["health"] == "ok"]
        if rr and one:
            parts.append("%d: %.2f" % (n, rr[0]["throughput_Bps"] / one[0]["throughput_Bps"]))
    print("  round %d (order %s): %s" % (k, " ".join(str(r["connections"]) for r in mig if r["round"] == k), ", ".join(parts) or "-"))
fails = [r for r in mig if r["health"] != "ok"]
print("failures (migration or health): %d of %d migrations" % (len(fails), len(mig)))
for r in fails:
    print("  n=%d round %d: %s" % (r["connections"], r["round"], r["health"]))
PY
}
if [ "${1:-}" = --summary ]; then
	summary "$2"
	exit 0
fi

driver=${VMOPS_BENCH_MULTICONN_DRIVER:-bare}
case $driver in bare | vm) ;; *) echo "bench-multiconn: DRIVER must be bare or vm, not $driver" >&2; exit 2 ;; esac
if [ "$(id -u)" != 0 ]; then
	echo "bench-multiconn: needs root (network namespaces, tc): not run" >&2
	exit 1
fi
# Test hosts (two: source and target), and for vm-migrate a database.
if [ -z "${VMOPS_TEST_HOSTS_DIR:-}" ]; then
	[ -z "${VMOPS_BENCH_MULTICONN_WRAPPED:-}" ] || { echo "bench-multiconn: with-hosts.sh made no hosts" >&2; exit 1; }
	VMOPS_BENCH_MULTICONN_WRAPPED=1 VMOPS_TEST_HOSTS=2 exec tests/hosts/with-hosts.sh "$self" "$@"
fi
[ "$driver" = bare ] || [ -n "${VMOPS_TEST_PGHOST:-}" ] || exec tests/pgcluster.sh "$self" "$@"

rounds=${VMOPS_BENCH_MULTICONN_ROUNDS:-1}
conns=${VMOPS_BENCH_MULTICONN_CONNS:-1 2 4}
rate=${VMOPS_BENCH_MULTICONN_RATE_MBIT:-20}
nports=${VMOPS_BENCH_MULTICONN_PORTS:-64}
pbase=${VMOPS_BENCH_MULTICONN_PORT_BASE:-40000}
mem=${VMOPS_BENCH_MULTICONN_MEM_MB:-256}
static_mb=${VMOPS_BENCH_MULTICONN_STATIC_MB:-4}
dirty=${VMOPS_BENCH_MULTICONN_DIRTY_MB:-1}
pause=${VMOPS_BENCH_MULTICONN_DIRTY_PAUSE_US:-1000000}
budget=${VMOPS_BENCH_MULTICONN_DEADLINE:-1800}
link_s=${VMOPS_BENCH_MULTICONN_LINK_S:-5}
for v in "$rounds" "$rate" "$nports" "$pbase" "$mem" "$static_mb" "$dirty" "$pause" "$budget" "$link_s" $conns; do
	case $v in '' | *[!0-9]*) echo "bench-multiconn: not a number: '$v'" >&2; exit 2 ;; esac
done
[ "$nports" -ge 16 ] && [ $((pbase + nports)) -le 65535 ] || { echo "bench-multiconn: PORTS 16.. within 1..65535" >&2; exit 2; }

hd=$VMOPS_TEST_HOSTS_DIR
ns1=$(cat "$hd/h1/netns") ns2=$(cat "$hd/h2/netns")
addr1=$(cat "$hd/h1/addr") addr2=$(cat "$hd/h2/addr")
tmp=$(mktemp -d /tmp/vmops-bench-multiconn.XXXXXX)
out=${VMOPS_BENCH_MULTICONN_OUT:-$tmp/out}
mkdir -p "$out"
out=$(cd "$out" && pwd)
res=$out/results.jsonl
: >"$res"
db=multiconn_bench
bindir=${VMOPS_BIN_DIR:-$top/bin}
py=$(python3 -c 'import sys; print(sys.executable)')
ms() { echo $(( $(date +%s%N) / 1000000 )); }
log() { echo "bench-multiconn: $*"; }
in1() { ip netns exec "$ns1" "$@"; }
in2() { ip netns exec "$ns2" "$@"; }
fleet() { "$bindir/vm-fleet" --db "dbname=$db" "$@"; }
q() { psql -qAtX -d "$db" -F' ' -c "$1"; }

# Kill a pid only if its command line still names our temp dir (PID reuse).
kill_ours() {
	[ -r "/proc/$1/cmdline" ] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -q "$tmp" || return 0
	kill "$1" 2>/dev/null || return 0
	i=0
	while [ -d "/proc/$1" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
	kill -9 "$1" 2>/dev/null || true
}
old_range=""
cleanup() {
	rc=$?
	trap - EXIT INT TERM
	set +e
	if [ "$driver" = vm ] && [ -s "$tmp/sandboxes" ]; then
		while read -r s; do fleet -q destroy "$s" >/dev/null 2>&1; done <"$tmp/sandboxes"
	fi
	for p in $(pgrep -f "$tmp/" 2>/dev/null); do
		[ "$p" = $$ ] || kill_ours "$p"
	done
	[ -s "$tmp/iperf.pid" ] && kill "$(cat "$tmp/iperf.pid")" 2>/dev/null
	[ -s "$tmp/sampler.pid" ] && kill "$(cat "$tmp/sampler.pid")" 2>/dev/null
	tc -n "$ns1" qdisc del dev eth0 root 2>/dev/null
	[ -n "$old_range" ] && in1 sysctl -qw net.ipv4.ip_local_port_range="$old_range"
	[ "$driver" = vm ] && psql -qAtX -d postgres -c "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1
	rm -rf --one-file-system "$tmp"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_s=$(date +%s)
deadline=$((start_s + budget))
eval "$(tests/guest/build-guest.sh "$top/build/guest" 2>/dev/null | grep '^VMOPS_TEST_[A-Z]*=')"
[ -n "${VMOPS_TEST_KERNEL:-}" ] || { echo "bench-multiconn: no test guest (tests/guest/build-guest.sh)" >&2; exit 1; }
guest_cmdline="console=ttyS0 no_timer_check vmops.static_mb=$static_mb vmops.dirty_mb=$dirty vmops.dirty_pause_us=$pause"

log "machine: $(nproc) CPUs, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)," \
	"$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1), load $(cut -d' ' -f1-3 /proc/loadavg)," \
	"$(qemu-system-x86_64 --version | head -n1), kernel $(uname -r)"
log "source $addr1 ($ns1) -> target $addr2 ($ns2); cap ${rate} Mbit/s per flow on ports $pbase-$((pbase + nports - 1));" \
	"driver $driver; connections: $conns; $rounds round(s); guest ${mem} MiB, $guest_cmdline"
printf '{"kind": "config", "driver": "%s", "rate_mbit": %d, "ports": %d, "mem_mb": %d, "static_mb": %d, "dirty_mb": %d, "dirty_pause_us": %d, "rounds": %d, "load_start": "%s"}\n' \
	"$driver" "$rate" "$nports" "$mem" "$static_mb" "$dirty" "$pause" "$rounds" "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$res"

# --- the cap -----------------------------------------------------------------------
cap_on() {
	old_range=$(in1 sysctl -n net.ipv4.ip_local_port_range | tr -s '\t ' ' ')
	in1 sysctl -qw net.ipv4.ip_local_port_range="$pbase $((pbase + nports - 1))"
	{
		echo "qdisc add dev eth0 root handle 1: htb default fff0"
		echo "class add dev eth0 parent 1: classid 1:fff0 htb rate 10gbit quantum 60000"
		i=0
		while [ $i -lt "$nports" ]; do
			c=$(printf %x $((i + 16)))
			echo "class add dev eth0 parent 1: classid 1:$c htb rate ${rate}mbit ceil ${rate}mbit quantum 1514"
			echo "filter add dev eth0 parent 1: protocol ip prio 1 u32 match ip sport $((pbase + i)) 0xffff flowid 1:$c"
			i=$((i + 1))
		done
	} >"$tmp/tc.batch"
	tc -n "$ns1" -batch "$tmp/tc.batch"
}
# Bytes sent so far by each htb class of the source's eth0: "ID=BYTES ...".
class_bytes() {
	tc -n "$ns1" -s class show dev eth0 | awk '$1 == "class" { id = $3 } $1 == "Sent" { printf "%s=%s ", id, $2 }'
}
# Between two class_bytes snapshots, as JSON: the uncapped default class's
# bytes, each port class's bytes (largest first), and how many flows carried
# data (at least a tenth of the largest one's bytes and 1 MiB: a multifd
# migration's main channel carries only headers and device state).
class_delta() {
	"$py" - "$1" "$2" <<'PY'
import json, sys
parse = lambda s: dict((k, int(v)) for k, v in (x.split("=") for x in s.split()))
a, b = parse(sys.argv[1]), parse(sys.argv[2])
d = lambda k: b[k] - a.get(k, 0)
fl = sorted((d(k) for k in b if k != "1:fff0"), reverse=True)
top = fl[0] if fl else 0
print(json.dumps({"default_bytes": d("1:fff0") if "1:fff0" in b else None, "flow_bytes": [x for x in fl if x > 0],
                  "flows": len([x for x in fl if x >= max(top / 10, 1 << 20)])}))
PY
}

# --- the link: iperf3 (else python) from source to target, N streams --------------
link() {   # PHASE N
	phase=$1 n=$2
	if [ "${VMOPS_BENCH_MULTICONN_LINK_TOOL:-iperf3}" = iperf3 ] && command -v iperf3 >/dev/null; then
		tool=iperf3
		ip netns exec "$ns2" iperf3 -s -B "$addr2" -p 5201 >/dev/null 2>&1 &
		echo $! >"$tmp/iperf.pid"
		sleep 0.5
		r=$(timeout $((link_s + 30)) ip netns exec "$ns1" iperf3 -c "$addr2" -p 5201 -t "$link_s" -P "$n" -J 2>/dev/null |
			"$py" -c 'import json, sys
d = json.load(sys.stdin)
print(json.dumps({"bps": d["end"]["sum_received"]["bits_per_second"],
                  "per_stream_bps": [s["receiver"]["bits_per_second"] for s in d["end"]["streams"]]}))') ||
			r='{"bps": 0, "per_stream_bps": []}'
		kill "$(cat "$tmp/iperf.pid")" 2>/dev/null || true
		wait "$(cat "$tmp/iperf.pid")" 2>/dev/null || true
		: >"$tmp/iperf.pid"
	else
		tool=python
		ip netns exec "$ns2" "$py" - "$addr2" "$n" "$tmp" >"$tmp/sink.out" 2>&1 <<'PY' &
import socket, sys, threading
addr, n = sys.argv[1], int(sys.argv[2])
srv = socket.socket(); srv.bind((addr, 5201)); srv.listen(n)
open(sys.argv[3] + "/sink.ready", "w").close()
got = [0] * n
def sink(i):
    c, _ = srv.accept()
    b = bytearray(1 << 16)
    while True:
        k = c.recv_into(b)
        if not k: break
        got[i] += k
    c.close()
ts = [threading.Thread(target=sink, args=(i,)) for i in range(n)]
for t in ts: t.start()
for t in ts: t.join()
PY
		echo $! >"$tmp/iperf.pid"
		i=0; while [ ! -e "$tmp/sink.ready" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
		r=$(in1 "$py" - "$addr2" "$n" "$link_s" <<'PY'
import json, socket, sys, threading, time
addr, n, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
buf = b"\0" * (1 << 16); sent = [0] * n
def src(i):
    s = socket.create_connection((addr, 5201)); end = time.monotonic() + secs
    while time.monotonic() < end:
        sent[i] += s.send(buf)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)  # the sink closes once it has read everything
    s.close()
t0 = time.monotonic()
ts = [threading.Thread(target=src, args=(i,)) for i in range(n)]
for t in ts: t.start()
for t in ts: t.join()
dt = time.monotonic() - t0
print(json.dumps({"bps": sum(sent) * 8 / dt, "per_stream_bps": [x * 8 / dt for x in sent]}))
PY
) || r='{"bps": 0, "per_stream_bps": []}'
		wait "$(cat "$tmp/iperf.pid")" 2>/dev/null || true
		: >"$tmp/iperf.pid"
		rm -f "$tmp/sink.ready"
	fi
	echo "$r" | "$py" -c 'import json, sys
r = json.load(sys.stdin); r.update(kind="link", phase=sys.argv[1], streams=int(sys.argv[2]), tool=sys.argv[3], seconds=int(sys.argv[4]))
print(json.dumps(r))' "$phase" "$n" "$tool" "$link_s" >>"$res"
	log "link ($phase, $tool, $n stream(s)): $(tail -n1 "$res" | "$py" -c 'import json, sys
r = json.load(sys.stdin); print("%.1f Mbit/s, per stream %s" % (r["bps"] / 1e6, " ".join("%.1f" % (x / 1e6) for x in r["per_stream_bps"])))')"
}

# --- the guest's health (as tests/bench/bench-migrate.sh checks it) --------------------
wait_line() {  # FILE REGEX TIMEOUT_S
	i=0
	while ! grep -qE "$2" "$1" 2>/dev/null; do
		i=$((i + 1))
		[ $i -le $(($3 * 10)) ] || return 1
		sleep 0.1
	done
}
beats() { cat "$1" 2>/dev/null | tr -d '\r' | grep -ao 'HEARTBEAT [0-9]* static=.*' || :; }
# LOG BOOT: "<beats> <passes verified in this log> <beats not OK>".
beat_state() {
	beats "$1" | awk -v boot="$2" '
		{ n++; p = substr($5, 6) + 0; if (n == 1) first = p; last = p
		  if ($3 != "static=" boot || $4 != "static_ok=1" || $6 != "pass_ok=1" || $7 != "bad=0") bad++ }
		END { printf "%d %d %d\n", n, last - first, bad }'
}
wait_checked() {  # LOG BOOT TIMEOUT_S: 3 heartbeats and a pass verified in LOG
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

# --- the two drivers: launch_guest NAME, migrate_guest NAME N, drop_guest NAME ------
# launch_guest sets src_log (the source's serial log); migrate_guest writes
# $out/NAME.json (status, total_time_ms, transferred_bytes, ...) and sets
# tgt_log (the target's serial log); drop_guest stops whatever is left.
# Long steps run in the background and are waited for, so that Ctrl-C (a
# trapped signal) interrupts `wait` at once instead of after the migration.
if [ "$driver" = vm ]; then
	cat >"$tmp/spec.json" <<-SPEC
	{"hypervisor": "qemu", "memory_mb": $mem, "vcpus": 1, "accel": "tcg",
	 "kernel": "$VMOPS_TEST_KERNEL", "initrd": "$VMOPS_TEST_INITRD", "cmdline": "$guest_cmdline"}
	SPEC
	psql -qAtX -d postgres -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >/dev/null
	fleet -q init
	fleet -q worker add h1 --memory 64G --vcpus 64 --transport ssh --address "$addr1" --run-dir "$tmp/h1" \
		--image-dirs "$(dirname "$VMOPS_TEST_KERNEL")"
	fleet -q worker add h2 --memory 64G --vcpus 64 --transport ssh --address "$addr2" --run-dir "$tmp/h2" \
		--image-dirs "$(dirname "$VMOPS_TEST_KERNEL")"
fi
run_dir_of() { q "SELECT v.run_dir FROM sandboxes s JOIN vmms v ON v.id = s.active_vmm_id WHERE s.name = '$1'"; }
launch_guest() {
	if [ "$driver" = vm ]; then
		echo "$1" >>"$tmp/sandboxes"
		fleet -q launch --sandbox "$1" --org bench --worker h1 --spec "$tmp/spec.json"
		src_log=$(run_dir_of "$1")/serial.log
		return
	fi
	rd=$tmp/$1
	mkdir -p "$rd"
	# vm-fleet's QEMU command line (lib/hv_qemu.c), TCG: RAM 8 KiB over the size.
	ip netns exec "$ns1" qemu-system-x86_64 -name "vmops-bench-mc-$1" -nodefaults -no-user-config -nographic -display none \
		-accel tcg -m "$((mem * 1024 + 8))k" -smp 1 -kernel "$VMOPS_TEST_KERNEL" -initrd "$VMOPS_TEST_INITRD" \
		-append "$guest_cmdline" -chardev "file,id=serial0,path=$rd/serial.log,append=on" -serial chardev:serial0 \
		-qmp "unix:$rd/qmp.sock,server=on,wait=off" -chardev "socket,id=qga0,path=$rd/qga.sock,server=on,wait=off" \
		-device virtio-serial-pci,id=vser0 -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0 \
		</dev/null >"$rd/qemu.log" 2>&1 &
	echo $! >"$rd/pid"
	src_log=$rd/serial.log
}
migrate_guest() {  # NAME N
	if [ "$driver" = vm ]; then
		timeout 900 "$bindir/vm-migrate" --db "dbname=$db" --json "$1" --to h2 --connections "$2" \
			>"$out/$1.raw.json" 2>"$out/$1.err" &
		wait $! || return $?
		"$py" -c 'import json, sys
d = json.load(open(sys.argv[1])); d = d.get("migration", d); print(json.dumps(d))' "$out/$1.raw.json" >"$out/$1.json"
		tgt_log=$(run_dir_of "$1")/serial.log
		return
	fi
	rd=$tmp/$1
	tgt_log=$rd-target/serial.log
	timeout 900 ip netns exec "$ns2" "$py" tests/bench/qmp-migrate.py --pid "$(cat "$rd/pid")" \
		--qmp "$rd/qmp.sock" --run-dir "$rd-target" --connections "$2" --address "$addr2" --timeout 600 \
		>"$out/$1.json" 2>"$out/$1.err" &
	wait $!
}
drop_guest() {
	if [ "$driver" = vm ]; then
		fleet -q destroy "$1" || true
		return
	fi
	for f in "$tmp/$1/pid" "$tmp/$1-target/pid"; do
		[ -s "$f" ] && kill_ours "$(cat "$f")"
	done
	rm -rf "${tmp:?}/$1" "${tmp:?}/$1-target"
}

# --- one migration ------------------------------------------------------------------------
fails=0
trial() {  # ROUND N
	k=$1 n=$2 name=g$1-$2
	launch_guest "$name"
	if ! wait_line "$src_log" 'HEARTBEAT 2 ' 300; then
		log "$name: no HEARTBEAT 2 within 300 s"
		fails=$((fails + 1))
		printf '{"kind": "migration", "round": %d, "connections": %d, "health": "no HEARTBEAT 2 on the source"}\n' "$k" "$n" >>"$res"
		drop_guest "$name"
		return 0
	fi
	boot=$(grep -ao 'VMOPS-GUEST-READY.* static=[0-9a-f]*' "$src_log" | head -n1 | sed 's/.* static=//')
	load=$(cut -d' ' -f1 /proc/loadavg)
	c0=$(class_bytes)
	# The capped classes' counters twice a second during the migration.
	( while :; do echo "$(ms) $(class_bytes)"; sleep 0.5; done ) >"$tmp/samples" 2>/dev/null &
	sampler=$!
	echo $sampler >"$tmp/sampler.pid"
	rc=0 tgt_log=
	t0=$(ms)
	migrate_guest "$name" "$n" || rc=$?
	wall=$(( $(ms) - t0 ))
	kill "$sampler" 2>/dev/null || true
	wait "$sampler" 2>/dev/null || true
	c1=$(class_bytes)
	cp "$tmp/samples" "$out/$name.samples"
	health=ok
	if [ $rc -ne 0 ]; then
		health="exit $rc: $(head -c 300 "$out/$name.err" | tr '\n' ' ')"
	elif ! wait_checked "$tgt_log" "$boot" 120; then
		health="no verified dirtier pass on the target within 120 s"
	elif grep -aqE 'Oops|BUG:|panic|CHECKSUM-MISMATCH|VMOPS-GUEST-ERROR' "$tgt_log"; then
		health="target log: $(grep -aoE '(Oops|BUG:|panic|CHECKSUM-MISMATCH|VMOPS-GUEST-ERROR).*' "$tgt_log" | head -n1)"
	elif [ "$(beat_state "$tgt_log" "$boot" | cut -d' ' -f3)" -ne 0 ]; then
		health="target: heartbeat not OK (boot static=$boot)"
	fi
	around=$(class_delta "$c0" "$c1" | "$py" -c 'import json, sys; print(json.load(sys.stdin)["default_bytes"] or 0)')
	[ "$health" != ok ] || [ "$around" -lt 1048576 ] || health="$around bytes went around the cap (uncapped class)"
	[ "$health" = ok ] || { fails=$((fails + 1)); cp "$tgt_log" "$out/$name.target-serial.log" 2>/dev/null || true; }
	"$py" - "$out/$name.json" "$k" "$n" "$wall" "$load" "$health" "$(class_delta "$c0" "$c1")" "$out/$name.samples" \
		>>"$res" <<'PY'
import json, sys
f, k, n, wall, load, health, cls, samples = sys.argv[1:]
try:
    d = json.load(open(f))
except Exception:
    d = {}
r = {"kind": "migration", "round": int(k), "connections": int(n), "wall_ms": int(wall), "load1": float(load),
     "health": health, "status": d.get("status", d.get("state")), "total_time_ms": d.get("total_time_ms"),
     "setup_time_ms": d.get("setup_time_ms"), "downtime_ms": d.get("downtime_ms"),
     "transferred_bytes": d.get("transferred_bytes"), "multifd_bytes": d.get("multifd_bytes")}
r.update(json.loads(cls))
# Steady rate: the capped classes' bytes over the middle half of the time
# they carried data (no connection set-up, no final pass).
pts = []
for line in open(samples):
    f = line.split()
    if len(f) >= 2:
        pts.append((int(f[0]), sum(int(x.split("=")[1]) for x in f[1:] if not x.startswith("1:fff0="))))
busy = [i for i in range(1, len(pts)) if pts[i][1] > pts[i - 1][1]]
if len(busy) >= 4:
    t0, t1 = pts[busy[0] - 1][0], pts[busy[-1]][0]
    ta, tb = t0 + (t1 - t0) / 4, t1 - (t1 - t0) / 4
    mid = [p for p in pts if ta <= p[0] <= tb]
    if len(mid) >= 2 and mid[-1][0] > mid[0][0]:
        r["steady_bps"] = (mid[-1][1] - mid[0][1]) * 8000.0 / (mid[-1][0] - mid[0][0])
if r["total_time_ms"] and r["setup_time_ms"] is not None and r["total_time_ms"] > r["setup_time_ms"]:
    r["transfer_time_ms"] = r["total_time_ms"] - r["setup_time_ms"]
if r["transferred_bytes"] and r["total_time_ms"]:
    r["throughput_Bps"] = r["transferred_bytes"] * 1000.0 / r["total_time_ms"]
elif health == "ok":
    r["health"] = "no transferred bytes or total time in the driver's output"
print(json.dumps(r))
PY
	tail -n1 "$res" | "$py" -c 'import json, sys
r = json.load(sys.stdin)
print("bench-multiconn: round %d n=%d: %s MiB in %s ms (setup %s) = %s Mbit/s, steady %s Mbit/s, flows %s (MiB: %s), uncapped %d B, downtime %s ms, load %.1f, %s" % (
    r["round"], r["connections"], "%.1f" % (r["transferred_bytes"] / 1048576.0) if r.get("transferred_bytes") else "-",
    r["total_time_ms"], r["setup_time_ms"], "%.1f" % (r["throughput_Bps"] * 8 / 1e6) if r.get("throughput_Bps") else "-",
    "%.1f" % (r["steady_bps"] / 1e6) if r.get("steady_bps") else "-",
    r["flows"], " ".join("%.1f" % (b / 1048576.0) for b in r["flow_bytes"][:6]), r["default_bytes"],
    r["downtime_ms"], r["load1"], r["health"]))'
	# A migration that "succeeded" without figures counts as failed too.
	if [ "$health" = ok ] && ! tail -n1 "$res" | grep -q '"health": "ok"'; then fails=$((fails + 1)); fi
	drop_guest "$name"
}

# --- the run --------------------------------------------------------------------------------
for n in 1 4; do link uncapped "$n"; done
cap_on
for n in 1 2 4; do link capped "$n"; done
# The cap must hold before anything is measured against it: one stream
# within 50-110 % of the cap (TCP/IP headers count against it), four within
# 3-4.4 times that.
if ! grep '"phase": "capped"' "$res" | "$py" -c 'import json, sys
cap = float(sys.argv[1]) * 1e6
r = dict((x["streams"], x["bps"]) for x in map(json.loads, sys.stdin))
sys.exit(0 if 0.5 * cap <= r.get(1, 0) <= 1.1 * cap and 3 * r[1] <= r.get(4, 0) <= 4.4 * r[1] else 1)' "$rate"; then
	log "the per-flow cap does not hold (see the capped link lines above): nothing measured"
	exit 1
fi
set -- $conns
k=1
stopped=""
while [ $k -le "$rounds" ]; do
	order=""
	for n in "$@"; do order="$order $n"; done
	for n in $order; do
		if [ "$(date +%s)" -ge $deadline ]; then stopped="budget of ${budget}s used up before round $k n=$n"; break 2; fi
		trial "$k" "$n"
	done
	# The next round starts with the next connection count.
	first=$1; shift; set -- "$@" "$first"
	k=$((k + 1))
done
[ -z "$stopped" ] || log "STOPPED EARLY: $stopped"
for n in 1 4; do link "capped, after" "$n"; done
log "load at the end $(cut -d' ' -f1-3 /proc/loadavg); results: $res ($(($(date +%s) - start_s)) s)$([ -n "${VMOPS_BENCH_MULTICONN_OUT:-}" ] || echo ', removed at exit: set VMOPS_BENCH_MULTICONN_OUT to keep them')"
summary "$res"
[ "$fails" -eq 0 ]
