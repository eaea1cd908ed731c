#!/usr/bin/env bash
# A real Slurm cluster on one machine for berth's tests and demo: munge, slurmctld and N
# slurmd nodes (n1 ... nN, three unless -n says), each node in its own network and UTS
# namespace with its own spool and TmpFS, joined by a bridge; the berth SPANK plugin in
# plugstack.conf. The nodes share the machine's filesystem: /tmp is one directory for all of
# them, as a home on NFS is on a real cluster.
#
#   cluster.sh start [-n N] [-c] DIR PLUGIN.so [ARG...]   # ARGs go to the plugin in plugstack.conf;
#                                             # prints `export SLURM_CONF=DIR/slurm.conf`
#                                             # -c: PrologFlags=Contain (an extern step per job)
#   cluster.sh contain DIR on|off    # the running cluster with or without PrologFlags=Contain
#   cluster.sh stop DIR              # stops every daemon, removes namespaces and bridge
#
# Run as root. Jobs are submitted by any user with SLURM_CONF=DIR/slurm.conf.
set -euo pipefail
usage="usage: cluster.sh start [-n NODES] [-c] DIR PLUGIN.so [ARG...] | contain DIR on|off | stop DIR"
cmd=${1:?$usage}
shift
count=3
contain=off
while true; do
  case "${1:-}" in
    -n) count=${2:?$usage}; shift 2 ;;
    -c) contain=on; shift ;;
    *) break ;;
  esac
done
[[ "$count" =~ ^[1-9][0-9]?$ ]] || { echo "cluster.sh: -n takes a node count from 1 to 99" >&2; exit 2; }
dir=${1:?$usage}
nodes=()
for i in $(seq "$count"); do nodes+=("n$i"); done
bridge=berthbr0
net=10.197.0            # the project's own test hosts; only ever on this bridge
ctl_port=16817

# The machine has one test cluster at a time (fixed bridge and namespace names): the last
# started one is recorded here, so a new start first stops a leftover one.
registry=/run/berth-test-cluster.dir

stop() {
  local dir=$1
  # Every node namespace, whatever the count the cluster was started with.
  local nodes
  mapfile -t nodes < <(ip netns list 2>/dev/null | awk '$1 ~ /^berth-n[0-9]+$/ {sub("berth-", "", $1); print $1}')
  for n in "${nodes[@]}"; do
    for pid in $(ip netns pids "berth-$n" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
  done
  for pidfile in "$dir"/run/*.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile"); kill "$pid" 2>/dev/null || true
  done
  sleep 0.3
  for pidfile in "$dir"/run/*.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(cat "$pidfile"); kill -9 "$pid" 2>/dev/null || true; rm -f "$pidfile"
  done
  for n in "${nodes[@]}"; do
    ip netns del "berth-$n" 2>/dev/null || true
    # A process left in a node's namespace keeps it alive: remove the link pair regardless.
    ip link del "veth-$n" 2>/dev/null || true
  done
  ip link del "$bridge" 2>/dev/null || true
}

if [ "$cmd" = stop ]; then stop "$dir"; rm -f "$registry"; exit 0; fi
if [ "$cmd" = contain ]; then
  # Jobs allocated from now on get (or no longer get) an extern step on each of their nodes.
  want=${2:?$usage}
  grep -v '^PrologFlags=' "$dir/slurm.conf" > "$dir/slurm.conf.new"
  [ "$want" = on ] && echo "PrologFlags=Contain" >> "$dir/slurm.conf.new"
  chmod 0644 "$dir/slurm.conf.new"
  mv "$dir/slurm.conf.new" "$dir/slurm.conf"
  export SLURM_CONF="$dir/slurm.conf"
  scontrol reconfigure
  # The nodes take it a moment later: wait until a job on all of them has (or has no) extern
  # steps (the nodes share one kernel: their slurmstepds are all seen from here).
  all=$(sinfo -h -o %D | head -n 1)
  expect=0; [ "$want" = on ] && expect=$all
  for _ in $(seq 40); do
    got=$(salloc -Q -I60 -N"$all" sh -c 'pgrep -cf "^slurmstepd: \[$SLURM_JOB_ID\.extern\]"' 2>/dev/null || true)
    [ "$got" = "$expect" ] && exit 0
    sleep 0.5
  done
  echo "cluster.sh: the nodes did not take PrologFlags=Contain $want (a job had $got extern steps, not $expect)" >&2
  exit 1
fi
[ "$cmd" = start ] || { echo "cluster.sh: unknown command $cmd" >&2; exit 2; }
plugin=${2:?$usage}
plugin_args=("${@:3}")
[ "$(id -u)" = 0 ] || { echo "cluster.sh: run as root" >&2; exit 1; }
[ -f "$registry" ] && stop "$(cat "$registry")"
stop "$dir"
echo "$dir" > "$registry"
rm -rf "$dir"/state "$dir"/spool "$dir"/log
mkdir -p "$dir"/{run,log,state,munge}
chmod 0755 "$dir" "$dir/run" "$dir/log"

# munge with its own key and socket.
dd if=/dev/urandom of="$dir/munge/munge.key" bs=1024 count=1 status=none
chmod 0400 "$dir/munge/munge.key"; chmod 0755 "$dir/munge"
munged --force --key-file="$dir/munge/munge.key" --socket="$dir/munge/munge.sock" \
  --pid-file="$dir/run/munged.pid" --log-file="$dir/log/munged.log" --seed-file="$dir/munge/seed"

# The bridge and one network namespace per node.
ip link add "$bridge" type bridge
ip addr add "$net.1/24" dev "$bridge"
ip link set "$bridge" up
i=10
for n in "${nodes[@]}"; do
  i=$((i + 1))
  ip netns add "berth-$n"
  ip link add "veth-$n" type veth peer name eth0 netns "berth-$n"
  ip link set "veth-$n" master "$bridge" up
  ip -n "berth-$n" addr add "$net.$i/24" dev eth0
  ip -n "berth-$n" link set eth0 up
  ip -n "berth-$n" link set lo up
  mkdir -p "$dir/spool/$n" "$dir/tmp/$n"
  chmod 1777 "$dir/tmp/$n"
done

host=$(hostname)
cat > "$dir/plugstack.conf" <<PLUG
required $plugin ${plugin_args[*]}
PLUG
cat > "$dir/slurm.conf" <<CONF
ClusterName=berth
SlurmctldHost=$host($net.1)
SlurmctldPort=$ctl_port
SlurmdPort=16818
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.sock
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd-%n.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
# berth logs its phases at Slurm's verbose level: the tests read them here.
SlurmdDebug=verbose
TmpFS=$dir/tmp/%n
ProctrackType=proctrack/linuxproc
$([ "$contain" = on ] && echo "PrologFlags=Contain")
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
MpiDefault=none
PlugStackConfig=$dir/plugstack.conf
ReturnToService=2
SlurmdParameters=config_overrides
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=5
$(for i in $(seq "$count"); do echo "NodeName=n$i NodeAddr=$net.$((10 + i)) CPUs=8 State=UNKNOWN"; done)
PartitionName=debug Nodes=n[1-$count] Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
chmod 0644 "$dir/slurm.conf" "$dir/plugstack.conf"

slurmctld -f "$dir/slurm.conf" -c
for n in "${nodes[@]}"; do
  # nsenter --net (not ip netns exec, which remounts /sys); a UTS namespace for the hostname.
  nsenter --net="/run/netns/berth-$n" unshare --uts sh -c "hostname $n; exec slurmd -f '$dir/slurm.conf' -N $n"
done
export SLURM_CONF="$dir/slurm.conf"
for _ in $(seq 300); do
  idle=$(sinfo -h -o '%T %D' 2>/dev/null | awk '$1=="idle"{print $2}')
  [ "${idle:-0}" = "$count" ] && break
  sleep 0.1
done
[ "${idle:-0}" = "$count" ] || { echo "cluster.sh: nodes did not come up:" >&2; sinfo >&2 || true; tail -n 5 "$dir"/log/*.log >&2; exit 1; }
echo "export SLURM_CONF=$dir/slurm.conf"
