#!/bin/sh
# Act on one test host made by tests/hosts/with-hosts.sh:
#   hostctl.sh stop-sshd I   its sshd and every ssh session die; the host
#                            (its processes, its VMMs) keeps running
#   hostctl.sh start-sshd I  sshd again (waits until it answers)
#   hostctl.sh link-down I   its network link goes down (nothing answers)
#   hostctl.sh link-up I
#   hostctl.sh pids I        its processes as its own /proc sees them
#   hostctl.sh run I CMD...  run CMD inside the host (its network, PIDs, /proc)
set -eu
dir=${VMOPS_TEST_HOSTS_DIR:?not inside tests/hosts/with-hosts.sh}
act=$1 i=$2
shift 2
h="$dir/h$i"
[ -s "$h/init.pid" ] || { echo "hostctl: no host $i" >&2; exit 2; }
init=$(cat "$h/init.pid") ns=$(cat "$h/netns") addr=$(cat "$h/addr")
answers() {
	ssh -F "$dir/ssh_config" -o BatchMode=yes -o ConnectTimeout=2 -o ControlPath=none "$addr" true 2>/dev/null
}
case $act in
stop-sshd)
	kill -USR1 "$init"
	t=0; while answers; do t=$((t + 1)); [ $t -lt 50 ] || exit 1; sleep 0.1; done ;;
start-sshd)
	kill -USR2 "$init"
	t=0; until answers; do t=$((t + 1)); [ $t -lt 100 ] || exit 1; sleep 0.1; done ;;
link-down) ip -n "$ns" link set eth0 down ;;
link-up) ip -n "$ns" link set eth0 up ;;
pids|run)
	[ "$act" = pids ] && set -- sh -c 'ls /proc | grep -E "^[0-9]+$"'
	# --root: the host's own root directory too.  Entering a mount namespace
	# moves to that namespace's root, which is not the host's when these hosts
	# were made inside a chroot (then the command would see another /proc).
	nsenter --target "$init" --net --pid --mount --root -- "$@" ;;
*) echo "hostctl: unknown action $act" >&2; exit 2 ;;
esac
