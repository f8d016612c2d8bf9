# snapshot-prep against fixture rows, without touching a VM: the refusals
# (a missing sandbox is exit 11, one that is not running exit 10), the dry
# run in text and JSON, and a bundle that is not a bundle (exit 16, nothing
# launched, nothing left in the run directory).
vm-fleet --db "$DB" -q init
psql -qAtX -d "$DB" >/dev/null <<'SQL'
INSERT INTO workers (name, memory_mb, vcpus, state) VALUES ('w1', 4096, 8, 'active');
INSERT INTO sandboxes (name, org_id, status, worker_id, memory_mb, vcpus)
  VALUES ('stopped1', 'acme', 'stopped', 1, 256, 1);
SQL
runs snapshot-prep --db "$DB" prepare --sandbox nosuch
runs snapshot-prep --db "$DB" snapshot --sandbox stopped1 -o /tmp/vmops-cli-never
runs snapshot-prep --db "$DB" snapshot --live --sandbox stopped1 -o /tmp/vmops-cli-never --json
runs snapshot-prep --db "$DB" undo --sandbox stopped1 --json
T=$(mktemp -d /tmp/vmops-cli-snap.XXXXXX)
echo "this is not a bundle" >"$T/junk"
runs snapshot-prep restore -i "$T/junk" --run-dir "$T/r" | sed "s#$T#<tmp>#g"
runs snapshot-prep restore -i - --run-dir "$T/r2" <"$T/junk" | sed "s#$T#<tmp>#g"
echo "files left: $(find "$T/r" "$T/r2" -type f 2>/dev/null | wc -l)"
runs snapshot-prep restore -i "$T/junk" --run-dir "$T/r3" --dry-run --json | sed "s#$T#<tmp>#g"
rm -rf "$T"
# hibernate needs a running sandbox; wake a hibernated one with a ready snapshot.
runs snapshot-prep --db "$DB" hibernate --sandbox stopped1 --bundle-dir /tmp
runs snapshot-prep --db "$DB" wake --sandbox stopped1
runs snapshot-prep --db "$DB" wake --sandbox nosuch --json
# recover: nothing in flight; a missing sandbox; a crashed hibernate whose
# lease still runs (refused, says until when) and then has expired (dry run:
# what would be done, nothing changed).
psql -qAtX -d "$DB" >/dev/null <<'SQL'
INSERT INTO sandboxes (name, org_id, status, worker_id, memory_mb, vcpus)
  VALUES ('run1', 'acme', 'running', 1, 256, 1);
INSERT INTO vmms (sandbox_id, worker_id, hypervisor, state) VALUES (2, 1, 'qemu', 'running');
UPDATE sandboxes SET active_vmm_id = 1 WHERE name = 'run1';
INSERT INTO snapshots (sandbox_id, vmm_id, worker_id, location, lease_owner, lease_expires_at)
  VALUES (2, 1, 1, '/tmp/vmops-cli-never/run1-1.vmops', 'snapshot-prep pid 1 on h',
          '2999-01-01 00:00:00+00');
SQL
# A dry run of a running sandbox: what would be done; paused_ms is only
# known after a real snapshot (null).
runs snapshot-prep --db "$DB" snapshot --live --sandbox run1 -o /tmp/vmops-cli-never --dry-run --json
runs snapshot-prep --db "$DB" recover --sandbox stopped1
runs snapshot-prep --db "$DB" recover --sandbox nosuch --json
runs snapshot-prep --db "$DB" recover --sandbox run1
psql -qAtX -d "$DB" -c "UPDATE snapshots SET lease_expires_at = now() - interval '1 second'" >/dev/null
runs snapshot-prep --db "$DB" recover --sandbox run1 --dry-run --json
echo "still writing: $(psql -qAtX -d "$DB" -c "SELECT count(*) FROM snapshots WHERE state = 'writing'")"
# The launch-spec policy on the worker a sandbox wakes on, before anything
# is reserved there: w1's image directories do not hold hib1's kernel, so
# the wake is refused (exit 10, the first refusal named) and nothing
# changes; w2's do, and only w2 is then chosen.
K=$(mktemp -d /tmp/vmops-cli-img.XXXXXX)
: >"$K/vmlinuz"
chmod 0644 "$K/vmlinuz"
psql -qAtX -d "$DB" >/dev/null <<SQL
UPDATE workers SET image_dirs = ARRAY['/var/lib/vmops-cli-none'] WHERE name = 'w1';
INSERT INTO workers (name, memory_mb, vcpus, state, image_dirs, run_dir) VALUES ('w2', 1024, 8, 'active', ARRAY['/var/lib/vmops-cli-none2'], '$K/run');
INSERT INTO sandboxes (name, org_id, status, worker_id, memory_mb, vcpus, launch_spec)
  VALUES ('hib1', 'acme', 'stopped', 1, 256, 1,
          '{"hypervisor": "qemu", "memory_mb": 256, "vcpus": 1, "kernel": "$K/vmlinuz"}');
INSERT INTO vmms (sandbox_id, worker_id, hypervisor, state) VALUES (3, 1, 'qemu', 'destroyed');
INSERT INTO snapshots (sandbox_id, vmm_id, worker_id, location, size_bytes, sha256, manifest, state, time_ready)
  VALUES (3, 2, 1, '/tmp/vmops-cli-never/hib1.vmops', 1, repeat('0', 64), '{}', 'ready', now());
UPDATE sandboxes SET status = 'hibernated', worker_id = NULL WHERE name = 'hib1';
SQL
STATE="SELECT (SELECT count(*) FROM vmms), (SELECT count(*) FROM reservations),
              (SELECT string_agg(state, ' ') FROM snapshots WHERE sandbox_id = 3),
              (SELECT status FROM sandboxes WHERE name = 'hib1')"
sql "$STATE"
runs snapshot-prep --db "$DB" wake --sandbox hib1 | sed "s#$K#<img>#g"
runs snapshot-prep --db "$DB" wake --sandbox hib1 --worker w1 --json | sed "s#$K#<img>#g"
sql "$STATE"
# w2 may take it: the policy passes, the claim is made, and the wake then
# fails on the missing bundle (exit 1) and undoes its claim.
psql -qAtX -d "$DB" -c "UPDATE workers SET image_dirs = ARRAY['$K'] WHERE name = 'w2'" >/dev/null
runs snapshot-prep --db "$DB" wake --sandbox hib1 | sed "s#$K#<img>#g"
sql "SELECT v.state, w.name FROM vmms v JOIN workers w ON w.id = v.worker_id WHERE v.id > 2 ORDER BY v.id"
sql "$STATE"
rm -rf "$K"
# A sandbox whose worker is on another host (transport ssh): snapshot and
# hibernate refuse it before anything is recorded (exit 13), naming the
# worker; no snapshot row is added.
psql -qAtX -d "$DB" >/dev/null <<'SQL'
INSERT INTO workers (name, memory_mb, vcpus, state, transport, migration_address)
  VALUES ('w-far', 4096, 8, 'active', 'ssh', '198.18.0.9');
INSERT INTO sandboxes (name, org_id, status, worker_id, memory_mb, vcpus)
  SELECT 'far1', 'acme', 'running', id, 256, 1 FROM workers WHERE name = 'w-far';
INSERT INTO vmms (sandbox_id, worker_id, hypervisor, state)
  SELECT s.id, s.worker_id, 'qemu', 'running' FROM sandboxes s WHERE s.name = 'far1';
UPDATE sandboxes s SET active_vmm_id = v.id FROM vmms v WHERE v.sandbox_id = s.id AND s.name = 'far1';
SQL
runs snapshot-prep --db "$DB" snapshot --sandbox far1 -o /tmp/vmops-cli-never
runs snapshot-prep --db "$DB" hibernate --sandbox far1 --bundle-dir /tmp --json
sql "SELECT count(*) FROM snapshots s JOIN sandboxes x ON x.id = s.sandbox_id WHERE x.name = 'far1'"
