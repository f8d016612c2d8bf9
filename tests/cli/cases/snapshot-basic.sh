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
