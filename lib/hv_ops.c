/* SPDX-License-Identifier: MIT */
/* Dispatch of the driver operations a driver may leave out (see hv.h). */
#include "exitcodes.h"
#include "hv.h"

static int unsupported(const struct vmops_hv *h, const char *what, struct vmops_error *err)
{
	return vmops_err(err, VMOPS_EXIT_CONFLICT, "%s: %s: not supported",
			 vmops_hv_get_driver(h)->kind, what);
}

bool vmops_hv_can(const struct vmops_hv *h, enum vmops_hv_op op)
{
	const struct vmops_hv_driver *d = vmops_hv_get_driver(h);

	switch (op) {
	case VMOPS_HV_OP_MIGRATE:
		return d->prepare_incoming && d->send;
	case VMOPS_HV_OP_QUIESCE:
		return d->quiesce && d->thaw;
	case VMOPS_HV_OP_BALLOON:
		return d->balloon_set && d->balloon_get;
	case VMOPS_HV_OP_HINT:
		return d->hint_start && d->hint_status && d->hint_stop;
	case VMOPS_HV_OP_SNAPSHOT:
		return d->snapshot && d->restore;
	}
	return false;
}

int vmops_hv_send(struct vmops_hv *h, const char *uri, const struct vmops_migrate_params *mp,
		  struct vmops_error *err)
{
	const struct vmops_hv_driver *d = vmops_hv_get_driver(h);

	return d->send ? d->send(h, uri, mp, err) : unsupported(h, "live migration", err);
}

int vmops_hv_quiesce(struct vmops_hv *h, int agent_ms, int op_ms, struct vmops_error *err)
{
	const struct vmops_hv_driver *d = vmops_hv_get_driver(h);

	return d->quiesce ? d->quiesce(h, agent_ms, op_ms, err) : unsupported(h, "quiesce", err);
}

int vmops_hv_thaw(struct vmops_hv *h, int agent_ms, int op_ms, struct vmops_error *err)
{
	const struct vmops_hv_driver *d = vmops_hv_get_driver(h);

	return d->thaw ? d->thaw(h, agent_ms, op_ms, err) : unsupported(h, "thaw", err);
}

int vmops_hv_balloon_set(struct vmops_hv *h, uint64_t bytes, struct vmops_error *err)
{
	const struct vmops_hv_driver *d = vmops_hv_get_driver(h);

	return d->balloon_set ? d->balloon_set(h, bytes, err) : unsupported(h, "balloon", err);
}

int vmops_hv_balloon_get(struct vmops_hv *h, uint64_t *bytes, struct vmops_error *err)
{
	const struct vmops_hv_driver *d = vmops_hv_get_driver(h);

	return d->balloon_get ? d->balloon_get(h, bytes, err) : unsupported(h, "balloon", err);
}

int vmops_hv_hint_start(struct vmops_hv *h, struct vmops_error *err)
{
	const struct vmops_hv_driver *d = vmops_hv_get_driver(h);

	return d->hint_start ? d->hint_start(h, err) : unsupported(h, "free-page hinting", err);
}

int vmops_hv_hint_status(struct vmops_hv *h, struct vmops_hint_status *st,
			 struct vmops_error *err)
{
	const struct vmops_hv_driver *d = vmops_hv_get_driver(h);

	return d->hint_status ? d->hint_status(h, st, err)
			      : unsupported(h, "free-page hinting", err);
}

int vmops_hv_hint_stop(struct vmops_hv *h, int timeout_ms, struct vmops_error *err)
{
	const struct vmops_hv_driver *d = vmops_hv_get_driver(h);

	return d->hint_stop ? d->hint_stop(h, timeout_ms, err)
			    : unsupported(h, "free-page hinting", err);
}

int vmops_hv_snapshot(struct vmops_hv *h, int dirfd, const struct vmops_snapshot_opts *o,
		      struct vmops_error *err)
{
	const struct vmops_hv_driver *d = vmops_hv_get_driver(h);

	return d->snapshot ? d->snapshot(h, dirfd, o, err) : unsupported(h, "snapshot", err);
}

int vmops_hv_restore(struct vmops_hv *h, int dirfd, int timeout_ms, struct vmops_error *err)
{
	const struct vmops_hv_driver *d = vmops_hv_get_driver(h);

	return d->restore ? d->restore(h, dirfd, timeout_ms, err)
			  : unsupported(h, "snapshot restore", err);
}

int vmops_hv_version(struct vmops_hv *h, char *buf, size_t len, struct vmops_error *err)
{
	const struct vmops_hv_driver *d = vmops_hv_get_driver(h);

	return d->version ? d->version(h, buf, len, err) : unsupported(h, "version", err);
}
