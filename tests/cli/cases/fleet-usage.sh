# Bad input: one line, the try-help line, exit 2, and no database contact
# (--db points nowhere, so reaching it would give exit 5 instead).
NODB="host=/nonexistent-vmops port=1"
runs vm-fleet --db "$NODB"
runs vm-fleet --db "$NODB" frob
runs vm-fleet --db "$NODB" --bogus status
runs vm-fleet --db "$NODB" worker
runs vm-fleet --db "$NODB" worker remove w1
runs vm-fleet --db "$NODB" worker add
runs vm-fleet --db "$NODB" worker add w1 --vcpus 2
runs vm-fleet --db "$NODB" worker add w1 --memory 2X --vcpus 2
runs vm-fleet --db "$NODB" worker add w1 --memory 2G --vcpus 0
runs vm-fleet --db "$NODB" worker add 'bad name' --memory 2G --vcpus 2
runs vm-fleet --db "$NODB" worker add w1 --memory 2G --vcpus 2 --ports 9-1
runs vm-fleet --db "$NODB" worker add w1 --memory 1500K --vcpus 2
runs vm-fleet --db "$NODB" worker add w1 --memory 2G --vcpus 2 --transport ssh
runs vm-fleet --db "$NODB" worker add w1 --memory 2G --vcpus 2 --transport rsh --address h1
runs vm-fleet --db "$NODB" worker add w1 --memory 2G --vcpus 2 --transport ssh --address -oProxyCommand=x
runs vm-fleet --db "$NODB" worker add w1 --memory 2G --vcpus 2 --transport ssh --address 'h1;reboot'
runs vm-fleet --db "$NODB" remote frob
runs vm-fleet --db "$NODB" remote
runs vm-fleet --db "$NODB" worker set-state w1 sleeping
runs vm-fleet --db "$NODB" worker add w1 --memory 2G --vcpus 2 --host-id 'not an id'
runs vm-fleet --db "$NODB" worker set-host 'bad name'
runs vm-fleet --db "$NODB" worker set-host w1 --host-id ''
runs vm-fleet --db "$NODB" worker list extra
runs vm-fleet --db "$NODB" register --sandbox s1 --org o --worker w1 --memory 1G
runs vm-fleet --db "$NODB" register --sandbox s1 --org o --worker w1 --memory 1G --vcpus 1 --hypervisor xen
runs vm-fleet --db "$NODB" list --status sleeping
runs vm-fleet --db "$NODB" --db
runs vm-fleet --db "host=/x bogus_key=1 password=hunter2" status
runs vm-fleet --db "$NODB" status
runs vm-fleet --db "postgresql://u:hunter2@/x?host=/nonexistent-vmops&port=1" worker list
