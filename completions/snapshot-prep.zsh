#compdef snapshot-prep
# zsh completion for snapshot-prep(1)
# SPDX-License-Identifier: MIT

_arguments -s \
  '1:mode:(prepare undo snapshot restore hibernate wake recover)' \
  '(-s --sandbox)'{-s+,--sandbox=}'[the sandbox (prepare, undo, snapshot)]:sandbox name: ' \
  '(-o --output)'{-o+,--output=}'[snapshot: write the bundle to FILE (- for stdout)]:bundle file:_files' \
  '(-i --input)'{-i+,--input=}'[restore: read the bundle from FILE (- for stdin)]:bundle file:_files' \
  '--run-dir=[restore: directory for the new VMM and its files]:directory:_directories' \
  '--vmm-id=[restore: id for the new VMM'"'"'s name]:VMM id: ' \
  '--bundle-dir=[hibernate: directory for the bundle]:directory:_directories' \
  '--worker=[wake: this worker]:worker name: ' \
  '--work-dir=[snapshot: where the files are staged]:directory:_directories' \
  '--agent-timeout=[wait for the guest agent at most DUR]:duration:(2s 10s 30s 1m)' \
  '--prepare-timeout=[the freeze itself at most DUR]:duration:(2s 10s 30s 1m)' \
  '--hint-timeout=[a running free-page hinting round at most DUR before it is stopped]:duration:(1s 10s 30s)' \
  '--timeout=[writing or loading the snapshot at most DUR]:duration:(1m 10m 30m)' \
  '--no-quiesce[do not freeze the guest'"'"'s filesystems]' \
  '--live[snapshot: the VM keeps running while its state is written]' \
  '--dry-run[show what would change, change nothing]' \
  '--db=[connect with this libpq connection string or URI]:libpq connection string or URI: ' \
  '--json[print JSON instead of text]' \
  '*'{-v,--verbose}'[say more about what happens (repeat for debug output)]' \
  '(-q --quiet)'{-q,--quiet}'[print only errors]' \
  '(- *)'{-h,--help}'[show the help and exit]' \
  '(- *)'{-V,--version}'[show the version and exit]'
