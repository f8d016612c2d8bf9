# ghost-reap: bad command lines are one line plus the try-help line on
# stderr, exit 2, nothing on stdout, and no database contact ($NODB points
# nowhere: reaching for it would be exit 5).  --help and --version exit 0.
P=tests/fixtures/proc
runs ghost-reap --db "$NODB" --worker 'bad name' --proc-root $P
runs ghost-reap --db "$NODB" --worker '' --proc-root $P
runs ghost-reap --db "$NODB" --worker "$(printf %064d 0)" --proc-root $P
runs env VMOPS_WORKER='-w' ghost-reap --db "$NODB" --proc-root $P
runs ghost-reap --db "$NODB" --worker w1 --min-age 5 --proc-root $P
runs ghost-reap --db "$NODB" --worker w1 --min-age 366d --proc-root $P
runs ghost-reap --db "$NODB" --worker w1 --action frob --proc-root $P
runs ghost-reap --db "$NODB" --worker w1 --action KILL --proc-root $P
runs ghost-reap --db "$NODB" --worker w1 --grace 11m --proc-root $P
runs ghost-reap --db "$NODB" --worker w1 --grace 1 --proc-root $P
runs ghost-reap --db "$NODB" --worker w1 --proc-root /nonexistent-vmops
runs ghost-reap --db "$NODB" --worker w1 --proc-root $P/README
runs env VMOPS_PROC_ROOT=/nonexistent-vmops ghost-reap --db "$NODB" --worker w1
runs ghost-reap --db "$NODB" --worker w1 --proc-root $P --action kill
runs env VMOPS_PROC_ROOT=$P ghost-reap --db "$NODB" --worker w1 --action kill
runs ghost-reap --db "$NODB" --worker
runs ghost-reap --db "$NODB" --worker w1 --min-age
runs ghost-reap --db "$NODB" --worker w1 --action
runs ghost-reap --db "$NODB" --worker w1 --grace
runs ghost-reap --db "$NODB" --worker w1 --proc-root
runs ghost-reap --db "$NODB" --worker w1 --proc-root $P --bogus
runs ghost-reap --db "$NODB" --worker w1 --proc-root $P extra
runs ghost-reap --db "host=/x bogus_key=1" --worker w1 --proc-root $P
runs ghost-reap --db "$NODB" --help
runs ghost-reap --db "$NODB" --version
# A good command line does reach for the database: exit 5, one line.
runs ghost-reap --db "$NODB" --worker w1 --proc-root $P --dry-run --json
