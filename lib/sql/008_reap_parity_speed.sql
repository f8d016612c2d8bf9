-- vmops schema, version 8: vmm-reap and usage-parity on fleet-sized tables
-- (issue 15).  No data changes.
--
-- 1. vmm-reap writes one audit row per batch (action 'reap-batch'), not one
--    per VMM; the view vmm_reaps gives one row per reaped VMM (and per
--    freed reservation) from those rows and from the per-VMM rows ('reap',
--    'reap-reservation') that vmm-reap wrote before this version.
-- 2. vmms_touch runs only for updates that change the state (its function
--    did nothing else), so vmm-reap's update of time_deleted no longer
--    calls PL/pgSQL once per VMM.
-- 3. usage-parity's overlap check reads each sandbox's events in
--    (started_at, id) order with their ends straight from the index
--    (index-only): scale_events_sandbox_idx gains id and ended_at.

-- ---- 1. the reap audit, one row per VMM again ---------------------------------
-- A 'reap-batch' row (object_type 'vmm', object_id NULL) holds, in columns
-- of equal length and in VMM id order:
--   before.vmms          {id, state, sandbox_id, worker_id}: the VMMs whose
--                        time_deleted this batch set (it was NULL before)
--   before.reservations  {vmm_id, worker_id, memory_mb, vcpus}: the
--                        reservations this batch deleted
--   after                {time_deleted, reservations: null}
-- A reservation whose VMM is not among the VMMs is the old
-- 'reap-reservation' case (freed, VMM not updated).
CREATE VIEW vmm_reaps AS
SELECT a.id AS audit_id, a.at, a.actor, a.program, x.vmm_id, x.state, x.sandbox_id, x.worker_id,
       CASE WHEN x.state IS NOT NULL THEN (a.after->>'time_deleted')::timestamptz END AS time_deleted,
       x.reservation_worker_id, x.reservation_memory_mb, x.reservation_vcpus
  FROM audit_log a
  CROSS JOIN LATERAL (
	SELECT coalesce(v.vmm_id, r.vmm_id) AS vmm_id, v.state, v.sandbox_id, v.worker_id,
	       r.worker_id AS reservation_worker_id, r.memory_mb AS reservation_memory_mb,
	       r.vcpus AS reservation_vcpus
	  FROM (SELECT t.vmm_id::bigint, t.state, t.sandbox_id::bigint, t.worker_id::bigint
	          FROM ROWS FROM (jsonb_array_elements_text(a.before->'vmms'->'id'),
	                          jsonb_array_elements_text(a.before->'vmms'->'state'),
	                          jsonb_array_elements_text(a.before->'vmms'->'sandbox_id'),
	                          jsonb_array_elements_text(a.before->'vmms'->'worker_id'))
	               AS t(vmm_id, state, sandbox_id, worker_id)) v
	  FULL JOIN
	       (SELECT t.vmm_id::bigint, t.worker_id::bigint, t.memory_mb::bigint, t.vcpus::integer
	          FROM ROWS FROM (jsonb_array_elements_text(a.before->'reservations'->'vmm_id'),
	                          jsonb_array_elements_text(a.before->'reservations'->'worker_id'),
	                          jsonb_array_elements_text(a.before->'reservations'->'memory_mb'),
	                          jsonb_array_elements_text(a.before->'reservations'->'vcpus'))
	               AS t(vmm_id, worker_id, memory_mb, vcpus)) r
	    ON r.vmm_id = v.vmm_id) x
 WHERE a.action = 'reap-batch' AND a.object_type = 'vmm'
UNION ALL
SELECT a.id, a.at, a.actor, a.program, a.object_id,
       CASE WHEN a.action = 'reap' THEN a.before->>'state' END,
       CASE WHEN a.action = 'reap' THEN (a.before->>'sandbox_id')::bigint END,
       CASE WHEN a.action = 'reap' THEN (a.before->>'worker_id')::bigint END,
       CASE WHEN a.action = 'reap' THEN (a.after->>'time_deleted')::timestamptz END,
       (a.before->'reservation'->>'worker_id')::bigint,
       (a.before->'reservation'->>'memory_mb')::bigint,
       (a.before->'reservation'->>'vcpus')::integer
  FROM audit_log a
 WHERE a.action IN ('reap', 'reap-reservation') AND a.object_type = 'vmm';

-- ---- 2. the state timestamp trigger, only when the state changes ---------------
-- Same effect: for vmms, vmops_touch_state() only sets time_state_updated
-- when NEW.state differs from OLD.state.  A BEFORE trigger's WHEN is
-- evaluated just before the function would run, so it sees what earlier
-- BEFORE triggers did to NEW.
DROP TRIGGER vmms_touch ON vmms;
CREATE TRIGGER vmms_touch BEFORE UPDATE ON vmms
	FOR EACH ROW WHEN (NEW.state IS DISTINCT FROM OLD.state)
	EXECUTE FUNCTION vmops_touch_state();

-- ---- 3. each sandbox's events in order, ends included --------------------------
DROP INDEX scale_events_sandbox_idx;
CREATE INDEX scale_events_sandbox_idx ON scale_events (sandbox_id, started_at, id) INCLUDE (ended_at);
