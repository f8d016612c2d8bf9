# bash completion for vm-drain(1)                          -*- shell-script -*-
# SPDX-License-Identifier: MIT

# Worker names from the database the command line points at.  Bounded: a
# database that does not answer within two seconds completes nothing.
# $2: "draining" for --cancel (the ones with a drain), else all but drained/terminated.
_vm_drain_workers()
{
	local db=$1 want=$2
	PGCONNECT_TIMEOUT=2 command vm-fleet ${db:+--db "$db"} worker list 2>/dev/null |
		awk -v want="$want" 'NR > 1 && (want == "draining" ? $3 == "draining" : ($3 == "active" || $3 == "draining")) { print $2 }'
}

_vm_drain()
{
	local cur prev words cword split=false
	if declare -F _init_completion >/dev/null; then
		_init_completion -s || return
	else
		words=("${COMP_WORDS[@]}")
		cword=$COMP_CWORD
		cur=${COMP_WORDS[COMP_CWORD]}
		prev=${COMP_WORDS[COMP_CWORD - 1]}
	fi

	local opts='--max-parallel --timeout --retries --backoff --timeout-per-gib --progress-timeout
		--max-bandwidth --rate --bundle-dir --hibernate-timeout --fallback-timeout --terminate --cancel --wait --dry-run
		--db --json --verbose -v --quiet -q --help -h --version -V'

	local i w db='' cancel=false npos=0
	for ((i = 1; i < cword; i++)); do
		w=${words[i]}
		case $w in
		--db=*)
			db=${w#--db=}
			;;
		--db)
			db=${words[i + 1]}
			((i++))
			;;
		--cancel)
			cancel=true
			;;
		--*=*) ;;
		--max-parallel | --timeout | --retries | --backoff | --timeout-per-gib | --progress-timeout | \
			--max-bandwidth | --rate | --wait | --bundle-dir | --hibernate-timeout | --fallback-timeout)
			((i++))
			;;
		-*) ;;
		*)
			((npos++))
			;;
		esac
	done

	case $prev in
	--max-parallel)
		COMPREPLY=($(compgen -W '1 2 4 8' -- "$cur"))
		return
		;;
	--retries)
		COMPREPLY=($(compgen -W '1 3 5' -- "$cur"))
		return
		;;
	--bundle-dir)
		COMPREPLY=($(compgen -d -- "$cur"))
		return
		;;
	--db | --hibernate-timeout | --fallback-timeout | --timeout | --backoff | --timeout-per-gib | --progress-timeout | --max-bandwidth | --rate | --wait)
		return
		;;
	esac
	$split && return

	if [[ $cur == -* ]]; then
		COMPREPLY=($(compgen -W "$opts" -- "$cur"))
	elif ((npos == 0)); then
		COMPREPLY=($(compgen -W "$(_vm_drain_workers "$db" "$($cancel && echo draining)")" -- "$cur"))
	fi
} &&
	complete -F _vm_drain vm-drain

# ex: filetype=sh
