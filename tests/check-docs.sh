#!/bin/sh
# Every program's --help, man page, bash and zsh completions must name the
# same long options (util-linux checkusage.sh / checkcompletion.sh), every
# man page must have the standard sections and list every exit code of
# lib/exitcodes.h, and mandoc must find nothing to warn about.
# Ends with "docs: N passed, N failed".
set -u
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
bindir=${VMOPS_BIN_DIR:-bin}
passed=0
failed=0

ok() { passed=$((passed + 1)); }
bad() { failed=$((failed + 1)); echo "FAIL $*"; }

longopts() { grep -o -- '--[a-z][a-z0-9-]*' | sort -u; }
manopts() { grep -o -- '\\-\\-[a-z][a-z0-9-]*' "$1" | sed 's/\\-\\-/--/' | sort -u; }

codes=$(sed -n 's/^[[:space:]]*VMOPS_EXIT_[A-Z]* *= *\([0-9][0-9]*\),.*/\1/p' lib/exitcodes.h)

for b in "$bindir"/*; do
	[ -x "$b" ] || continue
	p=$(basename "$b")
	man=man/$p.1 bash=completions/$p.bash zsh=completions/$p.zsh
	help=$("$b" --help 2>&1 | longopts)
	for f in "$man" "$bash" "$zsh"; do
		if [ ! -f "$f" ]; then bad "$p: $f is missing"; continue; fi
		if [ "$f" = "$man" ]; then other=$(manopts "$f"); else other=$(longopts <"$f"); fi
		d=$(printf '%s\n' "$help" | diff - "$(printf '%s\n' "$other" >"/tmp/docs.$$"; echo "/tmp/docs.$$")" )
		if [ -n "$d" ]; then
			bad "$p: --help and $f disagree (< only in --help, > only in $f):"
			echo "$d" | grep '^[<>]'
		else ok; fi
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
	# Every program: --help exits 0 on stdout; a bad option is one line + try-help, exit 2.
	"$b" --help >/dev/null 2>&1 && ok || bad "$p: --help did not exit 0"
	err=$("$b" --no-such-option 2>&1 >/dev/null); rc=$?
	if [ $rc -eq 2 ] && [ "$(printf '%s\n' "$err" | wc -l)" -eq 2 ] && printf '%s' "$err" | grep -q "Try '$p --help'"; then ok
	else bad "$p: bad option gave exit $rc and: $err"; fi
	"$b" --version | grep -q "^$p (vmops) " && ok || bad "$p: --version"
done
rm -f "/tmp/docs.$$"

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
