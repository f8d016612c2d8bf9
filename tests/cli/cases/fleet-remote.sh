# The remote entry point that the ssh transport runs on a worker's host
# (vm-fleet remote ACTION, its request as JSON on stdin, one JSON answer on
# stdout, also on failure).  It acts on this host only: --db points nowhere.
export VMOPS_HOST_ID=cli-remote-1
NODB="host=/nonexistent-vmops port=1"
echo '{}' | runs vm-fleet --db "$NODB" remote hello | sed 's/"version":"[^"]*"/"version":V/'
echo '{"host_id":"cli-remote-1"}' | runs vm-fleet remote hello | sed 's/"version":"[^"]*"/"version":V/'
echo '{"host_id":"cli-remote-2"}' | runs vm-fleet remote hello
echo 'not json' | runs vm-fleet remote hello
echo '{"vmm":{"kind":"qemu","vmm_id":7,"pid":0,"start_time":0,"run_dir":"","control_socket":"","agent_socket":"","serial_log":"","stderr_log":"","incoming_uri":""}}' |
	runs vm-fleet remote check
echo '{"vmm":{"kind":"qemu","vmm_id":7,"pid":1,"start_time":1,"run_dir":"relative","control_socket":"","agent_socket":"","serial_log":"","stderr_log":"","incoming_uri":""}}' |
	runs vm-fleet remote check
echo '{"vmm_id":7,"run_dir":"/tmp/elsewhere/vmm-8","spec":{"hypervisor":"qemu","memory_mb":64,"vcpus":1,"kernel":"/k"}}' |
	runs vm-fleet remote launch
echo '{"vmm_id":7,"run_dir":"/tmp/x/vmm-7","spec":{"hypervisor":"qemu","memory_mb":64}}' |
	runs vm-fleet remote launch
# Live migration actions: only a tcp: address is sent (exec: would run a shell command).
VMM='"vmm":{"kind":"qemu","vmm_id":7,"pid":1,"start_time":1,"run_dir":"/tmp/x/vmm-7","control_socket":"/tmp/x/vmm-7/qmp.sock","agent_socket":"","serial_log":"","stderr_log":"","incoming_uri":""}'
MP='"mp":{"connections":2,"max_bandwidth":0,"downtime_limit_ms":0,"auto_converge":false}'
echo "{$VMM,\"uri\":\"exec:rm -rf /\",$MP}" | runs vm-fleet remote send
echo "{$VMM,\"uri\":\"tcp:198.18.0.1:49152\",\"mp\":{\"connections\":0}}" | runs vm-fleet remote send
echo "{\"vmm_id\":7,\"run_dir\":\"/tmp/x/vmm-7\",\"address\":\"-oProxyCommand=x\",\"port_min\":49152,\"port_max\":49160,\"salt\":1,\"timeout_ms\":1000,$MP,\"spec\":{\"hypervisor\":\"qemu\",\"memory_mb\":64,\"vcpus\":1,\"kernel\":\"/k\"}}" |
	runs vm-fleet remote prepare-incoming
echo "{\"vmm_id\":7,\"run_dir\":\"/tmp/x/vmm-7\",\"address\":\"198.18.0.1\",\"port_min\":0,\"port_max\":49160,\"salt\":1,\"timeout_ms\":1000,$MP,\"spec\":{\"hypervisor\":\"qemu\",\"memory_mb\":64,\"vcpus\":1,\"kernel\":\"/k\"}}" |
	runs vm-fleet remote prepare-incoming
echo "{$VMM,\"run_dir\":\"relative\"}" | runs vm-fleet remote stop
echo '{"vmm":{"kind":"qemu","vmm_id":7,"pid":0,"start_time":0,"run_dir":"","control_socket":"","agent_socket":"","serial_log":"","stderr_log":"","incoming_uri":""}}' |
	runs vm-fleet remote status
# procs (vm-drain's count on a worker's host): the pids asked for must be a list of process ids.
echo '{"pids":"1"}' | runs vm-fleet remote procs
echo '{"pids":[0]}' | runs vm-fleet remote procs
echo '{"pids":[1],"host_id":"cli-remote-2"}' | runs vm-fleet remote procs
