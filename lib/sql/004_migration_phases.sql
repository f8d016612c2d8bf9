-- vmops schema, version 4: a migration attempt is a durable phase machine.
--
-- phase       what the attempt was about to do (or doing) when last written;
--             written before each physical step, with the fencing token:
--               claim receiver transfer switchover finish rollback done
--             finish: the sandbox was moved (state 'completed'); the source
--             VMM is still to be stopped and released.  NULL: written by a
--             vm-migrate older than this schema (recovery then assumes the
--             target may have run).
-- generation  the fencing token: bumped by every takeover of the lease
--             (vm-migrate --recover); every write of the attempt carries it
--             (UPDATE ... WHERE id = $1 AND lease_owner = $2 AND generation = $3)
--             so a stalled owner that lost its lease writes nothing.
ALTER TABLE migrations
	ADD COLUMN phase text
	    CHECK (phase IN ('claim', 'receiver', 'transfer', 'switchover', 'finish', 'rollback', 'done')),
	ADD COLUMN generation bigint NOT NULL DEFAULT 1 CHECK (generation > 0),
	ADD COLUMN time_phase_updated timestamptz;

UPDATE migrations SET phase = 'done'
 WHERE state NOT IN ('queued', 'preparing', 'transferring', 'switching');

-- A finished attempt keeps its lease while vm-migrate stops the old source;
-- --recover finds those whose lease ran out.
CREATE INDEX migrations_release_idx ON migrations (lease_expires_at) WHERE phase = 'finish';
