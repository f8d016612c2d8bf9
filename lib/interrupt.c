/* SPDX-License-Identifier: MIT */
/* The programs' SIGINT/SIGTERM handling (see interrupt.h). */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "exitcodes.h"
#include "interrupt.h"

volatile sig_atomic_t vmops_interrupted;

static const char *prog_name = "vmops";
/* The whole line a second signal writes; the handler reads lines[cur]. */
static char lines[2][VMOPS_INTERRUPT_NOTE_MAX + 128];
static size_t lens[2];
static volatile sig_atomic_t cur;
/* When the first signal arrived; written and read only by the handler (the signals are masked in it). */
static struct timespec first_at;

static long ms_since(const struct timespec *t)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);   /* async-signal-safe */
	return (now.tv_sec - t->tv_sec) * 1000 + (now.tv_nsec - t->tv_nsec) / 1000000;
}

static void on_signal(int sig)
{
	if (vmops_interrupted) {
		int k = cur;

		/* timeout(1) and a process group's kill deliver one request twice, microseconds apart */
		if (ms_since(&first_at) < VMOPS_INTERRUPT_REPEAT_MS)
			return;
		(void)!write(STDERR_FILENO, lines[k], lens[k]);
		_exit(VMOPS_EXIT_INTERRUPTED);
	}
	clock_gettime(CLOCK_MONOTONIC, &first_at);
	vmops_interrupted = sig;
}

static void set_line(const char *note)
{
	int k = !cur;
	int n = snprintf(lines[k], sizeof(lines[k]), "%s: second interrupt: leaving at once, without cleaning up%s%s\n",
			 prog_name, note[0] ? "; " : "", note);

	if (n < 0)
		return;
	lens[k] = (size_t)n < sizeof(lines[k]) ? (size_t)n : sizeof(lines[k]) - 1;
	if (lens[k] && lines[k][lens[k] - 1] != '\n')
		lines[k][lens[k] - 1] = '\n';
	cur = k;
}

void vmops_interrupt_note(const char *fmt, ...)
{
	char note[VMOPS_INTERRUPT_NOTE_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(note, sizeof(note), fmt, ap);
	va_end(ap);
	set_line(note);
}

const char *vmops_interrupt_line(void)
{
	return lines[cur];
}

void vmops_interrupt_install(const char *prog, unsigned flags)
{
	static const int sigs[] = { SIGINT, SIGTERM, SIGHUP };
	size_t n = (flags & VMOPS_INTERRUPT_HUP) ? 3 : 2;
	struct sigaction sa;

	prog_name = prog;
	if (!lens[cur])
		set_line("");
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	for (size_t i = 0; i < n; i++)
		sigaddset(&sa.sa_mask, sigs[i]);
	sa.sa_flags = (flags & VMOPS_INTERRUPT_RESTART) ? SA_RESTART : 0;
	for (size_t i = 0; i < n; i++)
		sigaction(sigs[i], &sa, NULL);
}
