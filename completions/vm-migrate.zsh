#compdef vm-migrate
# zsh completion for vm-migrate(1)
# SPDX-License-Identifier: MIT

# Active worker names (the only possible targets) from the database the
# command line points at.  Bounded: a database that does not answer within
# two seconds completes nothing.
(( $+functions[_vm-migrate_workers] )) ||
_vm-migrate_workers() {
  local db=${(Q)opt_args[--db]}
  local -a workers
  workers=( ${(f)"$(PGCONNECT_TIMEOUT=2 _call_program workers \
    vm-fleet ${db:+--db ${(q)db}} worker list 2>/dev/null | awk 'NR > 1 && $3 == "active" { print $2 }')"} )
  _describe -t workers 'worker' workers
}

# Running sandboxes (the only ones that can migrate), the same way.
(( $+functions[_vm-migrate_sandboxes] )) ||
_vm-migrate_sandboxes() {
  local db=${(Q)opt_args[--db]}
  local -a sandboxes
  sandboxes=( ${(f)"$(PGCONNECT_TIMEOUT=2 _call_program sandboxes \
    vm-fleet ${db:+--db ${(q)db}} list 2>/dev/null | awk 'NR > 1 && $4 == "running" { print $2 }')"} )
  _describe -t sandboxes 'sandbox' sandboxes
}

_vm-migrate() {
  local curcontext=$curcontext state state_descr line ret=1
  typeset -A opt_args
  local -a migrate migrate_names

  # Options that only make sense when migrating a sandbox, not with --recover.
  migrate=(
    '--to=[target worker (default: the one with most free capacity)]:worker:_vm-migrate_workers'
    '--connections=[parallel transfer connections, 1..128 (default 1)]:connections:(1 2 4 8 16)'
    '--wait-target=[wait this long for a free target (default 5m; 0s: do not wait)]:duration (e.g. 5m, 0s): '
    '--timeout-per-gib=[completion timeout per GiB of guest memory (default 150s)]:duration (e.g. 150s): '
    '--progress-timeout=[abort when nothing moves for this long (default 150s)]:duration (e.g. 150s): '
    '--downtime-limit=[longest pause allowed at switchover (default 300)]:milliseconds: '
    '--max-bandwidth=[bandwidth cap (default: none)]:size per second (e.g. 1G/s): '
    '--auto-converge[throttle the guest when it dirties memory faster than it can be sent]'
    '--lease=[lease on the attempt, renewed while it runs (default 30s)]:duration (at least 3s): '
    '--rtt=[round-trip time to the target, for the ETA (default 1ms)]:duration (e.g. 1ms): '
    '--accel=[what a spec'\''s accel "auto" means for the receiver]:accelerator:((auto\:"try KVM, else TCG (default)" tcg\:"TCG only" kvm\:"KVM only"))'
    '--dry-run[choose a target and report it, change nothing]'
  )
  migrate_names=( ${${migrate%%\[*}%=} )

  _arguments -C -s \
    '--db=[connect with this libpq connection string or URI]:libpq connection string or URI: ' \
    '--json[print JSON instead of text]' \
    '*'{-v,--verbose}'[say more about what happens (repeat for debug output)]' \
    '(-q --quiet)'{-q,--quiet}'[print only errors]' \
    '(- *)'{-h,--help}'[show the help and exit]' \
    '(- *)'{-V,--version}'[show the version and exit]' \
    "(--recover)"$^migrate \
    "($migrate_names 1)--recover[clean up attempts whose vm-migrate died (expired leases) and exit]" \
    '(--recover)1:sandbox:_vm-migrate_sandboxes' && ret=0
  return ret
}

_vm-migrate "$@"
