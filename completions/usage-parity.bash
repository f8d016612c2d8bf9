# bash completion for usage-parity(1)                      -*- shell-script -*-
# SPDX-License-Identifier: MIT

_usage_parity()
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
	--from | --to)
		COMPREPLY=($(compgen -W 'now now-1h now-6h now-1d' -- "$cur"))
		return
		;;
	--grace)
		COMPREPLY=($(compgen -W '0s 5m 15m 1h' -- "$cur"))
		return
		;;
	--tolerance)
		COMPREPLY=($(compgen -W '0 1 2 5 10' -- "$cur"))
		return
		;;
	--starting-timeout)
		COMPREPLY=($(compgen -W '5m 10m 30m 1h' -- "$cur"))
		return
		;;
	--db)
		return
		;;
	esac
	$split && return

	local opts='--from --to --grace --tolerance --starting-timeout --fix --dry-run --db --json --verbose -v --quiet -q --help -h --version -V'
	COMPREPLY=($(compgen -W "$opts" -- "$cur"))
} &&
	complete -F _usage_parity usage-parity

# ex: filetype=sh
