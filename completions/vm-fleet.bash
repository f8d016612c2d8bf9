# bash completion for vm-fleet(1)                          -*- shell-script -*-
# SPDX-License-Identifier: MIT

# Worker names from the database the command line points at.  Bounded: a
# database that does not answer within two seconds completes nothing.
_vm_fleet_workers()
{
	local db=$1
	PGCONNECT_TIMEOUT=2 command vm-fleet ${db:+--db "$db"} worker list 2>/dev/null |
		awk 'NR > 1 { print $2 }'
}

# Sandbox names that are not destroyed yet, the same way.
_vm_fleet_sandboxes()
{
	local db=$1
	PGCONNECT_TIMEOUT=2 command vm-fleet ${db:+--db "$db"} list 2>/dev/null |
		awk 'NR > 1 && $4 != "destroyed" { print $2 }'
}

_vm_fleet()
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

	local common='--db --json --verbose -v --quiet -q --help -h --version -V'
	local sandbox_statuses='pending running migrating hibernated stopped error destroyed'
	local worker_states='active draining drained terminated'

	# Find the command words, the --db value and the positional arguments.
	local i w cmd='' db='' npos=0
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
		--*=*) ;;
		--memory | --vcpus | --address | --transport | --run-dir | --ports | --worker | \
			--status | --sandbox | --org | --hypervisor | --disk | --pid | --pid-start-time | \
			--control-socket | --agent-socket | --spec | --wait | --accel | --timeout | --host-id | --image-dirs)
			((i++))
			;;
		-*) ;;
		*)
			if [[ -z $cmd ]]; then
				cmd=$w
			elif [[ $cmd == worker ]]; then
				cmd="worker $w"
			else
				((npos++))
			fi
			;;
		esac
	done

	# Values of options.
	case $prev in
	--transport)
		COMPREPLY=($(compgen -W 'local ssh' -- "$cur"))
		return
		;;
	--hypervisor)
		COMPREPLY=($(compgen -W 'qemu cloud-hypervisor firecracker' -- "$cur"))
		return
		;;
	--accel)
		COMPREPLY=($(compgen -W 'auto tcg kvm' -- "$cur"))
		return
		;;
	--status)
		COMPREPLY=($(compgen -W "$sandbox_statuses" -- "$cur"))
		return
		;;
	--worker)
		COMPREPLY=($(compgen -W "$(_vm_fleet_workers "$db")" -- "$cur"))
		return
		;;
	--spec | --control-socket | --agent-socket)
		if declare -F _filedir >/dev/null; then
			_filedir
		else
			COMPREPLY=($(compgen -f -- "$cur"))
		fi
		return
		;;
	--run-dir)
		if declare -F _filedir >/dev/null; then
			_filedir -d
		else
			COMPREPLY=($(compgen -d -- "$cur"))
		fi
		return
		;;
	--db | --memory | --vcpus | --address | --ports | --sandbox | --org | --disk | --pid | \
		--pid-start-time | --wait | --timeout | --host-id)
		return
		;;
	esac
	$split && return

	local opts
	case $cmd in
	'')
		if [[ $cur == -* ]]; then
			COMPREPLY=($(compgen -W "$common" -- "$cur"))
		else
			COMPREPLY=($(compgen -W 'init status worker list register launch destroy remote' -- "$cur"))
		fi
		return
		;;
	worker)
		COMPREPLY=($(compgen -W 'add list set-state set-host set-image-dirs' -- "$cur"))
		return
		;;
	init) opts='--dry-run' ;;
	status) opts='' ;;
	'worker add')
		opts='--memory --vcpus --address --transport --run-dir --ports --host-id --image-dirs --dry-run'
		;;
	'worker list') opts='' ;;
	'worker set-state')
		opts='--dry-run'
		if [[ $cur != -* ]]; then
			case $npos in
			0) COMPREPLY=($(compgen -W "$(_vm_fleet_workers "$db")" -- "$cur")) ;;
			1) COMPREPLY=($(compgen -W "$worker_states" -- "$cur")) ;;
			esac
			return
		fi
		;;
	'worker set-image-dirs')
		opts='--image-dirs --dry-run'
		if [[ $cur != -* ]]; then
			((npos == 0)) &&
				COMPREPLY=($(compgen -W "$(_vm_fleet_workers "$db")" -- "$cur"))
			return
		fi
		;;
	'worker set-host')
		opts='--host-id --dry-run'
		if [[ $cur != -* ]]; then
			((npos == 0)) &&
				COMPREPLY=($(compgen -W "$(_vm_fleet_workers "$db")" -- "$cur"))
			return
		fi
		;;
	list) opts='--worker --status' ;;
	register)
		opts='--sandbox --org --worker --hypervisor --memory --vcpus --disk --pid
			--pid-start-time --control-socket --agent-socket --spec --dry-run'
		;;
	launch)
		opts='--sandbox --org --worker --spec --wait --accel --dry-run'
		;;
	destroy)
		opts='--timeout --dry-run'
		if [[ $cur != -* ]]; then
			((npos == 0)) &&
				COMPREPLY=($(compgen -W "$(_vm_fleet_sandboxes "$db")" -- "$cur"))
			return
		fi
		;;
	remote)
		opts=''
		if [[ $cur != -* ]]; then
			((npos == 0)) &&
				COMPREPLY=($(compgen -W 'hello launch wait-ready check destroy prepare-incoming send progress status multifd cancel pause resume stop procs' -- "$cur"))
			return
		fi
		;;
	*) return ;;
	esac
	if [[ $cur == -* ]]; then
		COMPREPLY=($(compgen -W "$opts $common" -- "$cur"))
	fi
} &&
	complete -F _vm_fleet vm-fleet

# ex: filetype=sh
