#compdef ghost-reap
# zsh completion for ghost-reap(1)
# SPDX-License-Identifier: MIT

_arguments -s \
  '--worker=[the worker this host is]:worker name: ' \
  '--min-age=[leave ghosts younger than this alone (default 5m)]:duration:(0s 1m 5m 10m 30m 1h)' \
  '--action=[what to do with ghosts]:action:(log kill)' \
  '--grace=[time between SIGTERM and SIGKILL (default 5s)]:duration:(1s 5s 10s 30s)' \
  '--starting-timeout=[a VMM starting for longer was abandoned (default 10m)]:duration:(5m 10m 30m 1h)' \
  '--proc-root=[read processes from this /proc tree]:directory:_files -/' \
  '--repair-from-recording[with a recorded --proc-root: repair the phantoms it shows]' \
  '--dry-run[show what would change, change nothing]' \
  '--db=[connect with this libpq connection string or URI]:libpq connection string or URI: ' \
  '--json[print JSON instead of text]' \
  '*'{-v,--verbose}'[say more about what happens (repeat for debug output)]' \
  '(-q --quiet)'{-q,--quiet}'[print only errors]' \
  '(- *)'{-h,--help}'[show the help and exit]' \
  '(- *)'{-V,--version}'[show the version and exit]'
