# Bad input: one line, the try-help line, exit 2, and no database contact
# (--db points nowhere, so reaching it would give exit 5 instead).
NODB="host=/nonexistent-vmops port=1"
run vm-fleet --db "$NODB"
run vm-fleet --db "$NODB" frob
run vm-fleet --db "$NODB" --bogus status
run vm-fleet --db "$NODB" worker
run vm-fleet --db "$NODB" worker remove w1
run vm-fleet --db "$NODB" worker add
run vm-fleet --db "$NODB" worker add w1 --vcpus 2
run vm-fleet --db "$NODB" worker add w1 --memory 2X --vcpus 2
run vm-fleet --db "$NODB" worker add w1 --memory 2G --vcpus 0
run vm-fleet --db "$NODB" worker add 'bad name' --memory 2G --vcpus 2
run vm-fleet --db "$NODB" worker add w1 --memory 2G --vcpus 2 --ports 9-1
run vm-fleet --db "$NODB" worker add w1 --memory 1500K --vcpus 2
run vm-fleet --db "$NODB" worker add w1 --memory 2G --vcpus 2 --transport ssh
run vm-fleet --db "$NODB" worker set-state w1 sleeping
run vm-fleet --db "$NODB" worker add w1 --memory 2G --vcpus 2 --host-id 'not an id'
run vm-fleet --db "$NODB" worker set-host 'bad name'
run vm-fleet --db "$NODB" worker set-host w1 --host-id ''
run vm-fleet --db "$NODB" worker list extra
run vm-fleet --db "$NODB" register --sandbox s1 --org o --worker w1 --memory 1G
run vm-fleet --db "$NODB" register --sandbox s1 --org o --worker w1 --memory 1G --vcpus 1 --hypervisor xen
run vm-fleet --db "$NODB" list --status sleeping
run vm-fleet --db "$NODB" --db
run vm-fleet --db "host=/x bogus_key=1 password=hunter2" status
run vm-fleet --db "$NODB" status
run vm-fleet --db "postgresql://u:hunter2@/x?host=/nonexistent-vmops&port=1" worker list
