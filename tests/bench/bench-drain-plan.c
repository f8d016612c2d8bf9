/* SPDX-License-Identifier: MIT */
/*
 * The drain plan on generated fleets (tests/bench/bench-drain-plan.sh):
 * makespan against the lower bound max(total / (lanes x rate), largest / rate),
 * lanes = min(targets, max_parallel).  Usage:
 *   bench-drain-plan SANDBOXES TARGETS MAX_PARALLEL SEEDS LOOKAHEAD [tight]
 * "tight": the targets' free room is only 1.2x what the sandboxes need.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "drain/drain.h"

static unsigned long long rng;

static unsigned rnd(unsigned n)
{
	rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
	return (unsigned)((rng >> 33) % n);
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	/* Mixed sizes, mostly small (MiB), as a real worker holds. */
	static const long long sizes[] = { 256, 512, 512, 1024, 1024, 1024, 2048, 2048, 4096, 8192, 16384 };
	int ns, nt, par, seeds, look;
	bool tight;
	double worst = 0, sum = 0;

	if (argc < 6)
		return 2;
	ns = atoi(argv[1]);
	nt = atoi(argv[2]);
	par = atoi(argv[3]);
	seeds = atoi(argv[4]);
	look = atoi(argv[5]);
	tight = argc > 6 && strcmp(argv[6], "tight") == 0;
	printf("%-5s %10s %10s %8s %9s %8s\n", "seed", "makespan_s", "bound_s", "ratio", "unplaced", "plan_ms");
	for (int seed = 1; seed <= seeds; seed++) {
		struct vmops_drain_item *it = calloc((size_t)ns, sizeof(*it));
		struct vmops_drain_target *tg = calloc((size_t)nt, sizeof(*tg));
		struct vmops_drain_params p = { (unsigned)par, 2.0, NULL, 0, (unsigned)look };
		struct vmops_drain_plan plan;
		struct vmops_error e = { 0 };
		char (*names)[16] = calloc((size_t)(ns + nt), 16);
		long long total = 0;
		double t0, bound;

		rng = (unsigned long long)seed;
		for (int i = 0; i < ns; i++) {
			snprintf(names[i], 16, "sb%d", i);
			it[i].name = names[i];
			it[i].mem_mb = sizes[rnd(sizeof(sizes) / sizeof(sizes[0]))];
			it[i].vcpus = 1 + rnd(4);
			/* current memory: 30..100 % of the size */
			it[i].move_mb = (double)it[i].mem_mb * (30 + rnd(71)) / 100.0;
			total += it[i].mem_mb;
		}
		for (int j = 0; j < nt; j++) {
			snprintf(names[ns + j], 16, "t%d", j);
			tg[j].name = names[ns + j];
			tg[j].free_mb = tight ? (long long)((double)total * 1.2 / nt) + 1 : total;
			tg[j].free_vcpus = 4 * ns;
			tg[j].rate_mbps = 100.0;
		}
		t0 = now_s();
		if (vmops_drain_plan(it, (size_t)ns, tg, (size_t)nt, &p, &plan, &e) < 0) {
			fprintf(stderr, "plan: %s\n", e.msg);
			return 1;
		}
		bound = vmops_drain_lower_bound(it, (size_t)ns, tg, (size_t)nt, &p);
		printf("%-5d %10.1f %10.1f %8.3f %9zu %8.2f\n", seed, plan.makespan_s, bound, plan.makespan_s / bound,
		       plan.unplaced, (now_s() - t0) * 1000);
		if (plan.makespan_s / bound > worst)
			worst = plan.makespan_s / bound;
		sum += plan.makespan_s / bound;
		vmops_drain_plan_free(&plan);
		free(it);
		free(tg);
		free(names);
	}
	printf("mean ratio %.3f, worst %.3f (goal <= 1.15)\n", sum / seeds, worst);
	return worst <= 1.15 ? 0 : 3;
}
