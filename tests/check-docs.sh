#!/bin/sh
# Every program's --help, man page, bash and zsh completions must name the
# same long options (util-linux checkusage.sh / checkcompletion.sh), every
# man page must have the standard sections and list every exit code of
# lib/exitcodes.h, and mandoc must find nothing to warn about.
# The programs are those of cmd/*.c: one that is not built is a failure,
# not a program less to check.
# Ends with "docs: N passed, N failed".
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top" || exit 1
bindir=${VMOPS_BIN_DIR:-bin}
passed=0
failed=0
tmp=$(mktemp -d /tmp/vmops-docs.XXXXXX) || exit 1
trap 'rm -rf "$tmp"' EXIT

ok() { passed=$((passed + 1)); }
bad() { failed=$((failed + 1)); echo "FAIL $*"; }

longopts() { grep -o -- '--[a-z][a-z0-9-]*' | sort -u; }
manopts() { grep -o -- '\\-\\-[a-z][a-z0-9-]*' "$1" | sed 's/\\-\\-/--/' | sort -u; }

# The exit codes: every enumerator of lib/exitcodes.h, none missed.
codes=$(sed -n 's/^[[:space:]]*VMOPS_EXIT_[A-Z0-9_]* *= *\([0-9][0-9]*\),.*/\1/p' lib/exitcodes.h)
ncodes=$(grep -c '^[[:space:]]*VMOPS_EXIT_[A-Z0-9_]* *=' lib/exitcodes.h)
if [ -n "$codes" ] && [ "$(echo "$codes" | wc -w)" -eq "$ncodes" ]; then ok
else bad "lib/exitcodes.h: read $(echo "$codes" | wc -w) exit code(s) of $ncodes enumerators"; fi

progs=$(for f in cmd/*.c; do [ -f "$f" ] && basename "$f" .c; done)
if [ -n "$progs" ]; then ok; else bad "no programs in cmd/"; fi

for p in $progs; do
	b=$bindir/$p
	if [ ! -x "$b" ]; then bad "$p: $b is not built"; continue; fi
	man=man/$p.1 bash=completions/$p.bash zsh=completions/$p.zsh
	# -h and --help: the same text, on stdout only, exit 0
	"$b" --help >"$tmp/help" 2>"$tmp/help.err"; rc=$?
	if [ $rc -eq 0 ] && [ -s "$tmp/help" ] && [ ! -s "$tmp/help.err" ]; then ok
	else bad "$p: --help gave exit $rc, $(wc -c <"$tmp/help") bytes on stdout and on stderr: $(head -n 1 "$tmp/help.err")"; fi
	"$b" -h >"$tmp/h" 2>&1
	cmp -s "$tmp/h" "$tmp/help" && ok || bad "$p: -h and --help differ"
	longopts <"$tmp/help" >"$tmp/opts.help"
	if grep -qx -- --help "$tmp/opts.help" && grep -qx -- --version "$tmp/opts.help"; then ok
	else bad "$p: --help names neither --help nor --version: nothing to compare"; fi
	for f in "$man" "$bash" "$zsh"; do
		if [ ! -f "$f" ]; then bad "$p: $f is missing"; continue; fi
		if [ "$f" = "$man" ]; then manopts "$f"; else longopts <"$f"; fi >"$tmp/opts.other"
		if d=$(diff "$tmp/opts.help" "$tmp/opts.other"); then ok
		else
			bad "$p: --help and $f disagree (< only in --help, > only in $f):"
			echo "$d" | grep '^[<>]'
		fi
	done
	if [ -f "$man" ]; then
		for s in NAME SYNOPSIS DESCRIPTION OPTIONS "EXIT STATUS" ENVIRONMENT FILES EXAMPLES "SEE ALSO"; do
			grep -q "^\.SH \"*$s\"*\$" "$man" || bad "$p: $man has no $s section"
		done
		ex=$(sed -n '/^\.SH "*EXIT STATUS"*$/,/^\.SH/p' "$man")
		missing=""
		for c in $codes; do
			echo "$ex" | grep -qE "^\.B $c\$" || missing="$missing $c"
		done
		if [ -n "$missing" ]; then bad "$p: $man EXIT STATUS does not list exit code(s)$missing"; else ok; fi
	fi
	# A bad option is one line + try-help on stderr, nothing on stdout, exit 2.
	"$b" --no-such-option >"$tmp/out" 2>"$tmp/err"; rc=$?
	if [ $rc -eq 2 ] && [ ! -s "$tmp/out" ] && [ "$(wc -l <"$tmp/err")" -eq 2 ] &&
	   grep -q "Try '$p --help'" "$tmp/err"; then ok
	else bad "$p: bad option gave exit $rc, stdout: $(cat "$tmp/out"), stderr: $(cat "$tmp/err")"; fi
	# -V and --version: "PROGRAM (vmops) VERSION" on stdout, exit 0
	"$b" --version >"$tmp/version" 2>"$tmp/version.err"; rc=$?
	if [ $rc -eq 0 ] && grep -q "^$p (vmops) " "$tmp/version" && [ ! -s "$tmp/version.err" ]; then ok
	else bad "$p: --version gave exit $rc and: $(cat "$tmp/version" "$tmp/version.err")"; fi
	"$b" -V >"$tmp/v" 2>&1
	cmp -s "$tmp/v" "$tmp/version" && ok || bad "$p: -V and --version differ"
done

# No page or completion for a program that does not exist (a rename left behind).
for f in man/*.1 completions/*.bash completions/*.zsh; do
	[ -f "$f" ] || continue
	n=$(basename "$f"); n=${n%.*}
	[ -f "cmd/$n.c" ] || bad "$f: no program $n (cmd/$n.c)"
done

# vm-fleet remote: every action the remote side serves (the table in
# lib/transport/serve.c) is completed by bash and zsh and named in the man
# page, and nothing else is.
acts=$(sed -n '/^} actions\[\] = {/,/^};/p' lib/transport/serve.c | grep -o '{ "[a-z-]*", do_' |
	sed 's/{ "\([a-z-]*\)".*/\1/' | sort -u)
if [ -n "$acts" ]; then ok; else bad "lib/transport/serve.c: no remote actions found"; fi
printf '%s\n' "$acts" >"$tmp/acts"
for f in completions/vm-fleet.bash completions/vm-fleet.zsh; do
	case $f in
	*.bash) sed -n '/^\tremote)/,/;;/p' "$f" | sed -n "s/.*compgen -W '\([^']*\)'.*/\1/p" ;;
	*.zsh) sed -n "s/.*':action:(\([^)]*\))'.*/\1/p" "$f" ;;
	esac | tr ' ' '\n' | grep . | sort -u >"$tmp/completed"
	if d=$(diff "$tmp/acts" "$tmp/completed"); then ok
	else
		bad "vm-fleet remote: lib/transport/serve.c and $f disagree (< only served, > only completed):"
		echo "$d" | grep '^[<>]'
	fi
done
sed -n '/^\.BI "remote " action$/,/^\.SH/p' man/vm-fleet.1 | sed 's/\\-/-/g' >"$tmp/remote.man"
missing=""
for a in $acts; do
	grep -qE "^\.BR? $a( |\$)" "$tmp/remote.man" || missing="$missing $a"
done
if [ -z "$missing" ]; then ok; else bad "man/vm-fleet.1: remote does not name action(s)$missing"; fi

for m in man/*.[17]; do
	[ -f "$m" ] || continue
	w=$(mandoc -Tlint -W warning "$m" 2>&1)
	if [ -n "$w" ]; then bad "mandoc -Tlint $m:"; echo "$w"; else ok; fi
done
for z in completions/*.zsh; do
	[ -f "$z" ] || continue
	zsh -n "$z" 2>/dev/null && ok || bad "zsh -n $z"
done
for c in completions/*.bash; do
	[ -f "$c" ] || continue
	bash -n "$c" && ok || bad "bash -n $c"
done
echo "docs: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
