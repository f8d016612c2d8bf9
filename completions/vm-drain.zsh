#compdef vm-drain
# zsh completion for vm-drain(1)
# SPDX-License-Identifier: MIT

# Workers that are active or draining, from the database the command line
# points at.  Bounded: a database that does not answer within two seconds
# completes nothing.
(( $+functions[_vm-drain_workers] )) ||
_vm-drain_workers() {
  local db=${(Q)opt_args[--db]}
  local -a workers
  workers=( ${(f)"$(PGCONNECT_TIMEOUT=2 _call_program workers \
    vm-fleet ${db:+--db ${(q)db}} worker list 2>/dev/null | awk 'NR > 1 && ($3 == "active" || $3 == "draining") { print $2 }')"} )
  _describe -t workers 'worker' workers
}

_vm-drain() {
  local curcontext=$curcontext state state_descr line ret=1
  typeset -A opt_args
  local -a drain drain_names

  # Options of a drain, not of --cancel.
  drain=(
    '--max-parallel=[moves out of the worker at once, 1..64 (default 2)]:moves:(1 2 4 8)'
    '--timeout=[whole-drain timeout (default 6h)]:duration (e.g. 6h): '
    '--retries=[attempts per sandbox before it is stuck, 1..20 (default 3)]:attempts:(1 3 5)'
    '--backoff=[wait before the second attempt, doubled after each (default 5s)]:duration (e.g. 5s): '
    '--timeout-per-gib=[a move'\''s completion timeout per GiB of guest memory (default 150s)]:duration (e.g. 150s): '
    '--progress-timeout=[abort a move when nothing moves for this long (default 150s)]:duration (e.g. 150s): '
    '--max-bandwidth=[bandwidth cap per move (default: none)]:size per second (e.g. 1G/s): '
    '--rate=[expected rate per move, for the plan and the ETA (default 100M/s)]:size per second (e.g. 100M/s): '
    '--bundle-dir=[hibernate what cannot move into this directory (absolute)]:bundle directory:_directories'
    '--hibernate-timeout=[budget of one sandbox'\''s hibernate (default 2m)]:duration (e.g. 2m): '
    '--fallback-timeout=[budget of all the hibernates of one run (default 30m)]:duration (e.g. 30m): '
    '--terminate[declare the worker terminated, not drained]'
    '--dry-run[print the plan, change nothing]'
  )
  drain_names=( ${${drain%%\[*}%=} )

  _arguments -C -s \
    '--db=[connect with this libpq connection string or URI]:libpq connection string or URI: ' \
    '--json[print JSON instead of text]' \
    '*'{-v,--verbose}'[say more about what happens (repeat for debug output)]' \
    '(-q --quiet)'{-q,--quiet}'[print only errors]' \
    '(- *)'{-h,--help}'[show the help and exit]' \
    '(- *)'{-V,--version}'[show the version and exit]' \
    "(--cancel --wait)"$^drain \
    "($drain_names)--cancel[cancel the worker's drain: the worker is active again]" \
    "($drain_names)--wait=[with --cancel: wait this long for the running vm-drain (default 10m)]:duration (e.g. 10m): " \
    '1:worker:_vm-drain_workers' && ret=0
  return ret
}

_vm-drain "$@"
