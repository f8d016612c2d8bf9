# vm-drain against fixture rows, without moving any VM: the plan
# (--dry-run, text and JSON), refusals (exit 11, 10), a drain whose
# sandboxes cannot move (their launch specs are empty: each attempt is
# refused, then stuck) ending partial (exit 15) with the worker still
# draining, a rerun that continues the same drain, --cancel, and a worker
# with nothing on it drained (exit 0) after the count.  One move at a time,
# so that the per-sandbox lines come in a stable order.  Masked: durations
# (elapsed_s) and the run directory.
mask() {
	sed -E -e "s#$RDIR#<run-dir>#g" \
		-e 's/^(elapsed_s:)( +)[0-9.]+$/\1\2<s>/' \
		-e 's/^(\t+"elapsed_s":\t)[0-9.e+-]+(,?)$/\1<s>\2/' \
		-e 's/moved to ([a-z0-9-]+) in [0-9.]+s/moved to \1 in <s>/'
}
RDIR=$(mktemp -d /tmp/vmops-cli-drain.XXXXXX)
trap 'rm -rf "$RDIR"' EXIT
export VMOPS_HOST_ID=cli-drain-host
vm-fleet --db "$DB" -q init
# w1 holds a (1 GiB), b (512 MiB), c (3 GiB) and huge (64 GiB: fits nowhere);
# w2 has 4 GiB free, w3 8 GiB, w4 is draining (not a target); w-empty holds nothing.
SPEC='{}'
sql "INSERT INTO workers (id, name, memory_mb, vcpus, state, host_id) OVERRIDING SYSTEM VALUE VALUES
       (1, 'w1', 131072, 32, 'active', 'cli-drain-host'), (2, 'w2', 4096, 8, 'active', 'cli-drain-host'),
       (3, 'w3', 8192, 8, 'active', 'cli-drain-host'), (4, 'w4', 65536, 64, 'active', 'cli-drain-host'),
       (5, 'w-empty', 4096, 8, 'active', 'cli-drain-host');
     UPDATE workers SET state = 'draining' WHERE id = 4;
     INSERT INTO sandboxes (id, name, org_id, status, worker_id, memory_mb, vcpus, launch_spec)
       OVERRIDING SYSTEM VALUE VALUES
       (1, 'a', 'acme', 'running', 1, 1024, 1, '$SPEC'), (2, 'b', 'acme', 'running', 1, 512, 1, '$SPEC'),
       (3, 'c', 'acme', 'running', 1, 3072, 2, '$SPEC'), (4, 'huge', 'acme', 'running', 1, 65536, 4, '$SPEC');
     INSERT INTO vmms (id, sandbox_id, worker_id, hypervisor, state) OVERRIDING SYSTEM VALUE VALUES
       (1, 1, 1, 'qemu', 'running'), (2, 2, 1, 'qemu', 'running'), (3, 3, 1, 'qemu', 'running'),
       (4, 4, 1, 'qemu', 'running');
     UPDATE sandboxes SET active_vmm_id = id;"
# each worker's run directory: this case's own (the process count looks there)
psql -qAtX -d "$DB" -c "UPDATE workers SET run_dir = '$RDIR/' || name"
runs vm-drain --db "$DB" --dry-run w1
runs vm-drain --db "$DB" --dry-run --json --rate 200M/s --max-parallel 1 w1
runs vm-drain --db "$DB" w-none
runs vm-drain --db "$DB" --cancel w1
sql "SELECT name, state FROM workers ORDER BY id"
# a drain that cannot move anything: partial, the worker stays draining
runs vm-drain --db "$DB" --max-parallel 1 --retries 1 w1 | mask
sql "SELECT d.id, w.name, d.state, d.runs, d.detail FROM drains d JOIN workers w ON w.id = d.worker_id"
sql "SELECT s.name, x.outcome, x.attempts FROM drain_sandboxes x JOIN sandboxes s ON s.id = x.sandbox_id ORDER BY s.id"
sql "SELECT name, state FROM workers ORDER BY id"
# the drain is not active now: another vm-drain may continue it; one running it refuses a second
sql "UPDATE drains SET state = 'running', lease_owner = 'vm-drain elsewhere pid 1', lease_expires_at = now() + interval '1 hour'"
runs vm-drain --db "$DB" w1
# a dry run never waits, not even for a drain another vm-drain runs (a wait shows as timeout's 124)
runs timeout 20 vm-drain --db "$DB" --dry-run --max-parallel 1 w1
sql "UPDATE drains SET lease_expires_at = now() - interval '1 second'"
runs vm-drain --db "$DB" --json --max-parallel 1 --retries 1 w1 | mask
sql "SELECT id, state, runs FROM drains"
runs vm-drain --db "$DB" --cancel w1
sql "SELECT id, state, detail FROM drains"
sql "SELECT name, state FROM workers ORDER BY id"
# nothing on it: counted empty, drained; again: refused
runs vm-drain --db "$DB" w-empty | mask
runs vm-drain --db "$DB" w-empty
sql "SELECT w.name, w.state, d.state FROM drains d JOIN workers w ON w.id = d.worker_id WHERE w.name = 'w-empty'"
# the hibernate fallback: a Firecracker sandbox has no live migration (stuck at once, no
# retries); without --bundle-dir it stays, the detail says why; with one, its hibernate is
# tried and fails here (a fixture VMM, no process): it stays stuck with the reason, partial
sql "INSERT INTO workers (id, name, memory_mb, vcpus, state, host_id, run_dir) OVERRIDING SYSTEM VALUE VALUES
       (6, 'w-fc', 4096, 8, 'active', 'cli-drain-host', '/nonexistent/w-fc');
     INSERT INTO sandboxes (id, name, org_id, status, worker_id, memory_mb, vcpus, launch_spec)
       OVERRIDING SYSTEM VALUE VALUES (5, 'fc', 'acme', 'running', 6, 256, 1, '{\"hypervisor\": \"firecracker\"}');
     INSERT INTO vmms (id, sandbox_id, worker_id, hypervisor, state) OVERRIDING SYSTEM VALUE VALUES
       (5, 5, 6, 'firecracker', 'running');
     UPDATE sandboxes SET active_vmm_id = id WHERE id = 5"
psql -qAtX -d "$DB" -c "UPDATE workers SET run_dir = '$RDIR/' || name WHERE name = 'w-fc'"
mkdir "$RDIR/bundles"
runs vm-drain --db "$DB" --dry-run --bundle-dir "$RDIR/bundles" w-fc | mask
runs vm-drain --db "$DB" w-fc | mask
runs vm-drain --db "$DB" --json --bundle-dir "$RDIR/bundles" w-fc | mask
sql "SELECT s.name, x.outcome, x.attempts, x.last_error FROM drain_sandboxes x JOIN sandboxes s ON s.id = x.sandbox_id WHERE s.name = 'fc'" | mask
sql "SELECT state, error FROM snapshots" | mask
sql "SELECT actor, action, object_type FROM audit_log WHERE action IN ('hibernate', 'migration-start') ORDER BY id"
ls "$RDIR/bundles"
# --cancel waits for the vm-drain running a drain to end it; SIGINT (after 3 s) stops the wait at
# once: exit 12, the cancel stays recorded (a wait that ignored it would end with --wait's exit 8)
sql "UPDATE drains SET state = 'running', lease_owner = 'vm-drain elsewhere pid 1', lease_expires_at = now() + interval '1 hour'
     WHERE worker_id = 6"
runs timeout --preserve-status -s INT 3 vm-drain --db "$DB" --cancel --wait 60s w-fc
sql "SELECT state FROM drains WHERE worker_id = 6"
