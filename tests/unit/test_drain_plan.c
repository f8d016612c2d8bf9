/* SPDX-License-Identifier: MIT */
/* The drain plan (lib/drain/plan.c): a pure function, no database. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "drain/drain.h"
#include "macro.h"

#define ITEM(n, m, c) { (n), (m), (c), 0 }
#define TARGET(n, m, c) { (n), (m), (c), 100.0, 0 }

static const struct vmops_drain_params P4 = { 4, 0, NULL, 0, 0 };

static const struct vmops_drain_step *step_of(const struct vmops_drain_plan *p, size_t item)
{
	for (size_t i = 0; i < p->n; i++)
		if (p->steps[i].item == item)
			return &p->steps[i];
	cr_assert_fail("item %zu not in the plan", item);
	return NULL;
}

/* The properties every plan has: each item once, in start order, room never
 * exceeded, one inbound per target at a time, at most max_parallel at once. */
static void check_plan(const struct vmops_drain_item *it, size_t ni, const struct vmops_drain_target *tg,
		       size_t nt, const struct vmops_drain_params *p, const struct vmops_drain_plan *pl)
{
	long long used_mem[16] = { 0 }, used_cpu[16] = { 0 };
	bool seen[256] = { false };

	cr_assert_eq(pl->n, ni);
	for (size_t a = 0; a < pl->n; a++) {
		const struct vmops_drain_step *s = &pl->steps[a];
		size_t par = 0;
		cr_assert(!seen[s->item], "item %zu twice", s->item);
		seen[s->item] = true;
		if (s->target < 0)
			continue;
		cr_assert(a == 0 || pl->steps[a - 1].target < 0 || pl->steps[a - 1].start_s <= s->start_s,
			  "not in start order");
		cr_assert_geq(s->start_s, tg[s->target].available_s);
		cr_assert_gt(s->finish_s, s->start_s - 1e-9);
		used_mem[s->target] += it[s->item].mem_mb;
		used_cpu[s->target] += it[s->item].vcpus;
		cr_assert_leq(used_mem[s->target], tg[s->target].free_mb, "target %d memory exceeded", s->target);
		cr_assert_leq(used_cpu[s->target], tg[s->target].free_vcpus, "target %d vCPUs exceeded", s->target);
		for (size_t b = 0; b < pl->n; b++) {
			const struct vmops_drain_step *o = &pl->steps[b];
			bool overlap = o->target >= 0 && o->start_s < s->finish_s - 1e-9 && s->start_s < o->finish_s - 1e-9;
			if (b == a || !overlap)
				continue;
			cr_assert_neq(o->target, s->target, "two inbound moves to target %d overlap", s->target);
			/* count moves running at s's start */
			if (o->start_s <= s->start_s + 1e-9)
				par++;
		}
		for (size_t k = 0; k < p->nbusy; k++)
			if (p->busy_until[k] > s->start_s + 1e-9)
				par++;
		cr_assert_lt(par, p->max_parallel, "more than %u moves at once", p->max_parallel);
	}
	cr_assert_leq(pl->unplaced, ni);
}

Test(drain_plan, empty_fleet_is_an_empty_plan)
{
	struct vmops_drain_target t[] = { TARGET("t1", 1024, 4) };
	struct vmops_drain_plan pl;
	struct vmops_error e = { 0 };

	cr_assert_eq(vmops_drain_plan(NULL, 0, t, 1, &P4, &pl, &e), 0, "%s", e.msg);
	cr_assert_eq(pl.n, 0);
	cr_assert_eq(pl.makespan_s, 0);
	vmops_drain_plan_free(&pl);
}

Test(drain_plan, largest_first_to_the_target_with_most_room)
{
	struct vmops_drain_item it[] = { ITEM("small", 256, 1), ITEM("big", 2048, 1), ITEM("mid", 1024, 1) };
	struct vmops_drain_target t[] = { TARGET("a", 4096, 8), TARGET("b", 8192, 8), TARGET("c", 6144, 8) };
	struct vmops_drain_params p1 = { 1, 0, NULL, 0, 0 };
	struct vmops_drain_plan pl;
	struct vmops_error e = { 0 };

	cr_assert_eq(vmops_drain_plan(it, 3, t, 3, &p1, &pl, &e), 0, "%s", e.msg);
	check_plan(it, 3, t, 3, &p1, &pl);
	/* One at a time: big, mid, small, one after another. */
	cr_assert_eq(pl.steps[0].item, 1);
	cr_assert_eq(pl.steps[1].item, 2);
	cr_assert_eq(pl.steps[2].item, 0);
	cr_assert_eq(pl.steps[0].target, 1, "big goes to b, the most room");
	/* b has 6144 MB left after big, c 6144 too: tie on memory, c has more vCPUs (8 to 7). */
	cr_assert_eq(pl.steps[1].target, 2);
	/* then b (6144) has more than c (5120) */
	cr_assert_eq(pl.steps[2].target, 1);
	cr_assert_float_eq(pl.steps[0].finish_s, 20.48, 1e-9);
	cr_assert_float_eq(pl.steps[1].start_s, pl.steps[0].finish_s, 1e-9);
	cr_assert_float_eq(pl.makespan_s, (2048 + 1024 + 256) / 100.0, 1e-9);
	vmops_drain_plan_free(&pl);
}

Test(drain_plan, unplaceable_items_are_named_and_the_rest_still_moves)
{
	struct vmops_drain_item it[] = { ITEM("huge", 100000, 1), ITEM("ok", 512, 1), ITEM("cpu", 256, 64) };
	struct vmops_drain_target t[] = { TARGET("a", 4096, 8), TARGET("b", 2048, 8) };
	struct vmops_drain_plan pl;
	struct vmops_error e = { 0 };

	cr_assert_eq(vmops_drain_plan(it, 3, t, 2, &P4, &pl, &e), 0, "%s", e.msg);
	check_plan(it, 3, t, 2, &P4, &pl);
	cr_assert_eq(pl.unplaced, 2);
	cr_assert_eq(step_of(&pl, 0)->target, -1);
	cr_assert_eq(step_of(&pl, 2)->target, -1);
	cr_assert_eq(step_of(&pl, 1)->target, 0);
	cr_assert_eq(pl.steps[0].item, 1, "placed steps come first");
	vmops_drain_plan_free(&pl);
}

Test(drain_plan, room_taken_by_earlier_moves_counts)
{
	/* Two 3 GiB sandboxes, one target with 4 GiB and one with 3.5 GiB: one each. */
	struct vmops_drain_item it[] = { ITEM("x", 3072, 1), ITEM("y", 3072, 1) };
	struct vmops_drain_target t[] = { TARGET("a", 4096, 8), TARGET("b", 3584, 8) };
	struct vmops_drain_params p1 = { 1, 1.0, NULL, 0, 0 };
	struct vmops_drain_plan pl;
	struct vmops_error e = { 0 };

	cr_assert_eq(vmops_drain_plan(it, 2, t, 2, &p1, &pl, &e), 0, "%s", e.msg);
	check_plan(it, 2, t, 2, &p1, &pl);
	cr_assert_eq(pl.steps[0].target, 0);
	cr_assert_eq(pl.steps[1].target, 1);
	cr_assert_float_eq(pl.steps[0].finish_s, 1.0 + 30.72, 1e-9);
	vmops_drain_plan_free(&pl);
}

Test(drain_plan, busy_targets_and_slots_are_waited_for)
{
	struct vmops_drain_item it[] = { ITEM("x", 1000, 1), ITEM("y", 500, 1) };
	struct vmops_drain_target t[] = { { "a", 8192, 8, 100.0, 5.0 }, { "b", 1024, 8, 100.0, 0 } };
	double busy[] = { 3.0 };
	struct vmops_drain_params p = { 2, 0, busy, 1, 0 };
	struct vmops_drain_plan pl;
	struct vmops_error e = { 0 };

	cr_assert_eq(vmops_drain_plan(it, 2, t, 2, &p, &pl, &e), 0, "%s", e.msg);
	check_plan(it, 2, t, 2, &p, &pl);
	/* x starts now on b (a is busy until 5 s); y needs a slot: the busy one frees at 3 s,
	 * but b is taken until 10 s and a until 5 s: y starts at 5 s on a. */
	cr_assert_eq(pl.steps[0].item, 0);
	cr_assert_eq(pl.steps[0].target, 1);
	cr_assert_float_eq(pl.steps[0].start_s, 0, 1e-9);
	cr_assert_eq(pl.steps[1].target, 0);
	cr_assert_float_eq(pl.steps[1].start_s, 5.0, 1e-9);
	vmops_drain_plan_free(&pl);
}

Test(drain_plan, bad_parameters_are_refused)
{
	struct vmops_drain_item it[] = { ITEM("x", 1000, 1) }, bad[] = { ITEM("z", 0, 1) };
	struct vmops_drain_target t[] = { TARGET("a", 8192, 8) }, slow[] = { { "s", 8192, 8, 0, 0 } };
	struct vmops_drain_params p0 = { 0, 0, NULL, 0, 0 };
	struct vmops_drain_plan pl;
	struct vmops_error e = { 0 };

	cr_assert_eq(vmops_drain_plan(it, 1, t, 1, &p0, &pl, &e), -1);
	cr_assert_eq(vmops_drain_plan(it, 1, slow, 1, &P4, &pl, &e), -1);
	cr_assert_eq(vmops_drain_plan(bad, 1, t, 1, &P4, &pl, &e), -1);
}

/* Generated fleets: the properties hold, and the makespan is near the bound. */
Test(drain_plan, generated_fleets_keep_the_rules_and_stay_near_the_bound)
{
	static const long long sizes[] = { 128, 256, 512, 1024, 2048, 4096, 8192 };
	unsigned long long rng = 7;
	char names[64][8];

	for (int round = 0; round < 200; round++) {
		struct vmops_drain_item it[40];
		struct vmops_drain_target t[4];
		struct vmops_drain_params p = { 1 + (unsigned)(round % 5), (double)(round % 3), NULL, 0,
						(unsigned)(round % 2) * 2 };
		struct vmops_drain_plan pl;
		struct vmops_error e = { 0 };
		size_t ni = 5 + (size_t)(round % 36), nt = 1 + (size_t)(round % 4);
		long long total = 0;
		bool tight = round % 4 == 3;

		for (size_t i = 0; i < ni; i++) {
			rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
			snprintf(names[i], sizeof(names[i]), "s%zu", i);
			it[i] = (struct vmops_drain_item){ names[i], sizes[(rng >> 33) % 7], 1 + (long long)((rng >> 40) % 4),
							   (double)((rng >> 20) % 100) };
			total += it[i].mem_mb;
		}
		for (size_t j = 0; j < nt; j++)
			t[j] = (struct vmops_drain_target){ "t", tight ? total / (long long)nt : total, 1000, 100.0, 0 };
		cr_assert_eq(vmops_drain_plan(it, ni, t, nt, &p, &pl, &e), 0, "%s", e.msg);
		check_plan(it, ni, t, nt, &p, &pl);
		if (!tight) {
			double lb = vmops_drain_lower_bound(it, ni, t, nt, &p);
			cr_assert_eq(pl.unplaced, 0);
			cr_assert_geq(pl.makespan_s, lb - 1e-6, "round %d: below the lower bound", round);
			if (ni >= 20)
				cr_assert_leq(pl.makespan_s, 1.15 * lb, "round %d: %.1f s against bound %.1f s", round,
					      pl.makespan_s, lb);
		}
		vmops_drain_plan_free(&pl);
	}
}

/* The hibernate fallback's wait for the guest agent: a quarter of the budget, within 10-30 s. */
Test(drain_plan, agent_wait_is_a_quarter_of_the_budget_within_10_to_30_s)
{
	static const struct { uint64_t budget_ms; int want_ms; } c[] = {
		{ 1000, 10000 }, { 39996, 10000 }, { 40000, 10000 }, { 40004, 10001 },
		{ 80000, 20000 }, { 119996, 29999 }, { 120000, 30000 }, { 600000, 30000 },
		{ UINT64_MAX, 30000 },
	};

	for (size_t i = 0; i < ARRAY_SIZE(c); i++)
		cr_expect_eq(vmops_drain_agent_wait_ms(c[i].budget_ms), c[i].want_ms, "budget %llu ms",
			     (unsigned long long)c[i].budget_ms);
}
