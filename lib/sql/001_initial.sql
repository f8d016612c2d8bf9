-- vmops schema, version 1.  Applied by `vm-fleet init` inside one
-- transaction.  Names are the contract; columns may grow in later versions.
-- Custom SQLSTATEs raised by triggers (class VO, "vmops"):
--   VO001 worker capacity exceeded      VO002 worker not accepting placements
--   VO003 open scale event for a sandbox in a terminal status
--   VO004 worker declared drained/terminated while it holds sandboxes

CREATE TABLE workers (
	id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	name               text NOT NULL UNIQUE
	                   CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'),
	state              text NOT NULL DEFAULT 'active'
	                   CHECK (state IN ('active', 'draining', 'drained', 'terminated')),
	memory_mb          bigint NOT NULL CHECK (memory_mb > 0),
	vcpus              integer NOT NULL CHECK (vcpus > 0),
	migration_address  text NOT NULL DEFAULT '127.0.0.1',
	transport          text NOT NULL DEFAULT 'local' CHECK (transport IN ('local', 'ssh')),
	run_dir            text,
	port_min           integer NOT NULL DEFAULT 49152 CHECK (port_min BETWEEN 1 AND 65535),
	port_max           integer NOT NULL DEFAULT 49407 CHECK (port_max BETWEEN 1 AND 65535),
	time_created       timestamptz NOT NULL DEFAULT now(),
	time_state_updated timestamptz NOT NULL DEFAULT now(),
	CHECK (port_min <= port_max)
);

CREATE TABLE sandboxes (
	id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	name                text NOT NULL UNIQUE
	                    CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$'),
	org_id              text NOT NULL CHECK (org_id <> ''),
	status              text NOT NULL DEFAULT 'pending'
	                    CHECK (status IN ('pending', 'running', 'migrating', 'hibernated',
	                                      'stopped', 'error', 'destroyed')),
	worker_id           bigint REFERENCES workers (id),
	memory_mb           bigint NOT NULL CHECK (memory_mb > 0),
	vcpus               integer NOT NULL CHECK (vcpus > 0),
	disk_mb             bigint NOT NULL DEFAULT 0 CHECK (disk_mb >= 0),
	active_vmm_id       bigint,
	target_vmm_id       bigint,
	launch_spec         jsonb NOT NULL DEFAULT '{}'::jsonb,
	time_created        timestamptz NOT NULL DEFAULT now(),
	time_status_updated timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sandboxes_worker_idx ON sandboxes (worker_id);

CREATE TABLE vmms (
	id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	sandbox_id         bigint NOT NULL REFERENCES sandboxes (id),
	worker_id          bigint NOT NULL REFERENCES workers (id),
	hypervisor         text NOT NULL
	                   CHECK (hypervisor IN ('qemu', 'cloud-hypervisor', 'firecracker')),
	state              text NOT NULL DEFAULT 'starting'
	                   CHECK (state IN ('starting', 'running', 'migrating', 'destroyed', 'failed')),
	pid                integer CHECK (pid > 0),
	pid_start_time     bigint CHECK (pid_start_time >= 0),  -- /proc/PID/stat field 22 (clock ticks)
	control_socket     text,
	agent_socket       text,
	run_dir            text,
	time_created       timestamptz NOT NULL DEFAULT now(),
	time_state_updated timestamptz NOT NULL DEFAULT now(),
	time_deleted       timestamptz
);
CREATE INDEX vmms_sandbox_idx ON vmms (sandbox_id);
CREATE INDEX vmms_worker_live_idx ON vmms (worker_id) WHERE time_deleted IS NULL;
-- vmm-reap's candidates, kept small by the predicate.
CREATE INDEX vmms_abandoned_idx ON vmms (id)
	WHERE state IN ('destroyed', 'failed') AND time_deleted IS NULL;

ALTER TABLE sandboxes
	ADD CONSTRAINT sandboxes_active_vmm_fk FOREIGN KEY (active_vmm_id) REFERENCES vmms (id),
	ADD CONSTRAINT sandboxes_target_vmm_fk FOREIGN KEY (target_vmm_id) REFERENCES vmms (id);

-- One row per VMM: the memory and vCPUs it holds on its worker.
CREATE TABLE reservations (
	vmm_id       bigint PRIMARY KEY REFERENCES vmms (id),
	worker_id    bigint NOT NULL REFERENCES workers (id),
	memory_mb    bigint NOT NULL CHECK (memory_mb > 0),
	vcpus        integer NOT NULL CHECK (vcpus > 0),
	time_created timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX reservations_worker_idx ON reservations (worker_id);

CREATE TABLE migrations (
	id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	sandbox_id        bigint NOT NULL REFERENCES sandboxes (id),
	source_worker_id  bigint NOT NULL REFERENCES workers (id),
	target_worker_id  bigint REFERENCES workers (id),
	source_vmm_id     bigint REFERENCES vmms (id),
	target_vmm_id     bigint REFERENCES vmms (id),
	state             text NOT NULL DEFAULT 'queued'
	                  CHECK (state IN ('queued', 'preparing', 'transferring', 'switching',
	                                   'completed', 'failed', 'cancelled')),
	connections       integer NOT NULL DEFAULT 1 CHECK (connections BETWEEN 1 AND 128),
	connections_used  integer CHECK (connections_used BETWEEN 1 AND 128),
	lease_owner       text,
	lease_expires_at  timestamptz,
	time_created      timestamptz NOT NULL DEFAULT now(),
	time_started      timestamptz,
	time_switched     timestamptz,
	time_finished     timestamptz,
	bytes_total       bigint,
	bytes_transferred bigint,
	downtime_ms       bigint,
	error             text,
	CHECK (target_worker_id IS NULL OR target_worker_id <> source_worker_id)
);
-- Invariant 3: at most one active migration per sandbox and per target
-- worker (the in-flight guard), across processes and hosts.
CREATE UNIQUE INDEX migrations_active_sandbox_uq ON migrations (sandbox_id)
	WHERE state IN ('queued', 'preparing', 'transferring', 'switching');
CREATE UNIQUE INDEX migrations_active_target_uq ON migrations (target_worker_id)
	WHERE state IN ('queued', 'preparing', 'transferring', 'switching');
CREATE INDEX migrations_lease_idx ON migrations (lease_expires_at)
	WHERE state IN ('queued', 'preparing', 'transferring', 'switching');

-- The billing ledger.  An open row: billed at this size on this worker since started_at.
CREATE TABLE scale_events (
	id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	sandbox_id bigint NOT NULL REFERENCES sandboxes (id),
	org_id     text NOT NULL,
	worker_id  bigint REFERENCES workers (id),
	vmm_id     bigint REFERENCES vmms (id),
	memory_mb  bigint NOT NULL CHECK (memory_mb > 0),
	vcpus      integer NOT NULL CHECK (vcpus > 0),
	started_at timestamptz NOT NULL DEFAULT now(),
	ended_at   timestamptz,
	CHECK (ended_at IS NULL OR ended_at >= started_at)
);
-- Invariant 1: at most one open scale event per sandbox.
CREATE UNIQUE INDEX scale_events_one_open_uq ON scale_events (sandbox_id) WHERE ended_at IS NULL;
CREATE INDEX scale_events_sandbox_idx ON scale_events (sandbox_id, started_at);
CREATE INDEX scale_events_org_idx ON scale_events (org_id, started_at);

-- The independent usage record (what a per-worker ticker reported).
CREATE TABLE usage_samples (
	id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	org_id       text NOT NULL,
	sandbox_id   bigint REFERENCES sandboxes (id),
	worker_id    bigint REFERENCES workers (id),
	period_start timestamptz NOT NULL,
	period_end   timestamptz NOT NULL,
	memory_mb    bigint NOT NULL CHECK (memory_mb >= 0),
	CHECK (period_end > period_start)
);
CREATE INDEX usage_samples_org_idx ON usage_samples (org_id, period_start);

CREATE TABLE audit_log (
	id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	at          timestamptz NOT NULL DEFAULT now(),
	actor       text NOT NULL,          -- user@host
	program     text NOT NULL,
	action      text NOT NULL,
	object_type text NOT NULL,
	object_id   bigint,
	before      jsonb,
	after       jsonb,
	detail      text
);
CREATE INDEX audit_log_object_idx ON audit_log (object_type, object_id);

-- Timestamps of state changes.
CREATE FUNCTION vmops_touch_state() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF TG_TABLE_NAME = 'sandboxes' THEN
		IF NEW.status IS DISTINCT FROM OLD.status THEN
			NEW.time_status_updated := now();
		END IF;
	ELSIF NEW.state IS DISTINCT FROM OLD.state THEN
		NEW.time_state_updated := now();
	END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER workers_touch BEFORE UPDATE ON workers
	FOR EACH ROW EXECUTE FUNCTION vmops_touch_state();
CREATE TRIGGER vmms_touch BEFORE UPDATE ON vmms
	FOR EACH ROW EXECUTE FUNCTION vmops_touch_state();
CREATE TRIGGER sandboxes_touch BEFORE UPDATE ON sandboxes
	FOR EACH ROW EXECUTE FUNCTION vmops_touch_state();

-- Invariant 4: admission.  The worker row is locked, so concurrent
-- admissions to one worker are serialised; the sum is re-read after the lock.
-- FOR NO KEY UPDATE, not FOR UPDATE: the transaction usually holds a KEY
-- SHARE lock on the same row already (the foreign key of the VMM it just
-- inserted), and two transactions upgrading KEY SHARE to FOR UPDATE
-- deadlock; NO KEY UPDATE does not conflict with KEY SHARE but does with
-- itself, which is all the serialisation admission needs.
CREATE FUNCTION vmops_admit_reservation() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
	w workers%ROWTYPE;
	used_mem bigint;
	used_cpu bigint;
BEGIN
	SELECT * INTO w FROM workers WHERE id = NEW.worker_id FOR NO KEY UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'worker % does not exist', NEW.worker_id USING ERRCODE = '23503';
	END IF;
	IF w.state <> 'active' THEN
		RAISE EXCEPTION 'worker % is %, not accepting placements', w.name, w.state
			USING ERRCODE = 'VO002';
	END IF;
	SELECT coalesce(sum(memory_mb), 0), coalesce(sum(vcpus), 0)
	  INTO used_mem, used_cpu
	  FROM reservations
	 WHERE worker_id = NEW.worker_id
	   AND (TG_OP = 'INSERT' OR vmm_id <> OLD.vmm_id);
	IF used_mem + NEW.memory_mb > w.memory_mb OR used_cpu + NEW.vcpus > w.vcpus THEN
		RAISE EXCEPTION 'worker % capacity exceeded: % of % MB and % of % vCPUs reserved, % MB and % vCPUs requested',
			w.name, used_mem, w.memory_mb, used_cpu, w.vcpus, NEW.memory_mb, NEW.vcpus
			USING ERRCODE = 'VO001';
	END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER reservations_admit BEFORE INSERT OR UPDATE ON reservations
	FOR EACH ROW EXECUTE FUNCTION vmops_admit_reservation();

-- Invariant 2: writing a terminal status closes the sandbox's open scale
-- events in the same transaction ...
CREATE FUNCTION vmops_close_billing_on_terminal() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF NEW.status IN ('stopped', 'hibernated', 'error', 'destroyed') THEN
		UPDATE scale_events SET ended_at = greatest(now(), started_at)
		 WHERE sandbox_id = NEW.id AND ended_at IS NULL;
	END IF;
	RETURN NULL;
END $$;
CREATE TRIGGER sandboxes_close_billing AFTER INSERT OR UPDATE OF status ON sandboxes
	FOR EACH ROW EXECUTE FUNCTION vmops_close_billing_on_terminal();

-- ... and no open scale event can be written for a terminal sandbox.
CREATE FUNCTION vmops_refuse_open_event_terminal() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
	st text;
BEGIN
	IF NEW.ended_at IS NULL THEN
		-- FOR SHARE: a concurrent terminal-status write waits for us, or we for it.
		SELECT status INTO st FROM sandboxes WHERE id = NEW.sandbox_id FOR SHARE;
		IF st IN ('stopped', 'hibernated', 'error', 'destroyed') THEN
			RAISE EXCEPTION 'sandbox % is %: it cannot have an open scale event', NEW.sandbox_id, st
				USING ERRCODE = 'VO003';
		END IF;
	END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER scale_events_refuse_terminal BEFORE INSERT OR UPDATE ON scale_events
	FOR EACH ROW EXECUTE FUNCTION vmops_refuse_open_event_terminal();

-- A worker is never declared drained or terminated while it still holds
-- sandboxes that are not in a terminal status.
CREATE FUNCTION vmops_refuse_empty_claim() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
	n bigint;
BEGIN
	IF NEW.state IN ('drained', 'terminated') AND OLD.state IS DISTINCT FROM NEW.state THEN
		SELECT count(*) INTO n FROM sandboxes
		 WHERE worker_id = NEW.id AND status IN ('pending', 'running', 'migrating');
		IF n > 0 THEN
			RAISE EXCEPTION 'worker % still holds % sandbox(es): it cannot be %', NEW.name, n, NEW.state
				USING ERRCODE = 'VO004';
		END IF;
	END IF;
	RETURN NEW;
END $$;
CREATE TRIGGER workers_refuse_empty_claim BEFORE UPDATE OF state ON workers
	FOR EACH ROW EXECUTE FUNCTION vmops_refuse_empty_claim();
