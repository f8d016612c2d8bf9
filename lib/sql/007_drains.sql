-- vmops schema, version 7: vm-drain's record of a drain.
--
-- drains            one row per drain of a worker.  state:
--                     running     a vm-drain works on it (holds the lease)
--                     cancelling  vm-drain --cancel asked it to stop
--                     partial     it ended with something left on the worker
--                                 (the worker stays draining); a rerun of
--                                 vm-drain continues it (back to running)
--                     done        the worker was counted empty and declared
--                                 drained (or terminated)
--                     cancelled   stopped; the worker is active again
--                   lease_owner/lease_expires_at: the vm-drain running it;
--                   a rerun takes over only an expired lease.
-- drain_sandboxes   each sandbox's outcome in the drain: pending, moving,
--                   moved, stuck (cannot move after its retries; the
--                   hibernate fallback's input), failed (its migration lost
--                   the guest), hibernated; attempts, the last error, the
--                   last migration.
--
-- New SQLSTATEs (class VO; VO021.. to keep clear of other versions):
--   VO021 an active drain of a worker that is not draining
--   VO022 a worker set active while a drain of it is active
--   VO023 a drain declared done while its worker is not drained or terminated
--   VO024 a drain state change that is not allowed (a done or cancelled
--         drain, and the outcomes of one, are history)
--   VO025 an outcome the facts contradict: moved while the sandbox is still
--         on the drained worker, hibernated while it is not hibernated
CREATE TABLE drains (
	id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	worker_id        bigint NOT NULL REFERENCES workers (id),
	state            text NOT NULL DEFAULT 'running'
	                 CHECK (state IN ('running', 'cancelling', 'done', 'partial', 'cancelled')),
	options          jsonb NOT NULL DEFAULT '{}'::jsonb,
	lease_owner      text,
	lease_expires_at timestamptz,
	deadline         timestamptz,             -- the whole-drain timeout
	runs             integer NOT NULL DEFAULT 1 CHECK (runs > 0),
	detail           text,
	time_started     timestamptz NOT NULL DEFAULT now(),
	time_updated     timestamptz NOT NULL DEFAULT now(),
	time_finished    timestamptz,
	CHECK ((state IN ('done', 'cancelled')) = (time_finished IS NOT NULL))
);
-- One active drain per worker, whatever the isolation level.
CREATE UNIQUE INDEX drains_one_active_uq ON drains (worker_id) WHERE state IN ('running', 'cancelling');
-- At most one drain to continue per worker: an active or partial one.
CREATE UNIQUE INDEX drains_one_open_uq ON drains (worker_id) WHERE state IN ('running', 'cancelling', 'partial');

CREATE TABLE drain_sandboxes (
	drain_id         bigint NOT NULL REFERENCES drains (id),
	sandbox_id       bigint NOT NULL REFERENCES sandboxes (id),
	outcome          text NOT NULL DEFAULT 'pending'
	                 CHECK (outcome IN ('pending', 'moving', 'moved', 'stuck', 'failed', 'hibernated')),
	attempts         integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
	last_error       text,
	migration_id     bigint REFERENCES migrations (id),
	target_worker_id bigint REFERENCES workers (id),
	next_attempt_at  timestamptz,
	time_updated     timestamptz NOT NULL DEFAULT now(),
	PRIMARY KEY (drain_id, sandbox_id)
);
CREATE INDEX drain_sandboxes_sandbox_idx ON drain_sandboxes (sandbox_id);

-- A drain that becomes active updates its worker row (like an admission in
-- version 3), so a concurrent change of the worker's state meets it there:
-- READ COMMITTED waits and re-reads, REPEATABLE READ fails with 40001.
CREATE FUNCTION vmops_guard_drain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
	w record;
BEGIN
	IF TG_OP = 'UPDATE' AND OLD.state IS DISTINCT FROM NEW.state AND NOT (
	       (OLD.state = 'running' AND NEW.state IN ('cancelling', 'done', 'partial', 'cancelled'))
	    OR (OLD.state = 'cancelling' AND NEW.state IN ('cancelled', 'partial'))
	    OR (OLD.state = 'partial' AND NEW.state IN ('running', 'cancelled'))) THEN
		RAISE EXCEPTION 'drain %: % cannot become %', NEW.id, OLD.state, NEW.state USING ERRCODE = 'VO024';
	END IF;
	IF TG_OP = 'UPDATE' AND OLD.state IN ('done', 'cancelled') THEN
		RAISE EXCEPTION 'drain % is %: it is history', NEW.id, OLD.state USING ERRCODE = 'VO024';
	END IF;
	IF TG_OP = 'UPDATE' AND NEW.worker_id IS DISTINCT FROM OLD.worker_id THEN
		RAISE EXCEPTION 'drain %: its worker cannot change', NEW.id USING ERRCODE = 'VO024';
	END IF;
	IF NEW.state IN ('running', 'cancelling', 'done')
	   AND (TG_OP = 'INSERT' OR OLD.state IS DISTINCT FROM NEW.state) THEN
		UPDATE workers SET reserved_memory_mb = reserved_memory_mb WHERE id = NEW.worker_id
		RETURNING name, state INTO w;
		IF NEW.state IN ('running', 'cancelling') AND w.state IS DISTINCT FROM 'draining' THEN
			RAISE EXCEPTION 'worker % is %, not draining: a drain of it cannot be %', w.name,
				coalesce(w.state, 'missing'), NEW.state USING ERRCODE = 'VO021';
		END IF;
		IF NEW.state = 'done' AND w.state NOT IN ('drained', 'terminated') THEN
			RAISE EXCEPTION 'drain %: worker % is %, not drained or terminated: the drain is not done',
				NEW.id, w.name, w.state USING ERRCODE = 'VO023';
		END IF;
	END IF;
	NEW.time_updated := now();
	RETURN NEW;
END $$;
CREATE TRIGGER drains_guard BEFORE INSERT OR UPDATE ON drains
	FOR EACH ROW EXECUTE FUNCTION vmops_guard_drain();

-- A worker goes back to active only when no drain of it is active.
CREATE FUNCTION vmops_guard_worker_undrain() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
	d bigint;
BEGIN
	IF NEW.state = 'active' AND OLD.state IS DISTINCT FROM 'active' THEN
		SELECT id INTO d FROM drains WHERE worker_id = NEW.id AND state IN ('running', 'cancelling') LIMIT 1;
		IF FOUND THEN
			RAISE EXCEPTION 'worker % has an active drain (%): cancel it (vm-drain --cancel %)', NEW.name, d, NEW.name
				USING ERRCODE = 'VO022';
		END IF;
	END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER workers_guard_undrain BEFORE UPDATE OF state ON workers
	FOR EACH ROW EXECUTE FUNCTION vmops_guard_worker_undrain();

-- Outcomes follow the facts, and a finished drain's outcomes are history.
-- The sandbox row is read FOR SHARE: a concurrent move of it either waits
-- for us or we for it (REPEATABLE READ: 40001 when it moved after our snapshot).
CREATE FUNCTION vmops_guard_drain_outcome() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
	d record;
	s record;
BEGIN
	SELECT state, worker_id INTO d FROM drains WHERE id = NEW.drain_id;
	IF d.state IN ('done', 'cancelled') THEN
		RAISE EXCEPTION 'drain % is %: its outcomes are history', NEW.drain_id, d.state USING ERRCODE = 'VO024';
	END IF;
	IF NEW.outcome IN ('moved', 'hibernated')
	   AND (TG_OP = 'INSERT' OR OLD.outcome IS DISTINCT FROM NEW.outcome) THEN
		SELECT name, status, worker_id INTO s FROM sandboxes WHERE id = NEW.sandbox_id FOR SHARE;
		IF NEW.outcome = 'moved' AND (s.worker_id IS NOT DISTINCT FROM d.worker_id
		                              OR s.status NOT IN ('running', 'migrating')) THEN
			RAISE EXCEPTION 'sandbox % is % on worker %: it did not move off the drained worker', s.name,
				s.status, coalesce(s.worker_id::text, 'none') USING ERRCODE = 'VO025';
		END IF;
		IF NEW.outcome = 'hibernated' AND s.status IS DISTINCT FROM 'hibernated' THEN
			RAISE EXCEPTION 'sandbox % is %, not hibernated', s.name, s.status USING ERRCODE = 'VO025';
		END IF;
	END IF;
	NEW.time_updated := now();
	RETURN NEW;
END $$;
CREATE TRIGGER drain_sandboxes_guard BEFORE INSERT OR UPDATE ON drain_sandboxes
	FOR EACH ROW EXECUTE FUNCTION vmops_guard_drain_outcome();
