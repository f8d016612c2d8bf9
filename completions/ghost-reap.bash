# bash completion for ghost-reap(1)                        -*- shell-script -*-
# SPDX-License-Identifier: MIT

_ghost_reap()
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

	case $prev in
	--action)
		COMPREPLY=($(compgen -W 'log kill' -- "$cur"))
		return
		;;
	--min-age)
		COMPREPLY=($(compgen -W '0s 1m 5m 10m 30m 1h' -- "$cur"))
		return
		;;
	--grace)
		COMPREPLY=($(compgen -W '1s 5s 10s 30s' -- "$cur"))
		return
		;;
	--starting-timeout)
		COMPREPLY=($(compgen -W '5m 10m 30m 1h' -- "$cur"))
		return
		;;
	--proc-root)
		COMPREPLY=($(compgen -d -- "$cur"))
		return
		;;
	--db | --worker)
		return
		;;
	esac
	$split && return

	local opts='--worker --min-age --action --grace --starting-timeout --proc-root --repair-from-recording --dry-run --db --json --verbose -v --quiet -q --help -h --version -V'
	COMPREPLY=($(compgen -W "$opts" -- "$cur"))
} &&
	complete -F _ghost_reap ghost-reap

# ex: filetype=sh
