#!/bin/sh
# Run a command with test hosts: network namespaces that play separate
# machines, each with its own sshd, reached over ssh like real workers.
#   tests/hosts/with-hosts.sh COMMAND [ARGS...]
#
# Made for the run (in a temp dir) and removed when COMMAND ends, also when
# it fails or is interrupted:
#   - a bridge in this namespace with 198.18.X.1/24 (X picked per run in the
#     benchmarking range 198.18.0.0/15), no other port: nothing leaves it;
#   - VMOPS_TEST_HOSTS (default 3) namespaces, each joined to the bridge by a
#     veth pair, address 198.18.X.(10+i), loopback up, no default route;
#   - in each, its own PID namespace and /proc (unshare --pid --fork
#     --mount-proc; tests/hosts/init.py is its PID 1), so ghost-reap and
#     /proc counts there see only that host's processes;
#   - an sshd per host listening only on its address, with a host key made
#     for the run, root login by a client key made for the run, and
#     VMOPS_HOST_ID=vmops-test-hI-X and PATH (this tree's programs first)
#     set for every session (sshd_config SetEnv);
#   - an ssh client configuration (ssh_config: user, key, known hosts).
# The namespaces share the filesystem (same binaries, same guest images).
#
# COMMAND sees VMOPS_TEST_HOSTS_DIR, VMOPS_TEST_HOSTS, VMOPS_TEST_HOST<I>_ADDR
# and VMOPS_TEST_HOST<I>_ID, VMOPS_TEST_HOSTCTL (tests/hosts/hostctl.sh),
# and the programs' own VMOPS_SSH_CONFIG (the client configuration, passed
# to ssh -F) and VMOPS_SSH_DIR (where ControlMaster sockets go).
# Needs root (ip netns); otherwise COMMAND runs without hosts, and the suites
# fail their host cases unless the operator opted out (VMOPS_SKIP_QEMU=1).
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
here="$top/tests/hosts"

if [ "$(id -u)" != 0 ]; then
	echo "with-hosts: not root: no test hosts (network namespaces need root)" >&2
	exec "$@"
fi
for c in ip unshare /usr/bin/python3 ssh ssh-keygen /usr/sbin/sshd; do
	command -v "$c" >/dev/null 2>&1 || { echo "with-hosts: $c not found (make deps)" >&2; exit 1; }
done

n=${VMOPS_TEST_HOSTS:-3}
bindir=${VMOPS_BIN_DIR:-$top/bin}
dir=$(mktemp -d /tmp/vmops-hosts.XXXXXX)
chmod 700 "$dir"
id=""
br=""

cleanup() {
	rc=$?
	trap - EXIT INT TERM
	for i in $(seq 1 "$n"); do
		h="$dir/h$i"
		[ -s "$h/init.pid" ] && kill -KILL "$(cat "$h/init.pid")" 2>/dev/null || true
		[ -s "$h/unshare.pid" ] && { kill -KILL "$(cat "$h/unshare.pid")" 2>/dev/null || true; }
		[ -n "$id" ] && ip netns del "vmops-$id-h$i" 2>/dev/null || true
	done
	[ -n "$br" ] && ip link del "$br" 2>/dev/null || true
	# Control masters of the run (their hosts are gone: they exit by themselves).
	for s in "$dir"/ctl/*; do
		[ -S "$s" ] && ssh -F "$dir/ssh_config" -o ControlPath="$s" -O exit x >/dev/null 2>&1 || true
	done
	rm -rf --one-file-system "$dir"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A free /24 of 198.18.0.0/15 and names nobody uses.
x=$(( $$ % 250 + 2 ))
tries=0
while ip -o -4 addr show | grep -q " 198\.18\.$x\." || ip netns list | grep -q "^vmops-$x-"; do
	x=$(( x % 250 + 2 )); tries=$((tries + 1))
	[ $tries -lt 250 ] || { echo "with-hosts: no free subnet in 198.18.0.0/16" >&2; exit 1; }
done
id=$x
br="vmopsbr$id"
ip link add "$br" type bridge
ip addr add "198.18.$id.1/24" dev "$br"
ip link set "$br" up

ssh-keygen -q -t ed25519 -N '' -C vmops-test-client -f "$dir/id_ed25519"
cp "$dir/id_ed25519.pub" "$dir/authorized_keys"
mkdir -p "$dir/ctl" /run/sshd
chmod 700 "$dir/ctl"
: >"$dir/known_hosts"

for i in $(seq 1 "$n"); do
	ns="vmops-$id-h$i"
	h="$dir/h$i"
	addr="198.18.$id.$((10 + i))"
	hid="vmops-test-h$i-$id"
	mkdir -p "$h"
	ip netns add "$ns"
	ip link add "vmv$id-$i" type veth peer name "vmp$id-$i"
	ip link set "vmp$id-$i" netns "$ns"
	ip -n "$ns" link set "vmp$id-$i" name eth0
	ip link set "vmv$id-$i" master "$br" up
	ip -n "$ns" addr add "$addr/24" dev eth0
	ip -n "$ns" link set lo up
	ip -n "$ns" link set eth0 up
	ssh-keygen -q -t ed25519 -N '' -C "$hid" -f "$h/ssh_host_ed25519_key"
	echo "$addr $(cut -d' ' -f1,2 "$h/ssh_host_ed25519_key.pub")" >>"$dir/known_hosts"
	cat >"$h/sshd_config" <<-CFG
	ListenAddress $addr:22
	HostKey $h/ssh_host_ed25519_key
	PidFile none
	AuthorizedKeysFile $dir/authorized_keys
	PermitRootLogin prohibit-password
	PubkeyAuthentication yes
	PasswordAuthentication no
	KbdInteractiveAuthentication no
	UsePAM no
	StrictModes no
	X11Forwarding no
	PrintMotd no
	PrintLastLog no
	AllowTcpForwarding no
	AllowStreamLocalForwarding local
	PermitTunnel no
	MaxSessions 64
	MaxStartups 64
	LogLevel ERROR
	SetEnv VMOPS_HOST_ID=$hid HOME=$h PATH=$bindir:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
	CFG
	/usr/sbin/sshd -t -f "$h/sshd_config"
	echo "$ns" >"$h/netns"
	echo "$addr" >"$h/addr"
	echo "$hid" >"$h/host_id"
	ip netns exec "$ns" unshare --pid --fork --mount-proc \
		/usr/bin/python3 "$here/init.py" "$h/sshd_config" "$h/sshd.log" </dev/null >"$h/init.log" 2>&1 &
	echo $! >"$h/unshare.pid"
	export "VMOPS_TEST_HOST${i}_ADDR=$addr" "VMOPS_TEST_HOST${i}_ID=$hid"
done

cat >"$dir/ssh_config" <<CFG
Host *
	User root
	IdentityFile $dir/id_ed25519
	IdentitiesOnly yes
	UserKnownHostsFile $dir/known_hosts
	GlobalKnownHostsFile /dev/null
	StrictHostKeyChecking yes
	CheckHostIP no
	LogLevel ERROR
CFG

# Each host's PID 1 (its pid here), and its sshd answering.
for i in $(seq 1 "$n"); do
	h="$dir/h$i"
	t=0
	until p=$(cat "/proc/$(cat "$h/unshare.pid")/task/$(cat "$h/unshare.pid")/children" 2>/dev/null) && [ -n "$p" ]; do
		t=$((t + 1)); [ $t -lt 100 ] || { echo "with-hosts: host $i did not start" >&2; cat "$h/init.log" >&2; exit 1; }
		sleep 0.1
	done
	p=${p%% *}
	echo "$p" >"$h/init.pid"
	t=0
	until ssh -F "$dir/ssh_config" -o BatchMode=yes -o ConnectTimeout=5 "$(cat "$h/addr")" true 2>"$h/probe.err"; do
		t=$((t + 1)); [ $t -lt 50 ] || { echo "with-hosts: sshd of host $i does not answer:" >&2; cat "$h/probe.err" "$h/sshd.log" >&2; exit 1; }
		sleep 0.2
	done
done

export VMOPS_TEST_HOSTS_DIR="$dir" VMOPS_TEST_HOSTS="$n"
export VMOPS_TEST_HOSTCTL="$here/hostctl.sh"
export VMOPS_SSH_CONFIG="$dir/ssh_config" VMOPS_SSH_DIR="$dir/ctl"
echo "with-hosts: $n hosts on 198.18.$id.0/24 ($dir)" >&2
set +e
"$@"
