#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, to test the pipeline's SLURM profile:
#
#     workflow/slurm/local_cluster.sh                 # start it (or reuse a running one) and wait; Ctrl-C stops it
#     workflow/slurm/local_cluster.sh CMD [ARGS...]   # run CMD with the cluster up, then stop what was started
#
# As root, on a fresh Debian 12 machine: installs SLURM 22.05 (slurmctld, slurmd, slurmdbd), munge and
# MariaDB from Debian's packages, configures a cluster "mwnet-local" with one node (this host, all its
# cores, 2 stand-in GPUs (GRES backed by /dev/null and /dev/zero) so that jobs asking for GPUs schedule as on a GPU node;
# the jobs themselves run on the CPU) and accounting through slurmdbd (so `sacct` works, which the
# Snakemake executor plugin reads), starts the daemons, and waits until `sinfo` shows the node idle.
# On exit it stops the daemons it started, by process id. A cluster that already answers is reused
# and left running. Logs: /var/log/slurm-local/.
set -euo pipefail

CLUSTER=mwnet-local
ACCOUNT=mwnet-local
PARTITION=local
LOGS=/var/log/slurm-local
HOST="$(hostname -s)"
STARTED=()  # pids of the daemons this call started

log() { echo "local_cluster: $*" >&2; }

install_packages() {
  local need=()
  for bin in slurmctld slurmd slurmdbd munged mariadbd sacct; do
    command -v "$bin" >/dev/null || need=(slurm-wlm slurmdbd munge mariadb-server)
  done
  if [ "${#need[@]}" -gt 0 ]; then
    log "installing ${need[*]} (Debian packages)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
}

write_config() {
  local cpus mem
  cpus="$(nproc)"
  mem="$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 2048 ))"  # leave 2 GiB to the system
  mkdir -p /etc/slurm "$LOGS" /var/spool/slurmctld /var/spool/slurmd /run/munge /run/mysqld
  chown munge:munge /run/munge
  chown mysql:mysql /run/mysqld
  cat > /etc/slurm/slurm.conf <<EOF
# Written by workflow/slurm/local_cluster.sh: a one-node test cluster.
ClusterName=$CLUSTER
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=10
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageEnforce=associations
AccountingStorageTRES=gres/gpu
JobCompType=jobcomp/none
NodeName=$HOST CPUs=$cpus RealMemory=$mem Gres=gpu:2 State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
  cat > /etc/slurm/gres.conf <<EOF
# Stand-in GPUs: SLURM needs a device file per GPU; /dev/null and /dev/zero take their place (nothing
# is bound: TaskPlugin=task/none). Jobs asking for --gpus schedule here and run on the CPU.
AutoDetect=off
NodeName=$HOST Name=gpu File=/dev/null
NodeName=$HOST Name=gpu File=/dev/zero
EOF
  cat > /etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=/run/slurmdbd.pid
LogFile=$LOGS/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=slurm-local
EOF
  chmod 600 /etc/slurm/slurmdbd.conf
  [ -s /etc/munge/munge.key ] || { dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none;
                                  chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local limit="$1" what="$2"; shift 2
  for _ in $(seq 1 "$limit"); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 1
  done
  log "gave up waiting for $what after ${limit}s; see $LOGS"
  return 1
}

start_daemon() {  # start_daemon NAME PIDFILE COMMAND...  (daemonises itself and writes PIDFILE)
  local name="$1" pidfile="$2"; shift 2
  rm -f "$pidfile"
  "$@"
  wait_for 30 "$name pid file" test -s "$pidfile"
  STARTED+=("$(cat "$pidfile")")
  log "started $name (pid ${STARTED[-1]})"
}

stop_started() {
  local pid
  for ((i=${#STARTED[@]}-1; i>=0; i--)); do
    pid="${STARTED[i]}"
    if kill "$pid" 2>/dev/null; then
      for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      kill -9 "$pid" 2>/dev/null || true
      log "stopped pid $pid"
    fi
  done
}

node_idle() { sinfo -h -N -o '%T' 2>/dev/null | grep -qx idle; }
db_up() { mariadb -u root -e 'select 1' >/dev/null 2>&1; }

start_cluster() {
  install_packages
  write_config
  pgrep -x munged >/dev/null || start_daemon munged /run/munge/munged.pid runuser -u munge -- /usr/sbin/munged
  if ! db_up; then
    runuser -u mysql -- /usr/sbin/mariadbd --datadir=/var/lib/mysql --socket=/run/mysqld/mysqld.sock \
      --pid-file=/run/mysqld/mysqld.pid --skip-networking=0 --bind-address=127.0.0.1 \
      --log-error="$LOGS/mariadb.log" >>"$LOGS/mariadb.log" 2>&1 &
    wait_for 60 "MariaDB" db_up
    STARTED+=("$(cat /run/mysqld/mysqld.pid)")
    log "started mariadbd (pid ${STARTED[-1]})"
  fi
  mariadb -u root <<'EOF'
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm-local';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
  pgrep -x slurmdbd >/dev/null || start_daemon slurmdbd /run/slurmdbd.pid /usr/sbin/slurmdbd
  wait_for 60 "slurmdbd" sacctmgr -n list cluster
  sacctmgr -i -Q add cluster "$CLUSTER" >/dev/null 2>&1 || true
  sacctmgr -i -Q add account "$ACCOUNT" Cluster="$CLUSTER" Description="mwnet local test" >/dev/null 2>&1 || true
  sacctmgr -i -Q add user root Account="$ACCOUNT" Cluster="$CLUSTER" >/dev/null 2>&1 || true
  pgrep -x slurmctld >/dev/null || start_daemon slurmctld /run/slurmctld.pid /usr/sbin/slurmctld
  pgrep -x slurmd >/dev/null || start_daemon slurmd /run/slurmd.pid /usr/sbin/slurmd
  wait_for 90 "node $HOST idle (sinfo)" node_idle
  log "cluster $CLUSTER up: $(sinfo -h -N -o '%N %T %c cpus %m MB %G')"
}

write_local_profile() {
  # The repo's SLURM profile with workflow/slurm/local-overrides.yaml merged in (a key there replaces
  # the same key of the profile; mappings merge), for: snakemake --profile .snakemake/slurm-local ...
  local repo py
  repo="$(cd "$(dirname "$0")/../.." && pwd)"
  py="${PYTHON:-$repo/.venv/bin/python}"
  [ -x "$py" ] || py=python3
  mkdir -p "$repo/.snakemake/slurm-local"
  "$py" - "$repo" <<'PYEOF'
import sys, yaml
from pathlib import Path
repo = Path(sys.argv[1])
def merge(a, b):
    return {**a, **{k: merge(a[k], v) if isinstance(v, dict) and isinstance(a.get(k), dict) else v
                    for k, v in b.items()}}
base = yaml.safe_load((repo / "workflow/profiles/slurm/config.yaml").read_text())
over = yaml.safe_load((repo / "workflow/slurm/local-overrides.yaml").read_text())
out = repo / ".snakemake/slurm-local/config.yaml"
out.write_text("# generated by workflow/slurm/local_cluster.sh: workflow/profiles/slurm/config.yaml + "
               "workflow/slurm/local-overrides.yaml\n" + yaml.safe_dump(merge(base, over), sort_keys=False))
PYEOF
  log "profile for this cluster: .snakemake/slurm-local/ (in $repo)"
}

if [ "$(id -u)" -ne 0 ]; then log "run as root"; exit 2; fi
write_local_profile
if node_idle || sinfo -h >/dev/null 2>&1 && squeue -h >/dev/null 2>&1; then
  log "reusing the running cluster: $(sinfo -h -N -o '%N %T')"
else
  trap stop_started EXIT
  trap 'exit 130' INT TERM
  start_cluster
fi
if [ "$#" -gt 0 ]; then
  "$@"
elif [ "${#STARTED[@]}" -gt 0 ]; then
  log "up; Ctrl-C (or kill $$) stops it"
  while true; do sleep 3600 & wait $!; done  # wait: a signal runs the trap at once
fi
