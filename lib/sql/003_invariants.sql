-- vmops schema, version 3: the invariants hold whatever the writer's
-- isolation level.  A check that reads other rows with the caller's snapshot
-- (a sum of reservations, a count of receivers) can be fooled by two
-- REPEATABLE READ transactions that each miss the other's write.  Here every
-- write that a check depends on also *updates* the row the check locks (the
-- worker), so concurrent writers meet on that row: under READ COMMITTED the
-- later one waits and re-reads it, under REPEATABLE READ and SERIALIZABLE it
-- fails with a serialization failure (40001) and is retried.
--
-- New SQLSTATEs (class VO, next to VO001..VO004 of version 1):
--   VO005 worker capacity lowered below what is reserved on it
--   VO006 reservation on another worker than its VMM's (or a VMM's worker changed)
--   VO007 worker declared drained/terminated while it holds live reservations
--         or in-flight receivers (or a VMM revived on such a worker)
--   VO008 migration completed that is not the active attempt its sandbox is
--         migrating by
--   VO009 migration completed onto a worker that is neither active nor draining
--   VO010 a worker's reserved totals written other than through reservations

-- ---- refuse to upgrade a database that already breaks them -----------------
-- The operator fixes these by hand (the message says what), then runs
-- `vm-fleet init` again; nothing is half-applied (one transaction).
DO $$
DECLARE
	bad text;
BEGIN
	SELECT string_agg(format('%s (%s of %s MB, %s of %s vCPUs)', w.name, r.mem, w.memory_mb, r.cpu, w.vcpus),
	                  ', ' ORDER BY w.name)
	  INTO bad
	  FROM workers w
	  JOIN (SELECT worker_id, sum(memory_mb) AS mem, sum(vcpus) AS cpu
	          FROM reservations GROUP BY worker_id) r ON r.worker_id = w.id
	 WHERE r.mem > w.memory_mb OR r.cpu > w.vcpus;
	IF bad IS NOT NULL THEN
		RAISE EXCEPTION 'reservations exceed the capacity of worker(s) %: free reservations or raise the capacity, then run vm-fleet init again',
			bad USING ERRCODE = 'VO001';
	END IF;
	SELECT string_agg(format('vmm %s (reserved on worker %s, runs on worker %s)', r.vmm_id, r.worker_id, v.worker_id),
	                  ', ' ORDER BY r.vmm_id)
	  INTO bad
	  FROM reservations r JOIN vmms v ON v.id = r.vmm_id
	 WHERE r.worker_id <> v.worker_id;
	IF bad IS NOT NULL THEN
		RAISE EXCEPTION 'reservations on another worker than their VMM''s: %: set reservations.worker_id to the VMM''s worker, then run vm-fleet init again',
			bad USING ERRCODE = 'VO006';
	END IF;
END $$;

-- ---- invariant 4: admission on the worker row --------------------------------
-- What is reserved on a worker, kept on its row and moved only by the
-- reservation triggers below, in the transaction that writes the
-- reservations.  Admission is one UPDATE of the worker row whose WHERE is
-- the capacity test: it takes the row lock, READ COMMITTED re-evaluates it
-- on the latest row version, REPEATABLE READ fails with 40001 if another
-- transaction changed the row since its snapshot.
ALTER TABLE workers
	ADD COLUMN reserved_memory_mb bigint NOT NULL DEFAULT 0,
	ADD COLUMN reserved_vcpus integer NOT NULL DEFAULT 0;
UPDATE workers w SET reserved_memory_mb = r.mem, reserved_vcpus = r.cpu
  FROM (SELECT worker_id, sum(memory_mb) AS mem, sum(vcpus) AS cpu
          FROM reservations GROUP BY worker_id) r
 WHERE r.worker_id = w.id;
ALTER TABLE workers ADD CONSTRAINT workers_reserved_within_capacity
	CHECK (reserved_memory_mb BETWEEN 0 AND memory_mb AND reserved_vcpus BETWEEN 0 AND vcpus);

DROP TRIGGER reservations_admit ON reservations;
DROP FUNCTION vmops_admit_reservation();

-- Move worker `wid`'s reserved totals by (dmem, dcpu).  Releasing is always
-- allowed; growing needs an active worker with room (VO002, VO001).
CREATE FUNCTION vmops_reserve(wid bigint, dmem bigint, dcpu bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
	w workers%ROWTYPE;
BEGIN
	IF dmem <= 0 AND dcpu <= 0 THEN
		-- Also when both are 0: the row is updated all the same, so that a
		-- concurrent drain of this worker conflicts with this write.
		UPDATE workers SET reserved_memory_mb = reserved_memory_mb + dmem,
		                   reserved_vcpus = reserved_vcpus + dcpu
		 WHERE id = wid;
		RETURN;
	END IF;
	UPDATE workers SET reserved_memory_mb = reserved_memory_mb + dmem,
	                   reserved_vcpus = reserved_vcpus + dcpu
	 WHERE id = wid AND state = 'active'
	   AND reserved_memory_mb + dmem <= memory_mb AND reserved_vcpus + dcpu <= vcpus;
	IF FOUND THEN
		RETURN;
	END IF;
	SELECT * INTO w FROM workers WHERE id = wid;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'worker % does not exist', wid USING ERRCODE = '23503';
	END IF;
	IF w.state <> 'active' THEN
		RAISE EXCEPTION 'worker % is %, not accepting placements', w.name, w.state
			USING ERRCODE = 'VO002';
	END IF;
	RAISE EXCEPTION 'worker % capacity exceeded: % of % MB and % of % vCPUs reserved, % MB and % vCPUs requested',
		w.name, w.reserved_memory_mb, w.memory_mb, w.reserved_vcpus, w.vcpus, dmem, dcpu
		USING ERRCODE = 'VO001';
END $$;

-- One statement's reservations, per worker in id order (so that two
-- statements touching the same workers lock them in the same order): one
-- update of each worker row per statement, not per reservation.  vmm-reap
-- deletes thousands of reservations per statement over a few workers.
-- Also invariant 6 below: a reservation is on its VMM's worker.
CREATE FUNCTION vmops_account_reservations() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
	d record;
	bad bigint;
BEGIN
	IF TG_OP IN ('INSERT', 'UPDATE') THEN
		-- min(), not ORDER BY ... LIMIT 1: that walks vmms in id order and
		-- rescans the transition table for every VMM.
		SELECT min(n.vmm_id) INTO bad FROM vmops_new n JOIN vmms v ON v.id = n.vmm_id
		 WHERE v.worker_id <> n.worker_id;
		IF bad IS NOT NULL THEN
			SELECT n.vmm_id, n.worker_id, v.worker_id AS vmm_worker INTO d
			  FROM vmops_new n JOIN vmms v ON v.id = n.vmm_id
			 WHERE n.vmm_id = bad;
			RAISE EXCEPTION 'reservation of vmm % is on worker % but the vmm runs on worker %: a reservation is on its VMM''s worker',
				d.vmm_id, d.worker_id, d.vmm_worker USING ERRCODE = 'VO006';
		END IF;
	END IF;
	IF TG_OP = 'INSERT' THEN
		FOR d IN SELECT worker_id, sum(memory_mb)::bigint AS mem, sum(vcpus)::bigint AS cpu
		           FROM vmops_new GROUP BY worker_id ORDER BY worker_id LOOP
			PERFORM vmops_reserve(d.worker_id, d.mem, d.cpu);
		END LOOP;
	ELSIF TG_OP = 'UPDATE' THEN
		FOR d IN SELECT worker_id, sum(mem)::bigint AS mem, sum(cpu)::bigint AS cpu FROM (
		           SELECT worker_id, memory_mb AS mem, vcpus AS cpu FROM vmops_new
		           UNION ALL
		           SELECT worker_id, -memory_mb, -vcpus FROM vmops_old) x
		          GROUP BY worker_id ORDER BY worker_id LOOP
			PERFORM vmops_reserve(d.worker_id, d.mem, d.cpu);
		END LOOP;
	ELSE
		FOR d IN SELECT worker_id, sum(memory_mb)::bigint AS mem, sum(vcpus)::bigint AS cpu
		           FROM vmops_old GROUP BY worker_id ORDER BY worker_id LOOP
			PERFORM vmops_reserve(d.worker_id, -d.mem, -d.cpu);
		END LOOP;
	END IF;
	RETURN NULL;
END $$;
CREATE TRIGGER reservations_admit AFTER INSERT ON reservations
	REFERENCING NEW TABLE AS vmops_new
	FOR EACH STATEMENT EXECUTE FUNCTION vmops_account_reservations();
CREATE TRIGGER reservations_readmit AFTER UPDATE ON reservations
	REFERENCING OLD TABLE AS vmops_old NEW TABLE AS vmops_new
	FOR EACH STATEMENT EXECUTE FUNCTION vmops_account_reservations();
CREATE TRIGGER reservations_release AFTER DELETE ON reservations
	REFERENCING OLD TABLE AS vmops_old
	FOR EACH STATEMENT EXECUTE FUNCTION vmops_account_reservations();

CREATE FUNCTION vmops_release_all_reservations() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	UPDATE workers SET reserved_memory_mb = 0, reserved_vcpus = 0
	 WHERE reserved_memory_mb <> 0 OR reserved_vcpus <> 0;
	RETURN NULL;
END $$;
CREATE TRIGGER reservations_release_all AFTER TRUNCATE ON reservations
	FOR EACH STATEMENT EXECUTE FUNCTION vmops_release_all_reservations();

-- The totals are the reservations' business only (VO010), and capacity
-- cannot be lowered below them (VO005).  A write from one of the triggers
-- above runs at trigger depth 2; a client's own UPDATE at depth 1.
CREATE FUNCTION vmops_guard_worker_capacity() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF TG_OP = 'INSERT' THEN
		IF NEW.reserved_memory_mb <> 0 OR NEW.reserved_vcpus <> 0 THEN
			RAISE EXCEPTION 'worker %: reserved_memory_mb and reserved_vcpus follow its reservations; they cannot be written',
				NEW.name USING ERRCODE = 'VO010';
		END IF;
		RETURN NEW;
	END IF;
	IF (NEW.reserved_memory_mb, NEW.reserved_vcpus) IS DISTINCT FROM (OLD.reserved_memory_mb, OLD.reserved_vcpus)
	   AND pg_trigger_depth() < 2 THEN
		RAISE EXCEPTION 'worker %: reserved_memory_mb and reserved_vcpus follow its reservations; they cannot be written',
			NEW.name USING ERRCODE = 'VO010';
	END IF;
	IF (NEW.memory_mb < OLD.memory_mb OR NEW.vcpus < OLD.vcpus)
	   AND (NEW.memory_mb < NEW.reserved_memory_mb OR NEW.vcpus < NEW.reserved_vcpus) THEN
		RAISE EXCEPTION 'worker % capacity cannot be lowered to % MB and % vCPUs: % MB and % vCPUs are reserved on it',
			NEW.name, NEW.memory_mb, NEW.vcpus, NEW.reserved_memory_mb, NEW.reserved_vcpus
			USING ERRCODE = 'VO005';
	END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER workers_guard_capacity
	BEFORE INSERT OR UPDATE OF memory_mb, vcpus, reserved_memory_mb, reserved_vcpus ON workers
	FOR EACH ROW EXECUTE FUNCTION vmops_guard_worker_capacity();

-- ---- a VMM stays on its worker; one revived on a drained worker ---------------
-- A VMM is one process on one worker: its worker never changes, so the
-- reservation check above reads a value no concurrent transaction can
-- change (VO006).  A VMM that comes back from destroyed/failed while its
-- reservation is still held updates the worker row like an admission, so a
-- concurrent drain conflicts with it, and is refused on a worker that is
-- already drained or terminated (VO007).
CREATE FUNCTION vmops_guard_vmm() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
	w record;
BEGIN
	IF NEW.worker_id IS DISTINCT FROM OLD.worker_id THEN
		RAISE EXCEPTION 'vmm %: its worker cannot change (% to %): a VMM is a process on one worker',
			NEW.id, OLD.worker_id, NEW.worker_id USING ERRCODE = 'VO006';
	END IF;
	IF OLD.state IN ('destroyed', 'failed') AND NEW.state NOT IN ('destroyed', 'failed') THEN
		UPDATE workers x SET reserved_memory_mb = x.reserved_memory_mb
		  FROM reservations r
		 WHERE r.vmm_id = NEW.id AND x.id = r.worker_id
		RETURNING x.name, x.state INTO w;
		IF FOUND AND w.state IN ('drained', 'terminated') THEN
			RAISE EXCEPTION 'vmm % cannot become % again: its worker % is %', NEW.id, NEW.state, w.name, w.state
				USING ERRCODE = 'VO007';
		END IF;
	END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER vmms_guard BEFORE UPDATE OF worker_id, state ON vmms
	FOR EACH ROW EXECUTE FUNCTION vmops_guard_vmm();

-- ---- a drained or terminated worker holds nothing ------------------------------
-- A receiver is an active migration (queued, preparing, transferring,
-- switching) whose target is the worker.  Becoming one updates the target
-- worker row, so a concurrent drain conflicts with it, and is refused on a
-- worker that is not active (VO002: a target is a placement).
CREATE FUNCTION vmops_claim_migration_target() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
	w record;
BEGIN
	IF NEW.target_worker_id IS NOT NULL
	   AND NEW.state IN ('queued', 'preparing', 'transferring', 'switching')
	   AND (TG_OP = 'INSERT' OR OLD.state NOT IN ('queued', 'preparing', 'transferring', 'switching')
	        OR OLD.target_worker_id IS DISTINCT FROM NEW.target_worker_id) THEN
		UPDATE workers SET reserved_memory_mb = reserved_memory_mb
		 WHERE id = NEW.target_worker_id
		RETURNING name, state INTO w;
		IF FOUND AND w.state <> 'active' THEN
			RAISE EXCEPTION 'worker % is %, not accepting migrations', w.name, w.state
				USING ERRCODE = 'VO002';
		END IF;
	END IF;
	RETURN NULL;
END $$;
CREATE TRIGGER migrations_claim_target AFTER INSERT OR UPDATE OF state, target_worker_id ON migrations
	FOR EACH ROW EXECUTE FUNCTION vmops_claim_migration_target();

-- Version 1 counted sandboxes only (VO004).  Now also live reservations (of
-- VMMs starting, running or migrating; a destroyed or failed VMM's
-- reservation is capacity waiting for vmm-reap and holds nothing) and
-- in-flight receivers (VO007).  Every write that adds one of these updates
-- this worker row (admission, the revival and claim triggers above), so a
-- snapshot that misses it cannot get past the row lock either.
CREATE OR REPLACE FUNCTION vmops_refuse_empty_claim() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
	n bigint;
	nres bigint;
	nrecv bigint;
	vmm_ids text;
	mig_ids text;
BEGIN
	IF NEW.state IN ('drained', 'terminated') AND OLD.state IS DISTINCT FROM NEW.state THEN
		SELECT count(*) INTO n FROM sandboxes
		 WHERE worker_id = NEW.id AND status IN ('pending', 'running', 'migrating');
		IF n > 0 THEN
			RAISE EXCEPTION 'worker % still holds % sandbox(es): it cannot be %', NEW.name, n, NEW.state
				USING ERRCODE = 'VO004';
		END IF;
		SELECT count(*), string_agg(r.vmm_id::text, ', ' ORDER BY r.vmm_id)
		  INTO nres, vmm_ids
		  FROM reservations r JOIN vmms v ON v.id = r.vmm_id
		 WHERE r.worker_id = NEW.id AND v.state NOT IN ('destroyed', 'failed');
		SELECT count(*), string_agg(m.id::text, ', ' ORDER BY m.id)
		  INTO nrecv, mig_ids
		  FROM migrations m
		 WHERE m.target_worker_id = NEW.id
		   AND m.state IN ('queued', 'preparing', 'transferring', 'switching');
		IF nres > 0 OR nrecv > 0 THEN
			RAISE EXCEPTION 'worker % still holds % live reservation(s)% and % in-flight receiver(s)%: it cannot be %',
				NEW.name, nres, coalesce(' (vmm ' || vmm_ids || ')', ''),
				nrecv, coalesce(' (migration ' || mig_ids || ')', ''), NEW.state
				USING ERRCODE = 'VO007';
		END IF;
	END IF;
	RETURN NEW;
END $$;

-- ---- completion ----------------------------------------------------------------
-- A migration becomes completed only from an active state, for a sandbox
-- that is still migrating by this attempt (its target_vmm_id is the
-- attempt's target VMM), onto a target worker that is active or draining.
-- The sandbox row is locked (FOR NO KEY UPDATE, as the success path updates
-- it next) and the worker row shared, so a concurrent destroy or drain
-- either waits for the completion or is seen by it (READ COMMITTED), or one
-- of the two fails with 40001 (REPEATABLE READ, SERIALIZABLE).
CREATE FUNCTION vmops_refuse_bad_completion() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
	s record;
	w record;
BEGIN
	IF NEW.state <> 'completed' OR (TG_OP = 'UPDATE' AND OLD.state = 'completed') THEN
		RETURN NEW;
	END IF;
	IF TG_OP = 'INSERT' OR OLD.state NOT IN ('queued', 'preparing', 'transferring', 'switching') THEN
		RAISE EXCEPTION 'migration % cannot complete: it is %, not an active attempt',
			coalesce(NEW.id::text, '(new)'), CASE WHEN TG_OP = 'INSERT' THEN 'new' ELSE OLD.state END
			USING ERRCODE = 'VO008';
	END IF;
	SELECT name, status, target_vmm_id INTO s FROM sandboxes WHERE id = NEW.sandbox_id FOR NO KEY UPDATE;
	IF NEW.target_vmm_id IS NULL OR s.status IS DISTINCT FROM 'migrating'
	   OR s.target_vmm_id IS DISTINCT FROM NEW.target_vmm_id THEN
		RAISE EXCEPTION 'migration % cannot complete: sandbox % is % with target vmm %, not migrating by this attempt (target vmm %)',
			NEW.id, s.name, s.status, coalesce(s.target_vmm_id::text, 'none'),
			coalesce(NEW.target_vmm_id::text, 'none')
			USING ERRCODE = 'VO008';
	END IF;
	SELECT name, state INTO w FROM workers WHERE id = NEW.target_worker_id FOR SHARE;
	IF NOT FOUND OR w.state NOT IN ('active', 'draining') THEN
		RAISE EXCEPTION 'migration % cannot complete: target worker % is %, not active or draining',
			NEW.id, coalesce(w.name, NEW.target_worker_id::text), coalesce(w.state, 'missing')
			USING ERRCODE = 'VO009';
	END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER migrations_refuse_bad_completion BEFORE INSERT OR UPDATE OF state ON migrations
	FOR EACH ROW EXECUTE FUNCTION vmops_refuse_bad_completion();
