# vm-migrate: bad command lines are one line plus the try-help line on
# stderr, exit 2, nothing on stdout, and no database contact ($NODB points
# nowhere: reaching for it would be exit 5).  --help and --version exit 0.
runs vm-migrate --db "$NODB"
runs vm-migrate --db "$NODB" --dry-run --json
runs vm-migrate --db "$NODB" sb1 sb2
runs vm-migrate --db "$NODB" --recover sb1
runs vm-migrate --db "$NODB" 'bad name'
runs vm-migrate --db "$NODB" sb1 --to ''
runs vm-migrate --db "$NODB" sb1 --to 'w 2'
runs vm-migrate --db "$NODB" sb1 --recover --dry-run
runs vm-migrate --db "$NODB" sb1 --connections 0
runs vm-migrate --db "$NODB" sb1 --connections 129
runs vm-migrate --db "$NODB" sb1 --connections two
runs vm-migrate --db "$NODB" sb1 --wait-target 5
runs vm-migrate --db "$NODB" sb1 --wait-target 8d
runs vm-migrate --db "$NODB" sb1 --timeout-per-gib 0s
runs vm-migrate --db "$NODB" sb1 --timeout-per-gib 1y
runs vm-migrate --db "$NODB" sb1 --progress-timeout 1x
runs vm-migrate --db "$NODB" sb1 --progress-timeout 0s
runs vm-migrate --db "$NODB" sb1 --downtime-limit 0
runs vm-migrate --db "$NODB" sb1 --downtime-limit 10ms
runs vm-migrate --db "$NODB" sb1 --downtime-limit 2000001
runs vm-migrate --db "$NODB" sb1 --max-bandwidth 0
runs vm-migrate --db "$NODB" sb1 --max-bandwidth 0/s
runs vm-migrate --db "$NODB" sb1 --max-bandwidth 1X/s
runs vm-migrate --db "$NODB" sb1 --max-bandwidth fast
runs vm-migrate --db "$NODB" sb1 --lease 2s
runs vm-migrate --db "$NODB" sb1 --lease 30
runs vm-migrate --db "$NODB" sb1 --rtt 2m
runs vm-migrate --db "$NODB" sb1 --rtt -1ms
runs vm-migrate --db "$NODB" sb1 --accel xen
runs vm-migrate --db "$NODB" sb1 --accel ''
runs vm-migrate --db "$NODB" sb1 --to
runs vm-migrate --db "$NODB" sb1 --connections
runs vm-migrate --db "$NODB" sb1 --wait-target
runs vm-migrate --db "$NODB" sb1 --timeout-per-gib
runs vm-migrate --db "$NODB" sb1 --progress-timeout
runs vm-migrate --db "$NODB" sb1 --downtime-limit
runs vm-migrate --db "$NODB" sb1 --max-bandwidth
runs vm-migrate --db "$NODB" sb1 --lease
runs vm-migrate --db "$NODB" sb1 --rtt
runs vm-migrate --db "$NODB" sb1 --accel
runs vm-migrate --db "$NODB" sb1 --db
runs vm-migrate --db "$NODB" sb1 --auto-converge=yes
runs vm-migrate --db "$NODB" sb1 --bogus
runs vm-migrate --db "$NODB" sb1 -x
runs vm-migrate --db "host=/x bogus_key=1" sb1
runs vm-migrate --db "$NODB" --help
runs vm-migrate --db "$NODB" --version
# Good command lines do reach for the database: exit 5, one line, and with
# --json still nothing on stdout (no attempt was recorded).
runs vm-migrate --db "$NODB" sb1 --to w2 --connections 128 --wait-target 0s --timeout-per-gib 1m \
	--progress-timeout 30s --downtime-limit 100 --max-bandwidth 1G/s --auto-converge --lease 3s \
	--rtt 0s --accel tcg --dry-run --json
runs vm-migrate --db "$NODB" --recover -q
