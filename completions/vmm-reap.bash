# bash completion for vmm-reap(1)                          -*- shell-script -*-
# SPDX-License-Identifier: MIT

_vmm_reap()
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
	--older-than)
		COMPREPLY=($(compgen -W '0s 30s 1m 5m 15m 1h' -- "$cur"))
		return
		;;
	--batch)
		COMPREPLY=($(compgen -W '100 1000 10000' -- "$cur"))
		return
		;;
	--sessions)
		COMPREPLY=($(compgen -W '1 2 4 8' -- "$cur"))
		return
		;;
	--db | --limit)
		return
		;;
	esac
	$split && return

	local opts='--batch --limit --older-than --sessions --dry-run --db --json --verbose -v --quiet -q --help -h --version -V'
	COMPREPLY=($(compgen -W "$opts" -- "$cur"))
} &&
	complete -F _vmm_reap vmm-reap

# ex: filetype=sh
