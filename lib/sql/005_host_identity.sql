-- vmops schema, version 5: which machine a worker is.
--
-- ghost-reap reads one host's /proc and acts on one worker's rows: run on
-- another host, every VMM of the worker would look like a phantom and lose
-- its billing.  So a worker records the identity of its host (by default
-- that host's /etc/machine-id, see vmops(7)), and ghost-reap refuses to act
-- unless the host it runs on has that identity.  NULL: not recorded yet
-- (workers made before this version); ghost-reap refuses those too, until
-- `vm-fleet worker set-host` records one.  Several workers may share a host.
-- (Numbered 5: versions 3 and 4 are taken by changes made alongside.)
ALTER TABLE workers ADD COLUMN host_id text
	CHECK (host_id ~ '^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$');
