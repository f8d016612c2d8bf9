/* SPDX-License-Identifier: MIT */
/*
 * lib/interrupt: the first SIGINT/SIGTERM only raises the flag; a second
 * one leaves at once (exit 12) with one line naming what the program said
 * it leaves; the note is whole even when it is longer than fits.
 */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "exitcodes.h"
#include "interrupt.h"

/*
 * Fork; the child installs the handler, sets `note` and gets `sigs` signals,
 * `gap_ms` apart; what it wrote and its exit.
 */
static int child_run_gap(const char *note, const int *sigs, int n, int gap_ms, char *out, size_t len)
{
	int p[2], st;
	ssize_t k, got = 0;
	pid_t pid;

	cr_assert(pipe(p) == 0);
	pid = fork();
	cr_assert(pid >= 0);
	if (pid == 0) {
		dup2(p[1], STDERR_FILENO);
		close(p[0]);
		vmops_interrupt_install("vm-test", 0);
		if (note)
			vmops_interrupt_note("%s", note);
		for (int i = 0; i < n; i++) {
			if (i)
				usleep((useconds_t)gap_ms * 1000);
			raise(sigs[i]);
			if (vmops_interrupted != sigs[0])
				_exit(3);   /* the first signal must only raise the flag */
		}
		_exit(0);
	}
	close(p[1]);
	while ((k = read(p[0], out + got, len - 1 - (size_t)got)) > 0)
		got += k;
	out[got] = '\0';
	close(p[0]);
	cr_assert(waitpid(pid, &st, 0) == pid);
	cr_assert(WIFEXITED(st));
	return WEXITSTATUS(st);
}

/* As an operator would: each signal a little more than the repeat window after the one before. */
static int child_run(const char *note, const int *sigs, int n, char *out, size_t len)
{
	return child_run_gap(note, sigs, n, VMOPS_INTERRUPT_REPEAT_MS + 100, out, len);
}

Test(interrupt, first_signal_only_raises_the_flag)
{
	char out[2048];
	int sigs[] = { SIGTERM };

	cr_assert_eq(child_run("sandbox sb1 left", sigs, 1, out, sizeof(out)), 0);
	cr_assert_str_eq(out, "");
}

/*
 * timeout(1) signals its child and then the child's process group: one
 * request, two signals microseconds apart.  That is still the first
 * interrupt (the CLI test drain-basic failed in CI when it was not).
 */
Test(interrupt, a_signal_repeated_at_once_is_the_same_request)
{
	char out[2048];
	int sigs[] = { SIGINT, SIGINT, SIGTERM };

	cr_assert_eq(child_run_gap("sandbox sb1 left", sigs, 3, 0, out, sizeof(out)), 0);
	cr_assert_str_eq(out, "");
}

Test(interrupt, second_signal_leaves_at_once_naming_what_it_leaves)
{
	char out[2048];
	int sigs[] = { SIGINT, SIGTERM, SIGINT };

	cr_assert_eq(child_run("sandbox sb1, migration 7, is left: run 'vm-migrate --recover'", sigs, 3, out,
			       sizeof(out)), VMOPS_EXIT_INTERRUPTED);
	cr_assert_str_eq(out, "vm-test: second interrupt: leaving at once, without cleaning up; sandbox sb1,"
			      " migration 7, is left: run 'vm-migrate --recover'\n");
}

Test(interrupt, without_a_note_the_line_still_ends)
{
	char out[2048];
	int sigs[] = { SIGINT, SIGINT };

	cr_assert_eq(child_run(NULL, sigs, 2, out, sizeof(out)), VMOPS_EXIT_INTERRUPTED);
	cr_assert_str_eq(out, "vm-test: second interrupt: leaving at once, without cleaning up\n");
}

Test(interrupt, a_long_note_is_cut_but_stays_one_line)
{
	char note[4000], out[4096];
	int sigs[] = { SIGINT, SIGINT };

	memset(note, 'x', sizeof(note) - 1);
	note[sizeof(note) - 1] = '\0';
	cr_assert_eq(child_run(note, sigs, 2, out, sizeof(out)), VMOPS_EXIT_INTERRUPTED);
	cr_assert(strlen(out) > VMOPS_INTERRUPT_NOTE_MAX / 2 && strlen(out) < VMOPS_INTERRUPT_NOTE_MAX + 128, "%zu",
		  strlen(out));
	cr_assert_eq(strchr(out, '\n'), out + strlen(out) - 1);
}
