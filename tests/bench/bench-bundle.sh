#!/bin/sh
# lib/bundle's writer against `tar --sparse -cf - FILES | zstd -1 -T0` on the
# same snapshot files, side by side in one run.
#
# The snapshot files are real: for each guest size in
# ${VMOPS_BENCH_BUNDLE_MEM_MB:-1024 2048} MiB the test guest
# (tests/guest/build-guest.sh) boots under QEMU (TCG, 1 vCPU, the same
# QEMU options lib/hv_qemu.c uses) with vmops.static_mb and vmops.dirty_mb
# set to an eighth of its memory each (so memory holds random, repeating
# and zero pages), runs until "HEARTBEAT 2", is stopped, and is migrated
# with QMP `migrate` to "exec:cat > memory" (the benchmark only; vmops
# itself hands QEMU a file descriptor).  Beside it a sparse 512 MiB disk
# image with 64 MiB of data in it, so the sparse path is measured too.
#
# Per guest, ${VMOPS_BENCH_BUNDLE_REPS:-3} repetitions, order alternating,
# all reading from the page cache (a warm-up read first):
#   tar     tar --sparse -cf - memory disk.img | zstd -1 -T0 > out
#   before  the writer of ${VMOPS_BENCH_BUNDLE_BEFORE:-cbf77f9} (two passes), > out
#   bundle  bundle-bench write - DIR memory disk.img > out   (vmops_bundle_write_fd
#           on a regular file: one pass)
#   path    bundle-bench write OUT DIR memory disk.img       (write_path: + fsync, rename)
#   pipe    bundle-bench write - DIR ... | cat > out          (a pipe: two passes)
#   verify  bundle-bench verify OUT                          (reader, no extraction)
# "before" is built from that commit's lib/bundle (git archive) linked with
# this tree's library; VMOPS_BENCH_BUNDLE_BEFORE="" leaves it out.
# Throughput = apparent bytes of the members / wall time; ratio = apparent
# bytes / output bytes.  Goal: bundle >= 80 % of tar|zstd's throughput at an
# equal or better ratio.  Exits 1 if a guest or a command failed.
#
# Environment: VMOPS_BENCH_BUNDLE_MEM_MB, _REPS, _DIR (where to put the
# files; default a temp dir under /var/tmp, removed at exit).
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
mems=${VMOPS_BENCH_BUNDLE_MEM_MB:-1024 2048}
reps=${VMOPS_BENCH_BUNDLE_REPS:-3}
bb=$top/build/bench/bundle-bench
make --no-print-directory -s build/bench/bundle-bench >/dev/null
tmp=$(mktemp -d "${VMOPS_BENCH_BUNDLE_DIR:-/var/tmp}/vmops-bench-bundle.XXXXXX")
before=${VMOPS_BENCH_BUNDLE_BEFORE-cbf77f9}
methods="tar bundle path pipe verify"
if [ -n "$before" ]; then
	mkdir "$tmp/before"
	git archive "$before" lib | tar -x -C "$tmp/before"
	# shellcheck disable=SC2046
	cc -std=c17 -D_GNU_SOURCE -O2 -I"$tmp/before/lib" -Ilib $(pkg-config --cflags libarchive libcjson libcrypto) \
		-o "$tmp/bundle-bench-before" tests/bench/bundle-bench.c "$tmp/before/lib/bundle/"*.c build/libvmops.a \
		$(pkg-config --libs libarchive libcjson libcrypto) -lpthread -lm
	methods="tar before bundle path pipe verify"
fi
log() { echo "bench-bundle: $*"; }
qpid=""
cleanup() {
	rc=$?
	trap - EXIT INT TERM
	if [ -n "$qpid" ] && [ -d "/proc/$qpid" ]; then kill "$qpid" 2>/dev/null || true; fi
	rm -rf "$tmp"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
eval "$(tests/guest/build-guest.sh "$top/build/guest" 2>/dev/null | grep '^VMOPS_TEST_[A-Z]*=')"

log "machine: $(nproc) CPUs, $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)," \
	"$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1), load $(cut -d' ' -f1-3 /proc/loadavg)," \
	"$(qemu-system-x86_64 --version | head -n1), $(zstd --version), $(tar --version | head -n1)," \
	"libarchive $(pkg-config --modversion libarchive), OpenSSL $(pkg-config --modversion libcrypto)"

# QMP: stop the guest, migrate it to FILE, wait, quit.
snapshot() {  # SOCKET FILE
	python3 - "$1" "$2" <<'PY'
import json, socket, sys, time
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile("rw")
def cmd(c, **a):
    f.write(json.dumps({"execute": c, "arguments": a}) + "\n"); f.flush()
    while True:
        r = json.loads(f.readline())
        if "return" in r or "error" in r:
            if "error" in r: sys.exit("qmp %s: %s" % (c, r["error"]))
            return r["return"]
json.loads(f.readline())
cmd("qmp_capabilities"); cmd("stop")
cmd("migrate", uri="exec:cat > '%s'" % sys.argv[2])
while True:
    st = cmd("query-migrate")
    if st.get("status") == "completed": break
    if st.get("status") in ("failed", "cancelled"): sys.exit("migration %s" % st)
    time.sleep(0.1)
print("migration: %d ms, %d bytes transferred" % (st["total-time"], st["ram"]["transferred"]))
cmd("quit")
PY
}

make_snapshot() {  # MEM_MB DIR
	mem=$1 d=$2
	mkdir -p "$d"
	q=$((mem / 8))
	qemu-system-x86_64 -name vmops-bench-bundle -nodefaults -no-user-config -nographic -display none \
		-accel tcg -m "$((mem * 1024 + 8))k" -smp 1 -kernel "$VMOPS_TEST_KERNEL" -initrd "$VMOPS_TEST_INITRD" \
		-append "console=ttyS0 no_timer_check vmops.static_mb=$q vmops.dirty_mb=$q" \
		-serial "file:$d/serial.log" -qmp "unix:$d/qmp.sock,server=on,wait=off" &
	qpid=$!
	i=0
	while ! grep -aq 'HEARTBEAT 2 ' "$d/serial.log" 2>/dev/null; do
		i=$((i + 1))
		if [ $i -gt 6000 ] || ! [ -d "/proc/$qpid" ] || grep -aq VMOPS-GUEST-ERROR "$d/serial.log" 2>/dev/null; then
			log "${mem} MiB guest: no HEARTBEAT 2 ($(tail -c 300 "$d/serial.log" 2>/dev/null | tr -d '\r' | tail -n 2))"
			return 1
		fi
		sleep 0.1
	done
	log "${mem} MiB guest: up after $((i / 10)) s (static_mb=$q dirty_mb=$q); $(snapshot "$d/qmp.sock" "$d/memory")"
	wait "$qpid" || true
	qpid=""
	rm -f "$d/serial.log" "$d/qmp.sock"
	# A sparse disk image: 512 MiB apparent, 64 MiB of data in 16 places.
	truncate -s 512M "$d/disk.img"
	for k in $(seq 0 15); do
		dd if="$d/memory" of="$d/disk.img" bs=1M count=4 skip=$((k * 8)) seek=$((k * 32)) conv=notrunc status=none
	done
}

ms() { echo $(( $(date +%s%N) / 1000000 )); }
res=$tmp/results
: >"$res"
run() {  # MEM METHOD REP DIR
	mem=$1 m=$2 rep=$3 d=$4 out=$tmp/out.$2
	rm -f "$out"
	t0=$(ms)
	case $m in
	tar) /usr/bin/time -o "$tmp/cpu" -f "%U %S" sh -c 'cd "$1" && tar --sparse -cf - memory disk.img | zstd -q -1 -T0 >"$2"' sh "$d" "$out" ;;
	bundle) /usr/bin/time -o "$tmp/cpu" -f "%U %S" "$bb" write - "$d" memory disk.img >"$out" 2>"$tmp/bb.err" ;;
	before) /usr/bin/time -o "$tmp/cpu" -f "%U %S" "$tmp/bundle-bench-before" write - "$d" memory disk.img >"$out" 2>"$tmp/bb.err" ;;
	pipe) /usr/bin/time -o "$tmp/cpu" -f "%U %S" sh -c '"$1" write - "$2" memory disk.img 2>"$3" | cat >"$4"' sh "$bb" "$d" "$tmp/bb.err" "$out" ;;
	path) /usr/bin/time -o "$tmp/cpu" -f "%U %S" "$bb" write "$out" "$d" memory disk.img 2>"$tmp/bb.err" ;;
	verify) /usr/bin/time -o "$tmp/cpu" -f "%U %S" "$bb" verify "$tmp/out.path" 2>"$tmp/bb.err" ;;
	esac
	t=$(( $(ms) - t0 ))
	cpu=$(awk '{ printf "%d", ($1 + $2) * 1000 }' "$tmp/cpu")
	if [ "$m" = verify ]; then size=$(stat -c %s "$tmp/out.path"); else size=$(stat -c %s "$out"); fi
	hash=$(sed -n 's/.*"first_byte_s": \([0-9.-]*\).*/\1/p' "$tmp/bb.err" 2>/dev/null | tail -n1)
	case $m in bundle | path | before | pipe) ;; *) hash="" ;; esac
	: >"$tmp/bb.err"
	echo "$mem $m $rep $t $size $apparent ${hash:-0} $(cut -d' ' -f1 /proc/loadavg) $cpu" >>"$res"
	log "$mem MiB $m rep $rep: $t ms (CPU $cpu ms), out $size B$([ -n "$hash" ] && echo ", hashing pass $hash s"), load $(cut -d' ' -f1 /proc/loadavg)"
}

for mem in $mems; do
	d=$tmp/g$mem
	make_snapshot "$mem" "$d"
	apparent=$(($(stat -c %s "$d/memory") + $(stat -c %s "$d/disk.img")))
	log "$mem MiB: memory $(stat -c %s "$d/memory") B, disk.img $(stat -c %s "$d/disk.img") B apparent," \
		"$(($(stat -c %b "$d/disk.img") * 512)) B allocated"
	cat "$d/memory" "$d/disk.img" >/dev/null  # warm the page cache for both
	rep=1
	while [ $rep -le "$reps" ]; do
		# alternate the order; verify reads the path bundle, so it comes after it
		if [ $((rep % 2)) -eq 1 ]; then order="$methods"; else order=$(echo "$methods" | tr ' ' '\n' | grep -v verify | tac | tr '\n' ' ')verify; fi
		for m in $order; do run "$mem" "$m" "$rep" "$d"; done
		rep=$((rep + 1))
	done
	# the bundle must extract to the same files
	mkdir "$tmp/x"
	"$bb" extract "$tmp/out.path" "$tmp/x" 2>/dev/null
	cmp "$d/memory" "$tmp/x/memory" && cmp "$d/disk.img" "$tmp/x/disk.img"
	log "$mem MiB: extracted bundle identical; disk.img extracted with $(($(stat -c %b "$tmp/x/disk.img") * 512)) B allocated"
	rm -rf "$tmp/x" "$d"
done

python3 - "$res" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
M = 1 << 20
print("\n| guest | method | runs | median wall | throughput | vs tar\\|zstd | median CPU (user+sys) | output | ratio | hashing pass |")
print("|------:|--------|-----:|------:|------:|------:|------:|------:|------:|------:|")
for mem in sorted({int(r[0]) for r in rows}):
    tp = {}
    for m, name in (("tar", "tar --sparse | zstd -1 -T0"), ("before", "before: bundle to stdout (file), two passes"),
                    ("bundle", "bundle to stdout (file), one pass"), ("path", "bundle to path (fsync, rename), one pass"),
                    ("pipe", "bundle to a pipe, two passes"), ("verify", "bundle verify (read)")):
        rs = [r for r in rows if int(r[0]) == mem and r[1] == m]
        if not rs: continue
        w = statistics.median(int(r[3]) for r in rs)
        size, app = int(rs[-1][4]), int(rs[-1][5])
        h = statistics.median(float(r[6]) for r in rs)
        cpu = statistics.median(int(r[8]) for r in rs)
        tp[m] = app / (w / 1000)
        rel = "" if m == "tar" else "%.0f %%" % (100 * tp[m] / tp["tar"])
        print("| %d MiB | %s | %d | %.2f s | %.0f MiB/s | %s | %.2f s | %.1f MiB | %.3f | %s |" % (
            mem, name.replace("|", "\\|"), len(rs), w / 1000, tp[m] / M, rel, cpu / 1000, size / M, app / size,
            "%.2f s" % h if m in ("bundle", "path", "before", "pipe") else ""))
    # per-round ratio to tar (same round, same load), median over rounds
    for m in ("before", "bundle", "path", "pipe"):
        rel = []
        for rep in sorted({r[2] for r in rows if int(r[0]) == mem}):
            t = [int(r[3]) for r in rows if int(r[0]) == mem and r[1] == "tar" and r[2] == rep]
            b = [int(r[3]) for r in rows if int(r[0]) == mem and r[1] == m and r[2] == rep]
            if t and b: rel.append(100.0 * t[0] / b[0])
        if rel:
            print("%d MiB %s: per-round throughput vs tar|zstd %s; median %.0f %%" % (
                mem, m, ", ".join("%.0f %%" % x for x in rel), statistics.median(rel)))
print("\nthroughput counts apparent bytes (holes included) per wall second; ratio = apparent / output;")
print("hashing pass = time before the first archive byte (two passes: SHA-256 of every member, holes hashed as zeros)")
PY
