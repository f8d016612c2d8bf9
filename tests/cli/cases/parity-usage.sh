# usage-parity: bad command lines are one line plus the try-help line on
# stderr, exit 2, nothing on stdout, and no database contact ($NODB points
# nowhere: reaching for it would be exit 5).  --help and --version exit 0.
runs usage-parity --db "$NODB" --from yesterday
runs usage-parity --db "$NODB" --from 2024-13-01
runs usage-parity --db "$NODB" --from 2024-02-30
runs usage-parity --db "$NODB" --from 2024-06-01T25:00
runs usage-parity --db "$NODB" --from now-5
runs usage-parity --db "$NODB" --from @abc
runs usage-parity --db "$NODB" --to 2024-06-01+99:00
runs usage-parity --db "$NODB" --to ''
runs usage-parity --db "$NODB" --from 2024-06-02 --to 2024-06-01
runs usage-parity --db "$NODB" --from 2024-06-01 --to 2024-06-01
runs usage-parity --db "$NODB" --grace 5
runs usage-parity --db "$NODB" --grace 8d
runs usage-parity --db "$NODB" --tolerance 101
runs usage-parity --db "$NODB" --tolerance -1
runs usage-parity --db "$NODB" --tolerance abc
runs usage-parity --db "$NODB" --tolerance 5%%
runs usage-parity --db "$NODB" --tolerance nan
runs usage-parity --db "$NODB" --from
runs usage-parity --db "$NODB" --to
runs usage-parity --db "$NODB" --grace
runs usage-parity --db "$NODB" --tolerance
runs usage-parity --db "$NODB" --fix=yes
runs usage-parity --db "$NODB" --bogus
runs usage-parity --db "$NODB" extra
runs usage-parity --db "host=/x bogus_key=1"
runs usage-parity --db "$NODB" --help
runs usage-parity --db "$NODB" -V
# Good command lines do reach for the database: exit 5, one line.
runs usage-parity --db "$NODB" --from 2024-06-01 --to 2024-06-02 --tolerance 5% --json
runs usage-parity --db "$NODB" --from @1717200000 --to 2024-06-01T03:00+02:00 --fix --dry-run
