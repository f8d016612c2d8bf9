# The inventory from an empty database: init, workers, registration with
# admission, listings in text and JSON, dry runs that change nothing.
# This host's identity, as worker add records it by default:
export VMOPS_HOST_ID=cli-host-1
runs vm-fleet --db "$DB" status
runs vm-fleet --db "$DB" init --dry-run
runs vm-fleet --db "$DB" init
runs vm-fleet --db "$DB" init --json
runs vm-fleet --db "$DB" worker add w1 --memory 4G --vcpus 4
runs vm-fleet --db "$DB" worker add w2 --memory 8G --vcpus 8 --address 10.0.0.2 --ports 50000-50100 --json
runs vm-fleet --db "$DB" worker add w1 --memory 4G --vcpus 4
runs vm-fleet --db "$DB" worker add w3 --memory 1G --vcpus 1 --dry-run
runs vm-fleet --db "$DB" register --sandbox sb1 --org acme --worker w1 --memory 2G --vcpus 2
runs vm-fleet --db "$DB" register --sandbox sb2 --org acme --worker w1 --memory 3G --vcpus 1
runs vm-fleet --db "$DB" register --sandbox sb3 --org acme --worker w9 --memory 1G --vcpus 1
runs vm-fleet --db "$DB" register --sandbox sb1 --org acme --worker w2 --memory 1G --vcpus 1
runs vm-fleet --db "$DB" register --sandbox sb4 --org beta --worker w2 --memory 1G --vcpus 1 --dry-run
runs vm-fleet --db "$DB" register --sandbox sb5 --org beta --worker w2 --memory 1G --vcpus 1 --json
sql "SELECT name, status, (SELECT count(*) FROM scale_events e WHERE e.sandbox_id = s.id AND ended_at IS NULL) AS open_events FROM sandboxes s ORDER BY name"
sql "SELECT vmm_id, worker_id, memory_mb, vcpus FROM reservations ORDER BY vmm_id"
runs vm-fleet --db "$DB" worker list
runs vm-fleet --db "$DB" list
runs vm-fleet --db "$DB" list --worker w2 --json
runs vm-fleet --db "$DB" list --status stopped
runs vm-fleet --db "$DB" worker set-state w1 drained
runs vm-fleet --db "$DB" worker set-state w2 draining --dry-run
runs vm-fleet --db "$DB" worker set-state w2 draining
runs vm-fleet --db "$DB" worker set-state w9 active
runs vm-fleet --db "$DB" worker set-host w2 --host-id cli-host-2 --dry-run
runs vm-fleet --db "$DB" worker set-host w2 --host-id cli-host-2
runs vm-fleet --db "$DB" worker set-host w2 --json
runs vm-fleet --db "$DB" worker set-host w9
runs vm-fleet --db "$DB" register --sandbox sb6 --org beta --worker w2 --memory 1G --vcpus 1
runs vm-fleet --db "$DB" status
sql "SELECT program, action, object_type FROM audit_log ORDER BY id"
# Where launch specs may take images from (the launch-spec policy, vmops(7)).
runs vm-fleet --db "$DB" worker add w4 --memory 1G --vcpus 1 --image-dirs /srv/images:/var/lib/vmops/images
runs vm-fleet --db "$DB" worker add w5 --memory 1G --vcpus 1 --image-dirs /dev/disk
runs vm-fleet --db "$DB" worker set-image-dirs w4 --image-dirs /srv/other --dry-run
runs vm-fleet --db "$DB" worker set-image-dirs w4 --image-dirs /srv/other --json
runs vm-fleet --db "$DB" worker set-image-dirs w4
runs vm-fleet --db "$DB" worker set-image-dirs w4 --image-dirs /srv/../etc
runs vm-fleet --db "$DB" worker set-image-dirs w9 --image-dirs /srv/other
sql "SELECT name, image_dirs FROM workers WHERE name IN ('w4', 'w5') ORDER BY name"
sql "SELECT action, before->'image_dirs', after->'image_dirs' FROM audit_log WHERE action = 'worker-set-image-dirs' ORDER BY id"
