# vm-drain: bad command lines are one line plus the try-help line on
# stderr, exit 2, nothing on stdout, and no database contact ($NODB points
# nowhere: reaching for it would be exit 5).  --help and --version exit 0.
runs vm-drain --db "$NODB"
runs vm-drain --db "$NODB" --dry-run --json
runs vm-drain --db "$NODB" w1 w2
runs vm-drain --db "$NODB" 'bad name'
runs vm-drain --db "$NODB" ''
runs vm-drain --db "$NODB" w1 --max-parallel 0
runs vm-drain --db "$NODB" w1 --max-parallel 65
runs vm-drain --db "$NODB" w1 --max-parallel two
runs vm-drain --db "$NODB" w1 --retries 0
runs vm-drain --db "$NODB" w1 --retries 21
runs vm-drain --db "$NODB" w1 --timeout 0s
runs vm-drain --db "$NODB" w1 --timeout 8d
runs vm-drain --db "$NODB" w1 --timeout 6
runs vm-drain --db "$NODB" w1 --backoff 2h
runs vm-drain --db "$NODB" w1 --timeout-per-gib 0s
runs vm-drain --db "$NODB" w1 --progress-timeout 1x
runs vm-drain --db "$NODB" w1 --max-bandwidth 0/s
runs vm-drain --db "$NODB" w1 --max-bandwidth fast
runs vm-drain --db "$NODB" w1 --rate 0
runs vm-drain --db "$NODB" w1 --wait 1m
runs vm-drain --db "$NODB" w1 --bundle-dir relative/dir
runs vm-drain --db "$NODB" w1 --bundle-dir /nonexistent/vmops-bundles
runs vm-drain --db "$NODB" w1 --bundle-dir /etc/hostname
runs vm-drain --db "$NODB" w1 --hibernate-timeout 1m
runs vm-drain --db "$NODB" w1 --bundle-dir /tmp --hibernate-timeout 0s
runs vm-drain --db "$NODB" w1 --bundle-dir /tmp --fallback-timeout 2
runs vm-drain --db "$NODB" --cancel w1 --bundle-dir /tmp
runs vm-drain --db "$NODB" --cancel w1 --max-parallel 4
runs vm-drain --db "$NODB" --cancel w1 --dry-run
runs vm-drain --db "$NODB" --cancel w1 --terminate
runs vm-drain --db "$NODB" --cancel w1 --wait 1y
runs vm-drain --db "$NODB" --cancel
runs vm-drain --db "$NODB" w1 --max-parallel
runs vm-drain --db "$NODB" w1 --wait
runs vm-drain --db "$NODB" w1 --terminate=yes
runs vm-drain --db "$NODB" w1 --bogus
runs vm-drain --db "$NODB" w1 -x
runs vm-drain --db "host=/x bogus_key=1" w1
runs vm-drain --db "$NODB" --help
runs vm-drain --db "$NODB" --version
