/* SPDX-License-Identifier: MIT */
/*
 * The drain plan: a list schedule in LPT order (largest move first) over
 * targets that take one inbound move at a time, with at most max_parallel
 * outbound moves, simulated event by event.  At each moment with a free
 * outbound slot and a free target, the largest remaining item that fits a
 * free target starts, on the free target with the most free room (then
 * vCPUs, then name).  Room is taken when a move starts.  An item that fits
 * no target even with all of them free is unplaceable.
 *
 * Lookahead (p->lookahead = k): the greedy schedule is also computed with
 * each of the k next-largest items promoted to go first at each of the
 * first k decisions; the shortest makespan wins (ties: plain greedy).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "drain/drain.h"
#include "exitcodes.h"

static double move_mb(const struct vmops_drain_item *it)
{
	return it->move_mb > 0 ? it->move_mb : (double)it->mem_mb;
}

static double duration(const struct vmops_drain_item *it, const struct vmops_drain_target *t,
		       const struct vmops_drain_params *p)
{
	return p->setup_s + move_mb(it) / t->rate_mbps;
}

/* Larger move first, then more room, then name. */
static bool before(const struct vmops_drain_item *x, const struct vmops_drain_item *y)
{
	double dx = move_mb(x), dy = move_mb(y);

	if (dx != dy)
		return dx > dy;
	if (x->mem_mb != y->mem_mb)
		return x->mem_mb > y->mem_mb;
	return strcmp(x->name ? x->name : "", y->name ? y->name : "") < 0;
}

/* Insertion sort of indexes (stable, no global comparator context). */
static void sort_by_size(const struct vmops_drain_item *items, size_t *idx, size_t n)
{
	for (size_t i = 1; i < n; i++) {
		size_t v = idx[i], k = i;
		while (k > 0 && before(&items[v], &items[idx[k - 1]])) {
			idx[k] = idx[k - 1];
			k--;
		}
		idx[k] = v;
	}
}

static bool fits(const struct vmops_drain_item *it, long long mem, long long cpu)
{
	return it->mem_mb <= mem && it->vcpus <= cpu;
}

struct sim {
	const struct vmops_drain_item *items;
	const struct vmops_drain_target *targets;
	size_t ni, nt;
	const struct vmops_drain_params *p;
	size_t *order;         /* remaining items, largest first; SIZE_MAX: done */
	long long *mem, *cpu;  /* free room per target */
	double *tfree;         /* target free at */
	double *slot;          /* outbound slot free at */
	size_t nslots;
	struct vmops_drain_step *steps;
	size_t n;
};

/* The free target with most room that `it` fits at time t; -1 none. */
static int best_target(const struct sim *s, const struct vmops_drain_item *it, double t)
{
	int best = -1;

	for (size_t j = 0; j < s->nt; j++) {
		const struct vmops_drain_target *tj = &s->targets[j];
		if (s->tfree[j] > t || !fits(it, s->mem[j], s->cpu[j]))
			continue;
		if (best < 0 || s->mem[j] > s->mem[best] ||
		    (s->mem[j] == s->mem[best] && s->cpu[j] > s->cpu[best]) ||
		    (s->mem[j] == s->mem[best] && s->cpu[j] == s->cpu[best] &&
		     strcmp(tj->name ? tj->name : "", s->targets[best].name ? s->targets[best].name : "") < 0))
			best = (int)j;
	}
	return best;
}

static size_t free_slot(const struct sim *s, double t)
{
	for (size_t k = 0; k < s->nslots; k++)
		if (s->slot[k] <= t)
			return k;
	return SIZE_MAX;
}

static void start(struct sim *s, size_t pos, int j, size_t k, double t)
{
	size_t i = s->order[pos];
	double d = duration(&s->items[i], &s->targets[j], s->p);

	s->steps[s->n++] = (struct vmops_drain_step){ i, j, t, t + d };
	s->mem[j] -= s->items[i].mem_mb;
	s->cpu[j] -= s->items[i].vcpus;
	s->tfree[j] = t + d;
	s->slot[k] = t + d;
	s->order[pos] = SIZE_MAX;
}

/* Start what can start at t (promote: order position to try first, or SIZE_MAX). */
static bool start_at(struct sim *s, double t, size_t promote)
{
	size_t k = free_slot(s, t);

	if (k == SIZE_MAX)
		return false;
	for (size_t q = 0; q <= s->ni; q++) {
		size_t pos = q == 0 ? promote : q - 1;
		int j;
		if (pos == SIZE_MAX || pos >= s->ni || s->order[pos] == SIZE_MAX)
			continue;
		j = best_target(s, &s->items[s->order[pos]], t);
		if (j < 0)
			continue;
		start(s, pos, j, k, t);
		return true;
	}
	return false;
}

/* The next moment after t when a slot or a target frees up; INFINITY: none. */
static double next_event(const struct sim *s, double t)
{
	double n = INFINITY;

	for (size_t k = 0; k < s->nslots; k++)
		if (s->slot[k] > t && s->slot[k] < n)
			n = s->slot[k];
	for (size_t j = 0; j < s->nt; j++)
		if (s->tfree[j] > t && s->tfree[j] < n)
			n = s->tfree[j];
	return n;
}

/* Items that fit no target even with nothing moving are unplaceable: out of the order. */
static size_t mark_unplaceable(struct sim *s)
{
	size_t unplaced = 0;

	for (size_t pos = 0; pos < s->ni; pos++) {
		bool any = false;
		for (size_t j = 0; j < s->nt && !any; j++)
			any = fits(&s->items[s->order[pos]], s->targets[j].free_mb, s->targets[j].free_vcpus);
		if (!any) {
			s->order[pos] = SIZE_MAX;
			unplaced++;
		}
	}
	return unplaced;
}

static void sim_reset(struct sim *s, const size_t *sorted)
{
	memcpy(s->order, sorted, s->ni * sizeof(*s->order));
	for (size_t j = 0; j < s->nt; j++) {
		s->mem[j] = s->targets[j].free_mb;
		s->cpu[j] = s->targets[j].free_vcpus;
		s->tfree[j] = s->targets[j].available_s > 0 ? s->targets[j].available_s : 0;
	}
	for (size_t k = 0; k < s->nslots; k++)
		s->slot[k] = k < s->p->nbusy ? s->p->busy_until[k] : 0;
	s->n = 0;
}

/* One greedy run; with `promote_at`-th decision trying order position `promote` first. */
static void sim_run(struct sim *s, const size_t *sorted, size_t placeable, size_t promote_at, size_t promote)
{
	double t = 0;
	size_t decisions = 0;

	sim_reset(s, sorted);
	mark_unplaceable(s);
	while (s->n < placeable) {
		while (start_at(s, t, decisions == promote_at ? promote : SIZE_MAX))
			decisions++;
		if (s->n < placeable) {
			double n = next_event(s, t);
			if (isinf(n))
				break;   /* cannot happen: an idle fleet takes any placeable item */
			t = n;
		}
	}
}

static double makespan(const struct vmops_drain_step *st, size_t n)
{
	double m = 0;

	for (size_t i = 0; i < n; i++)
		if (st[i].target >= 0 && st[i].finish_s > m)
			m = st[i].finish_s;
	return m;
}

static void sim_free(struct sim *s)
{
	free(s->order);
	free(s->mem);
	free(s->cpu);
	free(s->tfree);
	free(s->slot);
	free(s->steps);
}

static int sim_alloc(struct sim *s)
{
	s->order = calloc(s->ni + 1, sizeof(*s->order));
	s->mem = calloc(s->nt + 1, sizeof(*s->mem));
	s->cpu = calloc(s->nt + 1, sizeof(*s->cpu));
	s->tfree = calloc(s->nt + 1, sizeof(*s->tfree));
	s->slot = calloc(s->nslots + 1, sizeof(*s->slot));
	s->steps = calloc(s->ni + 1, sizeof(*s->steps));
	return s->order && s->mem && s->cpu && s->tfree && s->slot && s->steps ? 0 : -1;
}

static int check_args(const struct vmops_drain_item *items, size_t ni, const struct vmops_drain_target *targets,
		      size_t nt, const struct vmops_drain_params *p, struct vmops_error *e)
{
	if (!p || p->max_parallel == 0 || p->setup_s < 0 || p->nbusy > p->max_parallel || (ni && !items) ||
	    (nt && !targets))
		return vmops_err(e, VMOPS_EXIT_USAGE, "drain plan: bad parameters");
	for (size_t j = 0; j < nt; j++)
		if (!(targets[j].rate_mbps > 0))
			return vmops_err(e, VMOPS_EXIT_USAGE, "drain plan: target %s has no rate",
					 targets[j].name ? targets[j].name : "?");
	for (size_t i = 0; i < ni; i++)
		if (items[i].mem_mb <= 0 || items[i].vcpus < 0)
			return vmops_err(e, VMOPS_EXIT_USAGE, "drain plan: item %s has no size",
					 items[i].name ? items[i].name : "?");
	return 0;
}

/* The result: started steps in start order, then the unplaceable ones (largest first). */
static int finish_plan(const struct sim *s, const size_t *sorted, struct vmops_drain_plan *plan)
{
	size_t u = 0;

	plan->steps = calloc(s->ni + 1, sizeof(*plan->steps));
	if (!plan->steps)
		return -1;
	memcpy(plan->steps, s->steps, s->n * sizeof(*s->steps));
	plan->n = s->n;
	for (size_t pos = 0; pos < s->ni; pos++) {
		bool placed = false;
		for (size_t q = 0; q < s->n && !placed; q++)
			placed = s->steps[q].item == sorted[pos];
		if (!placed) {
			plan->steps[plan->n++] = (struct vmops_drain_step){ sorted[pos], -1, 0, 0 };
			u++;
		}
	}
	plan->unplaced = u;
	plan->makespan_s = makespan(plan->steps, plan->n);
	return 0;
}

int vmops_drain_plan(const struct vmops_drain_item *items, size_t nitems,
		     const struct vmops_drain_target *targets, size_t ntargets,
		     const struct vmops_drain_params *p, struct vmops_drain_plan *plan,
		     struct vmops_error *e)
{
	struct sim s = { items, targets, nitems, ntargets, p, NULL, NULL, NULL, NULL, NULL, 0, NULL, 0 };
	size_t *sorted = NULL, placeable, best_at = SIZE_MAX, best_pos = SIZE_MAX;
	double best;
	int rc = -1;

	memset(plan, 0, sizeof(*plan));
	if (check_args(items, nitems, targets, ntargets, p, e) < 0)
		return -1;
	s.nslots = p->max_parallel;
	sorted = calloc(nitems + 1, sizeof(*sorted));
	if (!sorted || sim_alloc(&s) < 0)
		goto oom;
	for (size_t i = 0; i < nitems; i++)
		sorted[i] = i;
	sort_by_size(items, sorted, nitems);
	memcpy(s.order, sorted, nitems * sizeof(*sorted));
	placeable = nitems - mark_unplaceable(&s);

	sim_run(&s, sorted, placeable, SIZE_MAX, SIZE_MAX);
	best = makespan(s.steps, s.n);
	for (size_t at = 0; at < p->lookahead && at < placeable; at++)
		for (size_t pos = 1; pos <= p->lookahead && pos < nitems; pos++) {
			double m;
			sim_run(&s, sorted, placeable, at, pos);
			m = makespan(s.steps, s.n);
			if (m < best - 1e-9) {
				best = m;
				best_at = at;
				best_pos = pos;
			}
		}
	sim_run(&s, sorted, placeable, best_at, best_pos);
	if (finish_plan(&s, sorted, plan) < 0)
		goto oom;
	rc = 0;
	goto out;
oom:
	vmops_err(e, VMOPS_EXIT_FAILURE, "drain plan: out of memory");
out:
	free(sorted);
	sim_free(&s);
	return rc;
}

void vmops_drain_plan_free(struct vmops_drain_plan *plan)
{
	free(plan->steps);
	memset(plan, 0, sizeof(*plan));
}

double vmops_drain_lower_bound(const struct vmops_drain_item *items, size_t nitems,
			       const struct vmops_drain_target *targets, size_t ntargets,
			       const struct vmops_drain_params *p)
{
	double rate = 0, total = 0, largest = 0;
	size_t lanes = ntargets < p->max_parallel ? ntargets : p->max_parallel;

	for (size_t j = 0; j < ntargets; j++)
		if (targets[j].rate_mbps > rate)
			rate = targets[j].rate_mbps;
	if (rate <= 0 || lanes == 0)
		return 0;
	for (size_t i = 0; i < nitems; i++) {
		double d = p->setup_s + move_mb(&items[i]) / rate;
		total += d;
		if (d > largest)
			largest = d;
	}
	return fmax(total / (double)lanes, largest);
}
