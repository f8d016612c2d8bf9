# vm-migrate against fixture rows, without moving any VM: --recover on an
# empty database, the refusals of step 1 (exit 10, 11 and 7) and of the
# target choice (exit 9), and --dry-run's choice of a target, in text and
# JSON.  Nothing here writes to the database: it is compared before and
# after.
#
# A dry run must reach the source's QMP socket: a QEMU without a guest
# (-machine none) answers it.  Masked: that QEMU's directory, and wait_ms
# and wall_ms (durations; the mask matches a bare number only, so in JSON
# they are still proven numbers).
mask() {
	sed -E -e "s#$QDIR#<qemu-dir>#g" \
		-e 's/^(wait_ms|wall_ms):( +)[0-9]+$/\1:\2<ms>/' \
		-e 's/^(\t+"(wait_ms|wall_ms)":\t)[0-9]+(,?)$/\1<ms>\3/'
}
vm-fleet --db "$DB" -q init
runs vm-migrate --db "$DB" --recover --dry-run
runs vm-migrate --db "$DB" --recover --json
runs vm-migrate --db "$DB" --recover -q

QDIR=$(mktemp -d /tmp/vmops-cli-qemu.XXXXXX)
trap 'kill "$(cat "$QDIR/pid" 2>/dev/null)" 2>/dev/null; rm -rf "$QDIR"' EXIT
qemu-system-x86_64 -machine none -nodefaults -display none -daemonize -pidfile "$QDIR/pid" \
	-qmp "unix:$QDIR/qmp.sock,server=on,wait=off" || echo "qemu-system-x86_64 -machine none did not start"

# Workers: w1 the source; w2 has the most room; w5 less; w3 is draining;
# w4 is too small for a 1 GiB guest.
#   sb1      running on w1, its QMP socket answers        (the one that moves)
#   sb2      stopped                                      exit 10
#   sb3      migrating (an attempt into w2 is running)    exit 10
#   sb4      running, launch spec {}                      exit 10
#   sb5      running, its VMM's pid is gone               exit 7
#   sb6      running, socket under a regular file         exit 7
#   sb7      running, socket path does not exist          exit 7 (after 5 s of retries)
#   sb8      running, no active VMM                       exit 10
#   sb-big   running, 16 GiB: no worker has room          exit 9
# The spec's kernel: a file where the launch-spec policy allows it ($QDIR).
: >"$QDIR/vmlinuz"
chmod 0644 "$QDIR/vmlinuz"
export VMOPS_IMAGE_DIRS="$QDIR"
SPEC='{"hypervisor": "qemu", "memory_mb": 1024, "vcpus": 1, "kernel": "'"$QDIR"'/vmlinuz"}'
sql "INSERT INTO workers (id, name, memory_mb, vcpus, state) OVERRIDING SYSTEM VALUE VALUES
       (1, 'w1', 32768, 32, 'active'), (2, 'w2', 8192, 8, 'active'), (3, 'w3', 65536, 64, 'draining'),
       (4, 'w4', 512, 8, 'active'), (5, 'w5', 4096, 8, 'active');
     INSERT INTO sandboxes (id, name, org_id, status, worker_id, memory_mb, vcpus, launch_spec)
       OVERRIDING SYSTEM VALUE VALUES
       (1, 'sb1', 'acme', 'running', 1, 1024, 1, '$SPEC'), (2, 'sb2', 'acme', 'stopped', 1, 1024, 1, '$SPEC'),
       (3, 'sb3', 'acme', 'migrating', 1, 1024, 1, '$SPEC'), (4, 'sb4', 'acme', 'running', 1, 1024, 1, '{}'),
       (5, 'sb5', 'acme', 'running', 1, 1024, 1, '$SPEC'), (6, 'sb6', 'acme', 'running', 1, 1024, 1, '$SPEC'),
       (7, 'sb7', 'acme', 'running', 1, 1024, 1, '$SPEC'), (8, 'sb8', 'acme', 'running', 1, 1024, 1, '$SPEC'),
       (9, 'sb-big', 'acme', 'running', 1, 16384, 1, '$SPEC');
     INSERT INTO vmms (id, sandbox_id, worker_id, hypervisor, state, pid, pid_start_time, control_socket)
       OVERRIDING SYSTEM VALUE VALUES
       (1, 1, 1, 'qemu', 'running', NULL, NULL, '$QDIR/qmp.sock'),
       (3, 3, 1, 'qemu', 'migrating', NULL, NULL, '$QDIR/qmp.sock'),
       (4, 4, 1, 'qemu', 'running', NULL, NULL, '$QDIR/qmp.sock'),
       (5, 5, 1, 'qemu', 'running', 99999999, 12345, '$QDIR/qmp.sock'),
       (6, 6, 1, 'qemu', 'running', NULL, NULL, '/dev/null/qmp.sock'),
       (7, 7, 1, 'qemu', 'running', NULL, NULL, '/nonexistent-vmops/qmp.sock'),
       (9, 9, 1, 'qemu', 'running', NULL, NULL, '$QDIR/qmp.sock'),
       (10, 3, 2, 'qemu', 'migrating', NULL, NULL, NULL);
     UPDATE sandboxes SET active_vmm_id = id WHERE id IN (1, 3, 4, 5, 6, 7, 9);
     UPDATE sandboxes SET target_vmm_id = 10 WHERE id = 3;
     INSERT INTO reservations (vmm_id, worker_id, memory_mb, vcpus)
       SELECT v.id, v.worker_id, s.memory_mb, s.vcpus FROM vmms v JOIN sandboxes s ON s.id = v.sandbox_id;
     INSERT INTO migrations (id, sandbox_id, source_worker_id, target_worker_id, source_vmm_id, target_vmm_id,
                             state, lease_owner, lease_expires_at)
       OVERRIDING SYSTEM VALUE VALUES (1, 3, 1, 2, 3, 10, 'transferring', 'vm-migrate cli-test', now() + interval '1 hour')" | mask
STATE="SELECT (SELECT string_agg(name || ':' || status || ':' || coalesce(target_vmm_id::text, '-'), ' ' ORDER BY id) FROM sandboxes),
              (SELECT count(*) FROM vmms), (SELECT count(*) FROM reservations),
              (SELECT string_agg(id || ':' || state, ' ') FROM migrations), (SELECT count(*) FROM audit_log)"
sql "$STATE"

# Step 1 refusals: nothing is claimed, nothing is written.
runs vm-migrate --db "$DB" nosuch --dry-run
runs vm-migrate --db "$DB" nosuch --json
runs vm-migrate --db "$DB" sb2 --dry-run
runs vm-migrate --db "$DB" sb3 --dry-run
runs vm-migrate --db "$DB" sb4 --dry-run
runs vm-migrate --db "$DB" sb8 --dry-run
runs vm-migrate --db "$DB" sb1 --to w1 --dry-run
runs vm-migrate --db "$DB" sb1 --to w9 --dry-run
runs vm-migrate --db "$DB" sb1 --to w3 --dry-run
runs vm-migrate --db "$DB" sb5 --dry-run
runs vm-migrate --db "$DB" sb6 --dry-run
runs vm-migrate --db "$DB" sb7 --dry-run
# Without --dry-run the same refusals come before any claim.
runs vm-migrate --db "$DB" sb1 --to w3
runs vm-migrate --db "$DB" sb5 --json
sql "$STATE"

# Choosing a target.  w2 has the most room but sb3's attempt is going into
# it (the in-flight guard), so w5 is chosen; w4 has no room and --to w4 must
# wait for it: --wait-target 0s gives up at once, exit 9; so does sb-big.
# (Without --dry-run, that is; a dry run never waits.)
runs vm-migrate --db "$DB" sb1 --dry-run | mask
runs vm-migrate --db "$DB" sb1 --dry-run --json --connections 4 | mask
runs vm-migrate --db "$DB" sb1 --dry-run -q
runs vm-migrate --db "$DB" sb1 --to w2 --dry-run --wait-target 0s
runs vm-migrate --db "$DB" sb1 --to w4 --dry-run --wait-target 0s
runs vm-migrate --db "$DB" sb-big --dry-run --wait-target 0s --json
# A dry run never waits for room, whatever --wait-target says (a
# regression shows as timeout's exit 124 instead of 9).
runs timeout 20 vm-migrate --db "$DB" sb1 --to w4 --dry-run
runs timeout 20 vm-migrate --db "$DB" sb1 --to w4 --dry-run --wait-target 10m
# The attempt into w2 ends: w2 is the choice again.
sql "UPDATE migrations SET state = 'completed', lease_owner = NULL, lease_expires_at = NULL, time_finished = now();
     UPDATE sandboxes SET status = 'running', target_vmm_id = NULL WHERE id = 3"
runs vm-migrate --db "$DB" sb1 --dry-run --json | mask
runs vm-migrate --db "$DB" sb1 --to w2 --dry-run --max-bandwidth 1G/s --auto-converge --accel tcg | mask
sql "$STATE"
# The launch-spec policy on the target, before anything is claimed there:
# w6 has the most room, but its image directories do not hold sb1's
# kernel.  --to w6 is refused (exit 10), dry run or not, and nothing is
# written; the choice by capacity passes over w6.
sql "INSERT INTO workers (id, name, memory_mb, vcpus, state, image_dirs) OVERRIDING SYSTEM VALUE VALUES
       (6, 'w6', 65536, 8, 'active', ARRAY['/var/lib/vmops-cli-none'])"
runs vm-migrate --db "$DB" sb1 --to w6 --dry-run | mask
runs vm-migrate --db "$DB" sb1 --to w6 --json | mask
runs vm-migrate --db "$DB" sb1 --dry-run | mask
sql "$STATE"
sql "DELETE FROM workers WHERE id = 6"

# An attempt whose lease expired: --recover --dry-run counts it and
# changes nothing.
sql "UPDATE sandboxes SET status = 'migrating', target_vmm_id = 10 WHERE id = 3;
     INSERT INTO migrations (id, sandbox_id, source_worker_id, target_worker_id, source_vmm_id, target_vmm_id,
                             state, lease_owner, lease_expires_at)
       OVERRIDING SYSTEM VALUE VALUES (2, 3, 1, 2, 3, 10, 'transferring', 'vm-migrate cli-test', now() - interval '1 minute')"
sql "$STATE"
runs vm-migrate --db "$DB" --recover --dry-run
runs vm-migrate --db "$DB" --recover --dry-run --json
sql "$STATE"
# The target is held only by that expired attempt: say so, and what frees it.
runs vm-migrate --db "$DB" sb1 --to w2 --dry-run
sql "$STATE"
