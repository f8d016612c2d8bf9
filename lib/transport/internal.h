/* SPDX-License-Identifier: MIT */
/* Shared by the two sides of the ssh transport (not for programs). */
#ifndef VMOPS_TRANSPORT_INTERNAL_H
#define VMOPS_TRANSPORT_INTERNAL_H

#include <cjson/cJSON.h>

#include "error.h"
#include "hv.h"

/* What the database records about a VMM, as JSON and back (strictly checked:
 * kind, a positive vmm_id, absolute paths that fit). */
cJSON *vmops_remote_info_to_json(const struct vmops_vmm_info *i);
int vmops_remote_info_from_json(const cJSON *o, struct vmops_vmm_info *i, struct vmops_error *e);

/* Migration parameters, progress and run state, as JSON and back. */
cJSON *vmops_remote_mp_to_json(const struct vmops_migrate_params *mp);
int vmops_remote_mp_from_json(const cJSON *o, struct vmops_migrate_params *mp, struct vmops_error *e);
cJSON *vmops_remote_progress_to_json(const struct vmops_migrate_progress *p);
void vmops_remote_progress_from_json(const cJSON *o, struct vmops_migrate_progress *p);

#endif
