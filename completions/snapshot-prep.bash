# bash completion for snapshot-prep(1)                     -*- shell-script -*-
# SPDX-License-Identifier: MIT

_snapshot_prep()
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
	--output | -o | --input | -i)
		COMPREPLY=($(compgen -f -- "$cur") -)
		return
		;;
	--run-dir | --work-dir | --bundle-dir)
		COMPREPLY=($(compgen -d -- "$cur"))
		return
		;;
	--agent-timeout | --prepare-timeout | --hint-timeout | --timeout)
		COMPREPLY=($(compgen -W '2s 10s 30s 1m 10m' -- "$cur"))
		return
		;;
	--db | --sandbox | -s | --vmm-id | --worker)
		return
		;;
	esac
	$split && return

	local i mode=
	for ((i = 1; i < cword; i++)); do
		case ${words[i]} in
		prepare | undo | snapshot | restore | hibernate | wake | recover) mode=${words[i]} ;;
		esac
	done
	if [[ -z $mode && $cur != -* ]]; then
		COMPREPLY=($(compgen -W 'prepare undo snapshot restore hibernate wake recover' -- "$cur"))
		return
	fi
	local opts='--sandbox -s --output -o --input -i --run-dir --vmm-id --bundle-dir --worker --work-dir --agent-timeout --prepare-timeout --hint-timeout --timeout --no-quiesce --live --dry-run --db --json --verbose -v --quiet -q --help -h --version -V'
	COMPREPLY=($(compgen -W "$opts" -- "$cur"))
} &&
	complete -F _snapshot_prep snapshot-prep

# ex: filetype=sh
