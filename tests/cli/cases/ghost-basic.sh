# ghost-reap against the recorded /proc tree tests/fixtures/proc (see its
# README; uptime 86400.5 s, so every age is fixed) and fixture rows for
# worker fx (run directory /run/vmops), as in tests/unit/test_ghost.c:
#   700  qemu vmops-vmm-7, vmm 7 running with that pid and start    healthy
#   800  firecracker vmops-vmm-8, vmm 8 destroyed, 5400.5 s old      ghost
#   850  cloud-hypervisor vmops-vmm-10, no row, 4400.5 s old         young
#   1200 qemu "(deleted)" vmops-vmm-11, no path in /run/vmops        foreign
#   1100 a decoy (exe /usr/bin/sleep) that vmm 9 names: not a hypervisor
#   1300 firecracker without a fleet token: counted, not listed
#   vmm 12 pid 900 (state Z, parent 1000)                            zombie
#   vmm 13 pid 901 (state X)                                         phantom
#   vmm 14 pid 1001 recorded with start time 12345 (it is 8400100)   phantom
#   vmm 15 pid 4242 (absent)                                         phantom
#   vmm 18 pid 4343 (absent), sandbox migrating                      phantom, skipped
# The tree is recorded, so no pid or age varies: no masking.
P=tests/fixtures/proc
vm-fleet --db "$DB" -q init
runs ghost-reap --db "$DB" --worker fx --proc-root $P --dry-run
sql "INSERT INTO workers (name, memory_mb, vcpus, run_dir) VALUES
       ('fx', 65536, 64, '/run/vmops'), ('fy', 65536, 64, '/run/other');
     INSERT INTO sandboxes (id, name, org_id, status, worker_id, memory_mb, vcpus) OVERRIDING SYSTEM VALUE VALUES
       (7, 'sb-7', 'acme', 'running', 1, 512, 1), (8, 'sb-8', 'acme', 'destroyed', 1, 512, 1),
       (9, 'sb-9', 'acme', 'destroyed', 1, 512, 1), (12, 'sb-12', 'acme', 'running', 1, 512, 1),
       (13, 'sb-13', 'acme', 'running', 1, 512, 1), (14, 'sb-14', 'acme', 'running', 1, 512, 1),
       (15, 'sb-15', 'acme', 'running', 1, 512, 1), (18, 'sb-18', 'acme', 'running', 1, 512, 1);
     INSERT INTO vmms (id, sandbox_id, worker_id, hypervisor, state, pid, pid_start_time, control_socket)
       OVERRIDING SYSTEM VALUE VALUES
       (7, 7, 1, 'qemu', 'running', 700, 8000000, '/run/vmops/vmops-vmm-7.qmp'),
       (8, 8, 1, 'firecracker', 'destroyed', 800, 8100000, '/run/vmops/fc.sock'),
       (9, 9, 1, 'qemu', 'destroyed', 1100, 8500000, NULL),
       (12, 12, 1, 'qemu', 'running', 900, 8300000, NULL),
       (13, 13, 1, 'qemu', 'running', 901, 8350000, NULL),
       (14, 14, 1, 'qemu', 'running', 1001, 12345, NULL),
       (15, 15, 1, 'qemu', 'running', 4242, 100, NULL),
       (18, 18, 1, 'qemu', 'running', 4343, 100, NULL);
     UPDATE sandboxes SET active_vmm_id = id;
     UPDATE sandboxes SET status = 'migrating' WHERE id = 18;
     INSERT INTO reservations (vmm_id, worker_id, memory_mb, vcpus)
       SELECT id, 1, 512, 1 FROM vmms WHERE state = 'running';
     INSERT INTO scale_events (sandbox_id, org_id, worker_id, vmm_id, memory_mb, vcpus)
       SELECT id, 'acme', 1, id, 512, 1 FROM sandboxes WHERE status IN ('running', 'migrating')"
STATE="SELECT v.id, v.state, s.status,
              (SELECT count(*) FROM scale_events e WHERE e.vmm_id = v.id AND e.ended_at IS NULL) AS open_events,
              (SELECT count(*) FROM reservations r WHERE r.vmm_id = v.id) AS reservations
         FROM vmms v JOIN sandboxes s ON s.id = v.sandbox_id ORDER BY v.id"
sql "$STATE"

# Unknown worker: exit 11, nothing read or changed.
runs ghost-reap --db "$DB" --worker nosuch --proc-root $P --dry-run

# Look only: every item, would-repair for the phantoms and the zombie, exit 3.
runs ghost-reap --db "$DB" --worker fx --proc-root $P --min-age 90m --dry-run
runs ghost-reap --db "$DB" --worker fx --proc-root $P --min-age 90m --dry-run --json
sql "$STATE"
sql "SELECT count(*) FROM audit_log"

# Repair (VMOPS_PROC_ROOT is the default of --proc-root): the phantoms and
# the zombie are failed, their sandboxes error, billing closed; the
# migrating one is skipped and the ghost only logged: still exit 3.
runs env VMOPS_PROC_ROOT=$P ghost-reap --db "$DB" --worker fx --min-age 90m --repair-from-recording --json
sql "$STATE"
sql "SELECT program, action, object_type, object_id, before->>'vmm_state', before->>'pid',
            before->>'sandbox_status', after->>'vmm_state', after->>'sandbox_status', after->>'events_closed'
       FROM audit_log ORDER BY object_id"

# Again: nothing more to repair; quiet prints nothing, the exit status
# still says 3.
runs ghost-reap --db "$DB" --worker fx --proc-root $P --min-age 90m --repair-from-recording
runs ghost-reap --db "$DB" --worker fx --proc-root $P --min-age 90m --repair-from-recording -q

# --min-age 2h: the ghost is young now; the migration ends, so the last
# phantom is repaired: everything found was fixed, exit 4.
sql "UPDATE sandboxes SET status = 'running' WHERE id = 18"
runs ghost-reap --db "$DB" --worker fx --proc-root $P --min-age 2h --repair-from-recording -v
sql "$STATE"

# Another worker on the same host: the fleet's processes are foreign to it.
runs ghost-reap --db "$DB" --worker fy --proc-root $P --repair-from-recording --json
