#!/bin/sh
# `make demo`: the main job end to end on real parts, in a throwaway
# PostgreSQL cluster that is removed afterwards.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
if [ -z "${VMOPS_TEST_PGHOST:-}" ]; then
	exec tests/pgcluster.sh "$0" "$@"
fi
PATH="$top/bin:$PATH"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { echo "\$ $*"; "$@"; }

step "a throwaway PostgreSQL at $PGHOST; the fleet schema"
show vm-fleet init
step "two workers"
show vm-fleet worker add worker-a --memory 4G --vcpus 4
show vm-fleet worker add worker-b --memory 4G --vcpus 4
step "a VM that another system launched, registered with its reservation and open billing"
show vm-fleet register --sandbox demo-1 --org acme --worker worker-a --memory 1G --vcpus 1
step "admission is the database's job: worker-a cannot take 4 GiB more"
show vm-fleet register --sandbox demo-2 --org acme --worker worker-a --memory 4G --vcpus 1 || echo "(refused, exit $?)"
step "the inventory"
show vm-fleet worker list
show vm-fleet list
show vm-fleet status
