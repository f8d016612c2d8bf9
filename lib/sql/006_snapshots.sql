-- vmops schema, version 6: snapshots (snapshot-prep hibernate and wake).
--
-- One row per bundle: whose (sandbox), of which VMM on which worker, where
-- it is (location, an absolute path), how big, its SHA-256 (of the whole
-- bundle file), its manifest, and its state:
--   writing    hibernate is writing it (the VM is prepared); lease held
--   ready      durable and verified: the sandbox can be woken from it
--   restoring  wake is restoring it into restore_vmm_id; lease held
--   restored   woken from (kept for the record)
--   failed     writing failed; the bundle file is gone or never was
--   deleted    removed by an operator
-- Errors raised here (SQLSTATE class VO, numbered after the migration):
--   VO062 a snapshot of a hibernated sandbox leaving ready/restoring
--         other than by being restored
CREATE TABLE snapshots (
	id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	sandbox_id         bigint NOT NULL REFERENCES sandboxes (id),
	vmm_id             bigint NOT NULL REFERENCES vmms (id),
	worker_id          bigint NOT NULL REFERENCES workers (id),
	location           text NOT NULL CHECK (location ~ '^/'),
	size_bytes         bigint CHECK (size_bytes >= 0),
	sha256             text CHECK (sha256 ~ '^[0-9a-f]{64}$'),
	manifest           jsonb CHECK (manifest IS NULL OR jsonb_typeof(manifest) = 'object'),
	state              text NOT NULL DEFAULT 'writing'
	                   CHECK (state IN ('writing', 'ready', 'restoring', 'restored',
	                                    'failed', 'deleted')),
	restore_vmm_id     bigint REFERENCES vmms (id),
	lease_owner        text,
	lease_expires_at   timestamptz,
	error              text,
	time_created       timestamptz NOT NULL DEFAULT now(),
	time_ready         timestamptz,
	time_restored      timestamptz,
	time_state_updated timestamptz NOT NULL DEFAULT now(),
	-- What makes a bundle usable is recorded before it is called usable.
	CHECK (state NOT IN ('ready', 'restoring', 'restored') OR
	       (size_bytes IS NOT NULL AND sha256 IS NOT NULL AND manifest IS NOT NULL
	        AND time_ready IS NOT NULL)),
	-- A restore names its VMM; only a restore does.
	CHECK ((state IN ('restoring', 'restored')) = (restore_vmm_id IS NOT NULL)),
	-- Work in progress carries a lease (owner, expiry); nothing else does.
	CHECK ((state IN ('writing', 'restoring')) =
	       (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL))
);
-- At most one snapshot in flight or usable per sandbox: two hibernates (or
-- two wakes) of one sandbox cannot both proceed.
CREATE UNIQUE INDEX snapshots_one_live ON snapshots (sandbox_id)
	WHERE state IN ('writing', 'ready', 'restoring');
CREATE INDEX snapshots_state_idx ON snapshots (state) WHERE state IN ('writing', 'restoring');

CREATE TRIGGER snapshots_touch BEFORE UPDATE ON snapshots
	FOR EACH ROW EXECUTE FUNCTION vmops_touch_state();

-- The bundle of a hibernated sandbox does not go away under it: only a
-- restore, whose transaction makes the sandbox running, ends it.  Checked
-- at commit; the sandbox row is locked (FOR SHARE), so a concurrent
-- status writer waits for us or fails to serialise.  (That every
-- hibernated sandbox HAS a snapshot is not enforced yet: existing tools
-- and tests set 'hibernated' directly.)
CREATE FUNCTION vmops_snapshot_keep_hibernated() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
	st text;
	nst text := CASE WHEN TG_OP = 'DELETE' THEN 'deleted' ELSE NEW.state END;
BEGIN
	IF OLD.state IN ('ready', 'restoring') AND nst NOT IN ('ready', 'restoring') THEN
		SELECT status INTO st FROM sandboxes WHERE id = OLD.sandbox_id FOR SHARE;
		IF st = 'hibernated' THEN
			RAISE EXCEPTION 'snapshot % of hibernated sandbox %: cannot become %',
				OLD.id, OLD.sandbox_id, nst USING ERRCODE = 'VO062';
		END IF;
	END IF;
	RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER snapshots_keep_hibernated
	AFTER UPDATE OF state OR DELETE ON snapshots
	DEFERRABLE INITIALLY DEFERRED
	FOR EACH ROW EXECUTE FUNCTION vmops_snapshot_keep_hibernated();
