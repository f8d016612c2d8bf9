#compdef vm-fleet
# zsh completion for vm-fleet(1)
# SPDX-License-Identifier: MIT

# Worker names from the database the command line points at.  Bounded: a
# database that does not answer within two seconds completes nothing.
(( $+functions[_vm-fleet_workers] )) ||
_vm-fleet_workers() {
  local db=${(Q)opt_args[--db]:-$_vm_fleet_db}
  local -a workers
  workers=( ${(f)"$(PGCONNECT_TIMEOUT=2 _call_program workers \
    vm-fleet ${db:+--db ${(q)db}} worker list 2>/dev/null | awk 'NR > 1 { print $2 }')"} )
  _describe -t workers 'worker' workers
}

# Sandbox names that are not destroyed yet, the same way.
(( $+functions[_vm-fleet_sandboxes] )) ||
_vm-fleet_sandboxes() {
  local db=${(Q)opt_args[--db]:-$_vm_fleet_db}
  local -a sandboxes
  sandboxes=( ${(f)"$(PGCONNECT_TIMEOUT=2 _call_program sandboxes \
    vm-fleet ${db:+--db ${(q)db}} list 2>/dev/null | awk 'NR > 1 && $4 != "destroyed" { print $2 }')"} )
  _describe -t sandboxes 'sandbox' sandboxes
}

_vm-fleet() {
  local curcontext=$curcontext state state_descr line ret=1
  local _vm_fleet_db
  typeset -A opt_args
  local -a common commands worker_commands
  local -a sandbox_statuses=(pending running migrating hibernated stopped error destroyed)
  local -a worker_states=(active draining drained terminated)
  local dry_run='--dry-run[show what would change, change nothing]'

  common=(
    '--db=[connect with this libpq connection string or URI]:libpq connection string or URI: '
    '--json[print JSON instead of text]'
    '*'{-v,--verbose}'[say more about what happens (repeat for debug output)]'
    '(-q --quiet)'{-q,--quiet}'[print only errors]'
    '(- *)'{-h,--help}'[show the help and exit]'
    '(- *)'{-V,--version}'[show the version and exit]'
  )
  commands=(
    'init:create or upgrade the fleet schema (idempotent)'
    'status:schema version and counts of everything'
    'worker:add, list or change workers'
    'list:list sandboxes with their worker and VMM'
    'register:record a VMM that another system launched'
    'launch:start a VM on a worker and record it'
    "destroy:stop a sandbox's VM and record it destroyed"
    'remote:the entry point vmops runs over ssh on a worker'\''s host'
  )
  worker_commands=(
    'add:add a worker'
    'list:list workers with reserved capacity'
    'set-state:set a worker active, draining, drained or terminated'
    'set-host:record which host a worker is (ghost-reap checks it)'
    'set-image-dirs:set where a worker'\''s launch specs may take images from'
  )

  _arguments -C -A '-*' $common ': :->command' '*:: :->args' && ret=0
  _vm_fleet_db=${(Q)opt_args[--db]}

  case $state in
  command)
    _describe -t commands 'vm-fleet command' commands && ret=0
    ;;
  args)
    curcontext="${curcontext%:*:*}:vm-fleet-$words[1]:"
    case $words[1] in
    init)
      _arguments $common $dry_run && ret=0
      ;;
    status)
      _arguments $common && ret=0
      ;;
    list)
      _arguments $common \
        '--worker=[only sandboxes on this worker]:worker:_vm-fleet_workers' \
        "--status=[only sandboxes in this status]:status:($sandbox_statuses)" && ret=0
      ;;
    register)
      _arguments $common $dry_run \
        '--sandbox=[name of the new sandbox]:sandbox name: ' \
        '--org=[organisation billed for it]:organisation: ' \
        '--worker=[worker the VMM runs on]:worker:_vm-fleet_workers' \
        '--hypervisor=[hypervisor kind (default qemu)]:hypervisor:(qemu cloud-hypervisor firecracker)' \
        '--memory=[guest memory (e.g. 2G)]:size: ' \
        '--vcpus=[guest vCPUs]:vCPUs: ' \
        '--disk=[guest disk size (default 0)]:size: ' \
        '--pid=[process id of the hypervisor]:pid:_pids' \
        '--pid-start-time=[its start time (/proc/PID/stat field 22)]:clock ticks: ' \
        '--control-socket=[QMP or API socket path]:socket:_files' \
        '--agent-socket=[guest-agent socket path]:socket:_files' \
        '--spec=[launch spec (JSON file) that reproduces the VM]:launch spec:_files' && ret=0
      ;;
    launch)
      _arguments $common $dry_run \
        '--sandbox=[name of the new sandbox]:sandbox name: ' \
        '--org=[organisation billed for it]:organisation: ' \
        '--worker=[worker to run it on]:worker:_vm-fleet_workers' \
        '--spec=[launch spec, a JSON file]:launch spec:_files' \
        '--wait=[how long to wait for the control socket (default 30s)]:duration (e.g. 30s, 2m): ' \
        '--accel=[what a spec'\''s accel "auto" means]:accelerator:((auto\:"try KVM, else TCG (default)" tcg\:"TCG only" kvm\:"KVM only"))' && ret=0
      ;;
    remote)
      _arguments $common \
        ':action:(hello launch wait-ready check destroy prepare-incoming send progress status multifd cancel pause resume stop procs)' && ret=0
      ;;
    destroy)
      _arguments $common $dry_run \
        '--timeout=[how long the VMM gets to stop (default 30s)]:duration (e.g. 30s, 2m): ' \
        ':sandbox:_vm-fleet_sandboxes' && ret=0
      ;;
    worker)
      if (( CURRENT == 2 )); then
        _describe -t worker-commands 'worker command' worker_commands && ret=0
      else
        local sub=$words[2]
        shift words
        (( CURRENT-- ))
        curcontext="${curcontext%:*}-$sub:"
        case $sub in
        add)
          _arguments $common $dry_run \
            ':worker name: ' \
            '--memory=[memory the worker offers to VMs (e.g. 64G)]:size: ' \
            '--vcpus=[vCPUs the worker offers to VMs]:vCPUs: ' \
            '--address=[address migration traffic goes to (default 127.0.0.1)]:address:_hosts' \
            '--transport=[how vmops reaches the worker]:transport:(local ssh)' \
            '--run-dir=[directory for VMM sockets and logs on the worker]:directory:_directories' \
            '--ports=[migration port range (default 49152-49407)]:port range MIN-MAX: ' \
            '--host-id=[identity of the worker'\''s host (default: this host'\''s)]:host identity: ' \
            '--image-dirs=[directories launch specs may take images from]:directories (DIR\:DIR...):_directories' && ret=0
          ;;
        list)
          _arguments $common && ret=0
          ;;
        set-state)
          _arguments $common $dry_run \
            ':worker:_vm-fleet_workers' \
            ":state:($worker_states)" && ret=0
          ;;
        set-image-dirs)
          _arguments $common $dry_run \
            ':worker:_vm-fleet_workers' \
            '--image-dirs=[the directories to allow (default: the built-in list)]:directories (DIR\:DIR...):_directories' && ret=0
          ;;
        set-host)
          _arguments $common $dry_run \
            ':worker:_vm-fleet_workers' \
            '--host-id=[the identity to record (default: this host'\''s)]:host identity: ' && ret=0
          ;;
        *)
          _message "unknown worker command: $sub"
          ;;
        esac
      fi
      ;;
    *)
      _message "unknown command: $words[1]"
      ;;
    esac
    ;;
  esac
  return ret
}

_vm-fleet "$@"
