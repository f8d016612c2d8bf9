# vmm-reap: bad command lines are one line plus the try-help line on stderr,
# exit 2, nothing on stdout, and no database contact ($NODB points nowhere:
# reaching for it would be exit 5).  --help and --version exit 0.
runs vmm-reap --db "$NODB" --batch 0
runs vmm-reap --db "$NODB" --batch 100001
runs vmm-reap --db "$NODB" --batch x
runs vmm-reap --db "$NODB" --batch ''
runs vmm-reap --db "$NODB" --limit 0
runs vmm-reap --db "$NODB" --limit -5
runs vmm-reap --db "$NODB" --limit 99999999999999999999
runs vmm-reap --db "$NODB" --sessions 0
runs vmm-reap --db "$NODB" --sessions 9
runs vmm-reap --db "$NODB" --older-than 5
runs vmm-reap --db "$NODB" --older-than -1s
runs vmm-reap --db "$NODB" --older-than 3651d
runs vmm-reap --db "$NODB" --older-than
runs vmm-reap --db "$NODB" --batch
runs vmm-reap --db "$NODB" --limit
runs vmm-reap --db "$NODB" --db
runs vmm-reap --db "$NODB" --bogus
runs vmm-reap --db "$NODB" -x
runs vmm-reap --db "$NODB" --fix
runs vmm-reap --db "$NODB" --dry-run=yes
runs vmm-reap --db "$NODB" extra
runs vmm-reap --db "host=/x bogus_key=1" --dry-run
runs vmm-reap --db "$NODB" --help
runs vmm-reap --db "$NODB" -V
# A good command line does reach for the database: exit 5, one line.
runs vmm-reap --db "$NODB" --dry-run --json
