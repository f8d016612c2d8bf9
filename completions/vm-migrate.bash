# bash completion for vm-migrate(1)                        -*- shell-script -*-
# SPDX-License-Identifier: MIT

# Active worker names from the database the command line points at (the only
# possible targets).  Bounded: a database that does not answer within two
# seconds completes nothing.
_vm_migrate_workers()
{
	local db=$1
	PGCONNECT_TIMEOUT=2 command vm-fleet ${db:+--db "$db"} worker list 2>/dev/null |
		awk 'NR > 1 && $3 == "active" { print $2 }'
}

# Running sandboxes (the only ones that can migrate), the same way.
_vm_migrate_sandboxes()
{
	local db=$1
	PGCONNECT_TIMEOUT=2 command vm-fleet ${db:+--db "$db"} list 2>/dev/null |
		awk 'NR > 1 && $4 == "running" { print $2 }'
}

_vm_migrate()
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

	local opts='--to --connections --wait-target --timeout-per-gib --progress-timeout
		--downtime-limit --max-bandwidth --auto-converge --lease --rtt --accel
		--recover --dry-run
		--db --json --verbose -v --quiet -q --help -h --version -V'

	# Find the --db value, --recover and the sandbox already given.
	local i w db='' recover=false npos=0
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
		--recover)
			recover=true
			;;
		--*=*) ;;
		--to | --connections | --wait-target | --timeout-per-gib | --progress-timeout | \
			--downtime-limit | --max-bandwidth | --lease | --rtt | --accel)
			((i++))
			;;
		-*) ;;
		*)
			((npos++))
			;;
		esac
	done

	# Values of options.
	case $prev in
	--to)
		COMPREPLY=($(compgen -W "$(_vm_migrate_workers "$db")" -- "$cur"))
		return
		;;
	--accel)
		COMPREPLY=($(compgen -W 'auto tcg kvm' -- "$cur"))
		return
		;;
	--connections)
		COMPREPLY=($(compgen -W '1 2 4 8 16' -- "$cur"))
		return
		;;
	--db | --wait-target | --timeout-per-gib | --progress-timeout | --downtime-limit | \
		--max-bandwidth | --lease | --rtt)
		return
		;;
	esac
	$split && return

	if [[ $cur == -* ]]; then
		COMPREPLY=($(compgen -W "$opts" -- "$cur"))
	elif ! $recover && ((npos == 0)); then
		COMPREPLY=($(compgen -W "$(_vm_migrate_sandboxes "$db")" -- "$cur"))
	fi
} &&
	complete -F _vm_migrate vm-migrate

# ex: filetype=sh
