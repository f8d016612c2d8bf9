# vmops — hand-written Makefile.  `make check` and `make demo` are all a
# fresh Debian 12 clone needs: missing Debian packages are installed by the
# `deps` step and configure runs by itself.
#
#   make            build bin/ (programs) and build/libvmops.a
#   make check      unit tests (plain and ASan/UBSan), CLI golden tests,
#                   option/man/completion agreement, man page lint
#   make check-long the concurrency soak of vm-migrate (minutes; not in
#                   check)
#   make demo       the main job end to end on a throwaway PostgreSQL
#   make bench      benchmarks, results in BENCHMARKS.md
#   make install    PREFIX=/usr/local DESTDIR=
#   make fuzz       libFuzzer targets (clang)

PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
MANDIR ?= $(PREFIX)/share/man
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR ?= $(PREFIX)/share/zsh/vendor-completions
DESTDIR ?=

BUILDDIR ?= build
BINOUT ?= bin

PROGRAMS = vm-fleet vm-migrate vm-drain vmm-reap usage-parity ghost-reap snapshot-prep
# Programs that exist so far (the rest arrive with their issues).
BUILT_PROGRAMS = $(patsubst cmd/%.c,%,$(wildcard cmd/*.c))

DEB_PACKAGES = build-essential autoconf automake pkg-config libpq-dev postgresql \
	libcjson-dev libarchive-dev libcurl4-openssl-dev libssl-dev libpopt-dev libcriterion-dev \
	mandoc bash-completion zsh openssh-client openssh-server qemu-system-x86 linux-image-amd64 busybox-static \
	cpio e2fsprogs valgrind clang qemu-guest-agent hyperfine iperf3 python3 python3-yaml iproute2 zstd time

# Goals that must work on a fresh machine before autoconf or any library is
# installed.  For these the top-level make never reads config.mk: it runs
# `deps` and then a sub-make for the real work, which configures itself.
# So nothing depends on the order in which make remakes included files.
FRONT_GOALS = check check-long demo bench deps clean distclean
ifeq ($(MAKECMDGOALS),)
NEED_CONFIG = yes
else ifneq ($(filter-out $(FRONT_GOALS),$(MAKECMDGOALS)),)
NEED_CONFIG = yes
endif
ifeq ($(NEED_CONFIG),yes)
include config.mk
endif

WARN = -Wall -Wextra -Wshadow -Wformat=2 -Wstrict-prototypes -Wmissing-prototypes \
	-Wpointer-arith -Wcast-qual -Wvla -Wno-unused-parameter
CFLAGS_ALL = -std=c17 -D_GNU_SOURCE -O2 -g $(WARN) $(WERROR) $(SAN_CFLAGS) \
	-DVMOPS_VERSION='"$(VERSION)"' -Ilib -I$(BUILDDIR) $(PKG_CFLAGS) $(CONF_CFLAGS)
LDFLAGS_ALL = $(SAN_CFLAGS) $(LDFLAGS)

LIB_SRC = $(wildcard lib/*.c lib/*/*.c)
LIB_OBJ = $(patsubst lib/%.c,$(BUILDDIR)/lib/%.o,$(LIB_SRC)) $(BUILDDIR)/lib/schema_sql.o
SQL = $(sort $(wildcard lib/sql/*.sql))
TEST_SRC = $(wildcard tests/unit/test_*.c)
TEST_BIN = $(patsubst tests/unit/%.c,$(BUILDDIR)/tests/%,$(TEST_SRC))
TESTLIB_SRC = $(filter-out $(TEST_SRC),$(wildcard tests/unit/*.c))
TESTLIB_OBJ = $(patsubst tests/unit/%.c,$(BUILDDIR)/tests/%.o,$(TESTLIB_SRC))
PROG_BIN = $(addprefix $(BINOUT)/,$(BUILT_PROGRAMS))

.PHONY: all deps check check-run check-long check-long-run demo demo-run bench bench-run \
	install uninstall fuzz clean distclean tests guest
.DELETE_ON_ERROR:

all: config.mk
	@$(MAKE) --no-print-directory build-all

build-all: $(BUILDDIR)/libvmops.a $(PROG_BIN)

# ---- configuration -------------------------------------------------------

config.mk: configure config.mk.in
	@command -v pkg-config >/dev/null || $(MAKE) --no-print-directory deps
	./configure $(CONFIGURE_FLAGS) >/dev/null

# A plain `make` on a fresh clone installs autoconf itself.
configure: configure.ac
	@command -v aclocal >/dev/null || $(MAKE) --no-print-directory deps
	aclocal && autoconf && rm -rf autom4te.cache

deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "deps: installing missing Debian packages:$$missing"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	else echo "deps: all Debian packages present"; fi

# ---- library and programs ------------------------------------------------

$(BUILDDIR)/lib/%.o: lib/%.c $(wildcard lib/*.h lib/*/*.h) config.mk
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_ALL) -c -o $@ $<

# The versioned schema migrations are compiled into the library.
$(BUILDDIR)/schema_sql.c: $(SQL) Makefile
	@mkdir -p $(@D)
	@{ echo '/* generated from lib/sql by the Makefile; do not edit */'; \
	   echo '#include "schema.h"'; \
	   echo 'const struct vmops_migration vmops_migrations[] = {'; \
	   for f in $(SQL); do \
		v=$$(basename $$f | sed 's/^0*\([0-9][0-9]*\)_.*/\1/'); \
		printf '\t{ %s, "%s",\n' "$$v" "$$(basename $$f .sql)"; \
		sed -e 's/\\/\\\\/g' -e 's/"/\\"/g' -e 's/^/\t  "/' -e 's/$$/\\n"/' $$f; \
		printf '\t},\n'; \
	   done; \
	   echo '};'; \
	   echo 'const size_t vmops_n_migrations = sizeof(vmops_migrations) / sizeof(vmops_migrations[0]);'; \
	} > $@

$(BUILDDIR)/lib/schema_sql.o: $(BUILDDIR)/schema_sql.c lib/schema.h config.mk
	$(CC) $(CFLAGS_ALL) -c -o $@ $<

$(BUILDDIR)/libvmops.a: $(LIB_OBJ)
	rm -f $@ && ar rcs $@ $^

$(BINOUT)/%: cmd/%.c $(BUILDDIR)/libvmops.a $(wildcard lib/*.h)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_ALL) -o $@ $< $(BUILDDIR)/libvmops.a $(LDFLAGS_ALL) $(PKG_LIBS) -lm

# ---- tests ---------------------------------------------------------------

$(BUILDDIR)/tests/%.o: tests/unit/%.c $(wildcard tests/unit/*.h) $(wildcard lib/*.h) config.mk
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_ALL) $(CRITERION_CFLAGS) -Itests/unit -c -o $@ $<

# The PostgreSQL-restart column of the fault matrix is built from test_faults.c.
$(BUILDDIR)/tests/test_pgrestart.o: tests/unit/test_faults.c

$(BUILDDIR)/tests/test_%: $(BUILDDIR)/tests/test_%.o $(TESTLIB_OBJ) $(BUILDDIR)/libvmops.a
	$(CC) -o $@ $^ $(LDFLAGS_ALL) $(PKG_LIBS) $(CRITERION_LIBS) -lm

tests: all
	@$(MAKE) --no-print-directory $(TEST_BIN)

guest:
	@tests/guest/build-guest.sh build/guest

# The whole suite runs inside one throwaway PostgreSQL cluster
# (tests/pgcluster.sh: temp dir, UNIX socket only, removed even on failure).
check: deps
	@$(MAKE) --no-print-directory check-run

# The three builds use every core (BUILD_JOBS): on a 2-core machine that is
# a minute and a half of the check's time.
BUILD_JOBS ?= $(shell nproc 2>/dev/null || echo 1)

check-run: config.mk
	@$(MAKE) --no-print-directory -j$(BUILD_JOBS) tests
	@echo "check: clang -Werror build"
	@$(MAKE) --no-print-directory -j$(BUILD_JOBS) -s BUILDDIR=build-clang BINOUT=build-clang/bin CC=clang WERROR=-Werror build-all
	@$(MAKE) --no-print-directory -j$(BUILD_JOBS) BUILDDIR=build-san BINOUT=build-san/bin \
		SAN_CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer" tests
	@tests/run-all.sh

# The concurrency soak (tests/unit/test_soak.c), in a throwaway cluster of
# its own; tests/run-all.sh leaves it out unless VMOPS_CHECK_LONG=1.
check-long: deps
	@$(MAKE) --no-print-directory check-long-run

check-long-run: config.mk
	@$(MAKE) --no-print-directory tests
	@VMOPS_CHECK_LONG=1 tests/run-one.sh test_soak --jobs 1 --verbose

demo: deps
	@$(MAKE) --no-print-directory demo-run

demo-run: all
	@tests/demo.sh

bench: deps
	@$(MAKE) --no-print-directory bench-run

bench-run: all
	@$(MAKE) --no-print-directory $(BUILDDIR)/bench/bundle-bench
	@tests/bench/run.sh

# Bench drivers: built for `make bench`, never installed.
$(BUILDDIR)/bench/%: tests/bench/%.c $(BUILDDIR)/libvmops.a $(wildcard lib/*.h lib/*/*.h)
	@mkdir -p $(@D)
	$(CC) $(CFLAGS_ALL) -o $@ $< $(BUILDDIR)/libvmops.a $(LDFLAGS_ALL) $(PKG_LIBS) -lm

fuzz:
	@$(MAKE) --no-print-directory BUILDDIR=build-fuzz CC=clang \
		SAN_CFLAGS="-fsanitize=address,undefined,fuzzer-no-link" build-fuzz/libvmops.a
	@mkdir -p build-fuzz/fuzz
	@for f in tests/fuzz/fuzz_*.c; do [ -e "$$f" ] || continue; \
		n=$$(basename $$f .c); echo "  FUZZ $$n"; \
		clang -std=c17 -D_GNU_SOURCE -g -fsanitize=address,undefined,fuzzer -Ilib \
			$(PKG_CFLAGS) -o build-fuzz/fuzz/$$n $$f build-fuzz/libvmops.a $(PKG_LIBS) -lm || exit 1; \
	done; echo "fuzz targets in build-fuzz/fuzz/ (run: build-fuzz/fuzz/NAME -max_total_time=60)"

install: all
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man7 \
		$(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(ZSHCOMPDIR)
	install -m 755 $(PROG_BIN) $(DESTDIR)$(BINDIR)/
	for p in $(BUILT_PROGRAMS); do \
		install -m 644 man/$$p.1 $(DESTDIR)$(MANDIR)/man1/; \
		install -m 644 completions/$$p.bash $(DESTDIR)$(BASHCOMPDIR)/$$p; \
		install -m 644 completions/$$p.zsh $(DESTDIR)$(ZSHCOMPDIR)/_$$p; \
	done
	install -m 644 man/vmops.7 $(DESTDIR)$(MANDIR)/man7/

uninstall:
	for p in $(BUILT_PROGRAMS); do rm -f $(DESTDIR)$(BINDIR)/$$p $(DESTDIR)$(MANDIR)/man1/$$p.1 \
		$(DESTDIR)$(BASHCOMPDIR)/$$p $(DESTDIR)$(ZSHCOMPDIR)/_$$p; done
	rm -f $(DESTDIR)$(MANDIR)/man7/vmops.7

clean:
	rm -rf build build-san build-clang build-fuzz bin

distclean: clean
	rm -f config.mk config.log config.status configure aclocal.m4
	rm -rf autom4te.cache
