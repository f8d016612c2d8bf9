#compdef usage-parity
# zsh completion for usage-parity(1)
# SPDX-License-Identifier: MIT

_arguments -s \
  '--from=[start of the window]:time (now, now-DUR, @EPOCH, YYYY-MM-DD[THH:MM[:SS]][Z]):(now now-1h now-6h now-1d)' \
  '--to=[end of the window]:time (now, now-DUR, @EPOCH, YYYY-MM-DD[THH:MM[:SS]][Z]):(now now-1h)' \
  '--grace=[the default window ends at least DUR ago]:duration:(0s 5m 15m 1h)' \
  '--tolerance=[per-org usage difference allowed, in percent]:percent:(0 1 2 5 10)' \
  '--starting-timeout=[a pending sandbox'\''s VMM starting for longer was abandoned (default 10m)]:duration:(5m 10m 30m 1h)' \
  '--fix[repair what is safe, each repair in its own transaction]' \
  '--dry-run[with --fix, roll every repair back]' \
  '--db=[connect with this libpq connection string or URI]:libpq connection string or URI: ' \
  '--json[print JSON instead of text]' \
  '*'{-v,--verbose}'[say more about what happens (repeat for debug output)]' \
  '(-q --quiet)'{-q,--quiet}'[print only errors]' \
  '(- *)'{-h,--help}'[show the help and exit]' \
  '(- *)'{-V,--version}'[show the version and exit]'
