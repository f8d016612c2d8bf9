# A password with spaces and both quotes is never shown: not on stdout or
# stderr of any program (successful runs, -v, --json, an unreachable
# server, malformed connection strings, the URI form), not in the audit log.
# Each run's output is searched for pieces of it; the transcript shows only
# what was searched and what was found.
export VMOPS_HOST_ID=cli-host-1
CI="$DB password='s3 cr\"et \\'x'"
BAD="host=/nonexistent-vmops port=1 password='s3 cr\"et \\'x'"
MALFORMED="host=/nonexistent-vmops password=s3 cr\"et 'x"
URI="postgresql://bob:s3%20cr%22et%20%27x@/x?host=/nonexistent-vmops&port=1"
leaks=0
probe() {
	name=$1 label=$2
	db=$(eval echo "\$$2")
	shift 2
	"$name" --db "$db" "$@" >"$_tmp/p.out" 2>"$_tmp/p.err"
	_rc=$?
	for f in "$_tmp/p.out" "$_tmp/p.err"; do
		if grep -q -e 'cr"et' -e 's3 cr' -e 'cr%22et' -e "et 'x" -e '%27x' "$f"; then
			leaks=$((leaks + 1))
			echo "LEAK in $(basename "$f") of: $name --db \$$label $*"
			cat "$f"
		fi
	done
	echo "$name --db \$$label $*: exit $_rc"
}
probe vm-fleet CI -v init
probe vm-fleet CI -v worker add w1 --memory 1G --vcpus 1
probe vm-fleet CI -v register --sandbox sb1 --org acme --worker w1 --memory 256M --vcpus 1 --pid 1
probe vm-fleet CI --json status
probe vm-fleet CI -v worker set-state w1 draining
probe vmm-reap CI -v --json
probe usage-parity CI -v --fix
probe ghost-reap CI -v --worker w1
probe vm-migrate CI -v sb1 --dry-run
probe vm-migrate CI -v --recover --json
probe vm-drain CI -v w1 --dry-run
probe snapshot-prep CI -v prepare --sandbox nope
for d in BAD MALFORMED URI; do
	probe vm-fleet $d -v status
	probe vmm-reap $d -v
	probe usage-parity $d -v
	probe vm-migrate $d -v --recover
	probe vm-drain $d -v w1 --dry-run
done
probe ghost-reap BAD -v --worker w1
probe ghost-reap MALFORMED -v --worker w1
probe snapshot-prep MALFORMED -v prepare --sandbox nope
echo "runs that showed a piece of the password: $leaks"
sql "SELECT count(*) > 0 FROM audit_log"
sql "SELECT count(*) FROM audit_log a WHERE a::text ~ '(cr\"et|s3 cr|et ''x)'"
