#compdef vmm-reap
# zsh completion for vmm-reap(1)
# SPDX-License-Identifier: MIT

_arguments -s \
  '--batch=[VMMs per transaction (default 1000)]:VMMs per transaction:(100 1000 10000)' \
  '--limit=[reap at most N VMMs in this run]:number of VMMs: ' \
  '--older-than=[only VMMs destroyed or failed at least DUR ago]:duration:(0s 30s 1m 5m 15m 1h)' \
  '--sessions=[database sessions reaping at once (default 2)]:sessions:(1 2 4 8)' \
  '--dry-run[show what would change, change nothing]' \
  '--db=[connect with this libpq connection string or URI]:libpq connection string or URI: ' \
  '--json[print JSON instead of text]' \
  '*'{-v,--verbose}'[say more about what happens (repeat for debug output)]' \
  '(-q --quiet)'{-q,--quiet}'[print only errors]' \
  '(- *)'{-h,--help}'[show the help and exit]' \
  '(- *)'{-V,--version}'[show the version and exit]'
