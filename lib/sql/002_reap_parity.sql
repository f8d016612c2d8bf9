-- vmops schema, version 2: indexes for vmm-reap and usage-parity on
-- fleet-sized tables.  Indexes only; no data changes.

-- vmm-reap: "is this VMM still some sandbox's active or target VMM?" is an
-- index probe per candidate instead of a scan of all sandboxes per batch.
CREATE INDEX sandboxes_active_vmm_idx ON sandboxes (active_vmm_id)
	WHERE active_vmm_id IS NOT NULL;
CREATE INDEX sandboxes_target_vmm_idx ON sandboxes (target_vmm_id)
	WHERE target_vmm_id IS NOT NULL;

-- usage-parity: the closed events that intersect a time window are those
-- that end after its start (open events come from scale_events_one_open_uq).
CREATE INDEX scale_events_ended_idx ON scale_events (ended_at)
	WHERE ended_at IS NOT NULL;

-- usage-parity: the usage samples that intersect a time window.
CREATE INDEX usage_samples_period_end_idx ON usage_samples (period_end);
