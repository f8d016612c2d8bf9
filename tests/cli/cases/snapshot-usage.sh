# snapshot-prep: bad command lines are one line plus the try-help line on
# stderr, exit 2, nothing on stdout, and no database contact ($NODB points
# nowhere: reaching for it would be exit 5).  --help and --version exit 0.
runs snapshot-prep --db "$NODB"
runs snapshot-prep --db "$NODB" bogus --sandbox sb1
runs snapshot-prep --db "$NODB" prepare
runs snapshot-prep --db "$NODB" prepare --sandbox ''
runs snapshot-prep --db "$NODB" undo extra --sandbox sb1
runs snapshot-prep --db "$NODB" snapshot --sandbox sb1
runs snapshot-prep --db "$NODB" snapshot --sandbox sb1 -o
runs snapshot-prep --db "$NODB" prepare --sandbox sb1 -o /tmp/x
runs snapshot-prep --db "$NODB" prepare --sandbox sb1 -i /tmp/x
runs snapshot-prep --db "$NODB" restore -i /tmp/x
runs snapshot-prep --db "$NODB" restore -i /tmp/x --run-dir relative/dir
runs snapshot-prep --db "$NODB" restore --run-dir /tmp/x
runs snapshot-prep --db "$NODB" prepare --sandbox sb1 --agent-timeout 5
runs snapshot-prep --db "$NODB" prepare --sandbox sb1 --agent-timeout 0s
runs snapshot-prep --db "$NODB" prepare --sandbox sb1 --prepare-timeout 2h
runs snapshot-prep --db "$NODB" hibernate --sandbox sb1 --bundle-dir /b --hint-timeout 0s
runs snapshot-prep --db "$NODB" snapshot --sandbox sb1 -o /tmp/x --timeout x
runs snapshot-prep --db "$NODB" prepare --sandbox sb1 --bogus
runs snapshot-prep --db "$NODB" prepare --sandbox sb1 --no-quiesce=yes
runs snapshot-prep --db "$NODB" --help
runs snapshot-prep --db "$NODB" -V
# A good command line does reach for the database: exit 5, one line.
runs snapshot-prep --db "$NODB" prepare --sandbox sb1 --dry-run --json
# restore needs no database: a missing bundle is exit 11.
runs snapshot-prep restore -i /nonexistent/bundle --run-dir /tmp/vmops-cli-nonexistent/r
# hibernate and wake: their own options, checked before the database.
runs snapshot-prep --db "$NODB" hibernate --sandbox sb1
runs snapshot-prep --db "$NODB" hibernate --sandbox sb1 --bundle-dir relative
runs snapshot-prep --db "$NODB" wake --sandbox sb1 --bundle-dir /tmp
runs snapshot-prep --db "$NODB" hibernate --sandbox sb1 --bundle-dir /tmp --worker w2
runs snapshot-prep --db "$NODB" wake
# recover: a sandbox, and none of the other modes' options.
runs snapshot-prep --db "$NODB" recover
runs snapshot-prep --db "$NODB" recover --sandbox sb1 --bundle-dir /tmp
# --live is for snapshot only (a hibernated VM stops at the snapshot point).
runs snapshot-prep --db "$NODB" hibernate --sandbox sb1 --bundle-dir /tmp --live
runs snapshot-prep --db "$NODB" prepare --sandbox sb1 --live
runs snapshot-prep --db "$NODB" snapshot --sandbox sb1 -o /tmp/x --live=yes
runs snapshot-prep --db "$NODB" snapshot --sandbox sb1 -o /tmp/x --live --dry-run --json
