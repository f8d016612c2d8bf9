-- Generate a fleet-sized vmops database for the benchmarks, into an empty
-- database that `vm-fleet init` has prepared:
--
--   psql -v ON_ERROR_STOP=1 [-v sandboxes=N] -d DB -f tests/bench/gen-fleet.sql
--
-- At the default scale (sandboxes=100000):
--   1,000 workers, 1,000 orgs, 100,000 sandboxes (60 % running),
--   1,000,000 VMMs, of which 100,000 abandoned (destroyed or failed, not
--   deleted, unreferenced) and 300 destroyed but still some sandbox's target,
--   10,000,000 scale events (100 per sandbox, back to back over 100 hours
--   that end at bench_meta.t_end, the top of the hour of generation),
--   usage samples per org and hour derived from the ledger, a ready snapshot
--   per hibernated sandbox,
-- and planted drift, recorded in bench_plants (category, sandbox_id, org_id):
--   open_terminal 250, open_worker_terminated 240 (workers 1-4 terminated),
--   open_vmm_dead 250, size_mismatch 250, missing_event 250, overlap 250
--   (all inside the last hour), org_usage 200 (samples 10 % off).
--
-- The usage samples are derived from the ledger *after* the plants, so the
-- per-org comparison flags exactly the 200 planted orgs; the other plants
-- are state drift that the samples do not see.  Triggers (admission,
-- invariants) are off during the load (session_replication_role = replica):
-- the generator writes a consistent fleet itself and then plants the drift
-- that the invariants would refuse.  Indexes on the big tables are dropped
-- for the load and rebuilt from their own definitions afterwards.

\if :{?sandboxes}
\else
\set sandboxes 100000
\endif

\set ON_ERROR_STOP 1
\timing on
SET session_replication_role = replica;
SET maintenance_work_mem = '1GB';
SET max_parallel_maintenance_workers = 2;
SET work_mem = '256MB';
SET synchronous_commit = off;

DO $$
BEGIN
	IF EXISTS (SELECT 1 FROM sandboxes) OR EXISTS (SELECT 1 FROM workers) THEN
		RAISE EXCEPTION 'gen-fleet: the database is not empty';
	END IF;
END $$;

CREATE TABLE bench_meta AS
	SELECT date_trunc('hour', now()) AS t_end, :sandboxes::bigint AS sandboxes;
CREATE TABLE bench_plants (category text NOT NULL, sandbox_id bigint, org_id text);

-- Indexes that are not constraints, dropped for the load, rebuilt after.
CREATE TABLE bench_saved_indexes AS
	SELECT i.indexname, i.indexdef FROM pg_indexes i
	 WHERE i.schemaname = 'public'
	   AND i.tablename IN ('vmms', 'scale_events', 'reservations', 'usage_samples')
	   AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname);
DO $$
DECLARE r record;
BEGIN
	FOR r IN SELECT indexname FROM bench_saved_indexes LOOP
		EXECUTE format('DROP INDEX %I', r.indexname);
	END LOOP;
END $$;

-- Worker w holds sandboxes 100(w-1)+1 .. 100w.
INSERT INTO workers (name, memory_mb, vcpus, time_created, time_state_updated)
SELECT 'bw' || w, 16777216, 65536, m.t_end - interval '200 hours', m.t_end - interval '200 hours'
  FROM bench_meta m, generate_series(1, (m.sandboxes + 99) / 100) w;

-- Sandbox i: org i % 1000; running when i % 10 < 6; its size is its last event's.
INSERT INTO sandboxes (name, org_id, status, worker_id, memory_mb, vcpus, time_created, time_status_updated)
SELECT 'bs' || i, 'org-' || (i % 1000),
       CASE WHEN i % 10 < 6 THEN 'running' WHEN i % 10 < 8 THEN 'stopped'
            WHEN i % 10 = 8 THEN 'hibernated' ELSE 'destroyed' END,
       (i - 1) / 100 + 1, 1024 * (1 + (i + 99) % 4), 1 + i % 4,
       m.t_end - interval '100 hours',
       CASE WHEN i % 10 < 6 THEN m.t_end - interval '100 hours' ELSE m.t_end END
  FROM bench_meta m, generate_series(1, m.sandboxes) i
 ORDER BY i;

-- Ten VMMs per sandbox, id 10(i-1)+j+1: j = 9 is the running one (running
-- sandboxes), j = 8 is abandoned (destroyed, every 13th failed), the rest
-- destroyed and deleted long ago.
INSERT INTO vmms (sandbox_id, worker_id, hypervisor, state, pid, time_created, time_state_updated, time_deleted)
SELECT i, (i - 1) / 100 + 1, CASE WHEN i % 5 = 0 THEN 'cloud-hypervisor' ELSE 'qemu' END,
       CASE WHEN j = 9 AND i % 10 < 6 THEN 'running'
            WHEN j = 8 AND i % 13 = 0 THEN 'failed' ELSE 'destroyed' END,
       CASE WHEN j = 9 AND i % 10 < 6 THEN 1000 + i END,
       m.t_end - interval '100 hours' + j * interval '10 hours',
       m.t_end - interval '100 hours' + (j + 1) * interval '10 hours' - interval '1 hour',
       CASE WHEN j = 8 OR (j = 9 AND i % 10 < 6) THEN NULL
            ELSE m.t_end - interval '100 hours' + (j + 1) * interval '10 hours' END
  FROM bench_meta m, generate_series(1, m.sandboxes) i, generate_series(0, 9) j
 ORDER BY i, j;
UPDATE sandboxes SET active_vmm_id = id * 10 WHERE status = 'running';

-- Hibernated sandboxes hold a ready snapshot of their last VMM (schema 11
-- refuses a hibernated sandbox without one, also when it upgrades a fleet).
INSERT INTO snapshots (sandbox_id, vmm_id, worker_id, location, size_bytes, sha256, manifest, state,
                       time_created, time_ready, time_state_updated)
SELECT s.id, s.id * 10, s.worker_id, '/var/lib/vmops/bundles/' || s.name || '.vmops', 1048576,
       md5(s.name) || md5(s.name || '.'), '{"format": 1}', 'ready', m.t_end, m.t_end, m.t_end
  FROM sandboxes s, bench_meta m
 WHERE s.status = 'hibernated'
 ORDER BY s.id;

-- Reservations: the running VMMs and the abandoned ones.
INSERT INTO reservations (vmm_id, worker_id, memory_mb, vcpus)
SELECT v.id, v.worker_id, s.memory_mb, s.vcpus
  FROM vmms v JOIN sandboxes s ON s.id = v.sandbox_id
 WHERE v.time_deleted IS NULL
 ORDER BY v.id;

-- The workers' reserved totals (schema v3), which the triggers would have
-- kept: what vmm-reap releases must have been reserved.
UPDATE workers w SET reserved_memory_mb = r.mem, reserved_vcpus = r.cpu
  FROM (SELECT worker_id, sum(memory_mb) AS mem, sum(vcpus) AS cpu
          FROM reservations GROUP BY worker_id) r
 WHERE r.worker_id = w.id;

-- 100 events per sandbox, back to back, each an hour, offset by (7i mod 60)
-- minutes; the last is open for running sandboxes, else ends at t_end.
-- Written hour by hour, as a ledger grows (the last hour's events are at
-- the end of the table, not spread over every page): event id k*N + i.
INSERT INTO scale_events (sandbox_id, org_id, worker_id, vmm_id, memory_mb, vcpus, started_at, ended_at)
SELECT i, 'org-' || (i % 1000), (i - 1) / 100 + 1, 10 * (i - 1) + k / 10 + 1,
       1024 * (1 + (i + k) % 4), 1 + i % 4,
       m.t_end - (100 - k) * interval '1 hour' + (i * 7 % 60) * interval '1 minute',
       CASE WHEN k < 99 THEN m.t_end - (99 - k) * interval '1 hour' + (i * 7 % 60) * interval '1 minute'
            WHEN i % 10 < 6 THEN NULL ELSE m.t_end END
  FROM bench_meta m, generate_series(0, 99) k, generate_series(1, m.sandboxes) i
 ORDER BY k, i;

-- ---- planted drift -------------------------------------------------------

-- open_worker_terminated: workers 1-4 terminated with their running sandboxes.
UPDATE workers SET state = 'terminated', time_state_updated = (SELECT t_end FROM bench_meta) - interval '30 minutes'
 WHERE id <= 4;
INSERT INTO bench_plants SELECT 'open_worker_terminated', id, org_id FROM sandboxes
 WHERE worker_id <= 4 AND status = 'running';

-- open_terminal: stopped 20 minutes before t_end, billing left open.
WITH p AS (SELECT id FROM sandboxes WHERE id > 1000 AND status = 'running' ORDER BY id LIMIT 250)
UPDATE sandboxes s SET status = 'stopped', time_status_updated = (SELECT t_end FROM bench_meta) - interval '20 minutes'
  FROM p WHERE s.id = p.id;
INSERT INTO bench_plants SELECT 'open_terminal', id, org_id FROM sandboxes
 WHERE id BETWEEN 1001 AND 2000 AND status = 'stopped' AND time_status_updated < (SELECT t_end FROM bench_meta);

-- open_vmm_dead: the running VMM failed 15 minutes before t_end.
WITH p AS (SELECT id FROM sandboxes WHERE id > 2000 AND status = 'running' ORDER BY id LIMIT 250)
INSERT INTO bench_plants SELECT 'open_vmm_dead', s.id, s.org_id FROM sandboxes s JOIN p USING (id);
UPDATE vmms v SET state = 'failed', time_state_updated = (SELECT t_end FROM bench_meta) - interval '15 minutes'
  FROM bench_plants p WHERE p.category = 'open_vmm_dead' AND v.id = p.sandbox_id * 10;

-- missing_event: the open event closed 10 minutes before t_end.
WITH p AS (SELECT id FROM sandboxes WHERE id > 3000 AND status = 'running' AND id * 7 % 60 <= 45
            ORDER BY id LIMIT 250)
INSERT INTO bench_plants SELECT 'missing_event', s.id, s.org_id FROM sandboxes s JOIN p USING (id);
UPDATE scale_events e SET ended_at = (SELECT t_end FROM bench_meta) - interval '10 minutes'
  FROM bench_plants p WHERE p.category = 'missing_event' AND e.sandbox_id = p.sandbox_id AND e.ended_at IS NULL;

-- size_mismatch: resized to twice the memory without a new event.
WITH p AS (SELECT id FROM sandboxes WHERE id > 4000 AND status = 'running' ORDER BY id LIMIT 250)
INSERT INTO bench_plants SELECT 'size_mismatch', s.id, s.org_id FROM sandboxes s JOIN p USING (id);
UPDATE sandboxes s SET memory_mb = s.memory_mb * 2
  FROM bench_plants p WHERE p.category = 'size_mismatch' AND s.id = p.sandbox_id;

-- overlap: the second-to-last event closed 10 minutes late, inside the last hour.
WITH p AS (SELECT id FROM sandboxes WHERE id > 5000 AND id * 7 % 60 <= 45 ORDER BY id LIMIT 250)
INSERT INTO bench_plants SELECT 'overlap', s.id, s.org_id FROM sandboxes s JOIN p USING (id);
UPDATE scale_events e SET ended_at = e.ended_at + interval '10 minutes'
  FROM bench_plants p, bench_meta m WHERE p.category = 'overlap' AND e.id = 98 * m.sandboxes + p.sandbox_id;

-- vmm-reap: 300 destroyed VMMs that are still a sandbox's target (must stay).
UPDATE vmms v SET time_deleted = NULL
 WHERE v.id IN (SELECT 10 * (id - 1) + 8 FROM sandboxes WHERE id > 6000 AND status = 'running' ORDER BY id LIMIT 300);
UPDATE sandboxes s SET target_vmm_id = 10 * (s.id - 1) + 8
 WHERE s.id IN (SELECT id FROM sandboxes WHERE id > 6000 AND status = 'running' ORDER BY id LIMIT 300);

-- ---- the independent usage record ----------------------------------------

-- Per org and hour, the average memory the ledger billed, up to t_end.
INSERT INTO usage_samples (org_id, period_start, period_end, memory_mb)
SELECT e.org_id, h, h + interval '1 hour',
       round(sum(e.memory_mb * extract(epoch FROM least(coalesce(e.ended_at, m.t_end), h + interval '1 hour')
                                                   - greatest(e.started_at, h))::float8) / 3600)::bigint
  FROM bench_meta m, scale_events e,
       LATERAL generate_series(date_trunc('hour', e.started_at),
                               least(coalesce(e.ended_at, m.t_end), m.t_end) - interval '1 microsecond',
                               interval '1 hour') h
 WHERE e.started_at < m.t_end
 GROUP BY e.org_id, h;

-- org_usage: 200 orgs whose samples are 10 % low (even) or high (odd).
INSERT INTO bench_plants SELECT 'org_usage', NULL, 'org-' || o FROM generate_series(500, 699) o;
UPDATE usage_samples u SET memory_mb = round(u.memory_mb * CASE WHEN substr(u.org_id, 5)::int % 2 = 0 THEN 0.9 ELSE 1.1 END)
 WHERE u.org_id IN (SELECT org_id FROM bench_plants WHERE category = 'org_usage');

-- ---- indexes back, statistics ----------------------------------------------
DO $$
DECLARE r record;
BEGIN
	FOR r IN SELECT indexdef FROM bench_saved_indexes LOOP
		EXECUTE r.indexdef;
	END LOOP;
END $$;
DROP TABLE bench_saved_indexes;
RESET session_replication_role;
VACUUM ANALYZE;

SELECT (SELECT count(*) FROM vmms) AS vmms,
       (SELECT count(*) FROM vmms v WHERE v.state IN ('destroyed', 'failed') AND v.time_deleted IS NULL
           AND NOT EXISTS (SELECT 1 FROM sandboxes s WHERE s.active_vmm_id = v.id)
           AND NOT EXISTS (SELECT 1 FROM sandboxes s WHERE s.target_vmm_id = v.id)) AS abandoned,
       (SELECT count(*) FROM scale_events) AS scale_events,
       (SELECT count(*) FROM usage_samples) AS usage_samples,
       (SELECT count(*) FROM bench_plants) AS plants;
