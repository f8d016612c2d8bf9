-- vmops schema, version 11: recovering a hibernate or wake that crashed.
--
-- snapshots.staging: the directory a hibernate stages the hypervisor's files
-- in, recorded BEFORE it is created, so that `snapshot-prep recover` can
-- remove what a crashed run left there (a memory-sized state file).
--
-- Every hibernated sandbox has its bundle: a sandbox becomes (or is created)
-- hibernated only with a snapshot of it that is ready or being restored.
-- Checked at commit, so hibernate's one transaction (snapshot ready, then
-- sandbox hibernated) passes, and for every client at every isolation
-- level: the check reads the snapshot rows FOR SHARE, so a concurrent
-- writer that marks that snapshot failed or deleted waits for us (and its
-- own trigger, VO062, then sees the sandbox hibernated) or fails to
-- serialise.
--
-- New SQLSTATEs (class VO; VO111.. to keep clear of other versions):
--   VO111 a sandbox hibernated with no ready (or restoring) snapshot of it
ALTER TABLE snapshots ADD COLUMN staging text CHECK (staging ~ '^/');

CREATE FUNCTION vmops_hibernated_has_snapshot() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
	st text;
BEGIN
	-- The row as it is at commit (a later statement of the transaction
	-- may have moved it on).
	SELECT status INTO st FROM sandboxes WHERE id = NEW.id;
	IF st IS DISTINCT FROM 'hibernated' THEN
		RETURN NULL;
	END IF;
	PERFORM 1 FROM snapshots WHERE sandbox_id = NEW.id AND state IN ('ready', 'restoring')
		FOR SHARE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'sandbox % cannot be hibernated: it has no ready snapshot (use snapshot-prep hibernate)',
			NEW.name USING ERRCODE = 'VO111';
	END IF;
	RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER sandboxes_hibernated_has_snapshot
	AFTER INSERT OR UPDATE OF status ON sandboxes
	DEFERRABLE INITIALLY DEFERRED
	FOR EACH ROW WHEN (NEW.status = 'hibernated')
	EXECUTE FUNCTION vmops_hibernated_has_snapshot();

-- A database that already holds a hibernated sandbox without its bundle
-- is not upgraded silently: name them and change nothing.
DO $$
DECLARE
	bad text;
BEGIN
	SELECT string_agg(s.name, ', ' ORDER BY s.id) INTO bad FROM sandboxes s
	 WHERE s.status = 'hibernated' AND NOT EXISTS (
		SELECT 1 FROM snapshots n WHERE n.sandbox_id = s.id AND n.state IN ('ready', 'restoring'));
	IF bad IS NOT NULL THEN
		RAISE EXCEPTION 'hibernated sandboxes without a ready snapshot: %; wake is impossible for them: set their status (e.g. stopped) and rerun vm-fleet init',
			left(bad, 400) USING ERRCODE = 'VO111';
	END IF;
END $$;
