#!/usr/bin/env bash
# Bring up a real single-node SLURM on this machine, for tests/test_slurm.py or by hand:
#   sudo bash tests/slurm/bringup.sh          # installs Debian's slurm-wlm and munge if missing
#   bash tests/slurm/bringup.sh --stop        # stops the daemons again
# The node claims 8 CPUs, 64 GB and 4 count-only GPUs (gres on /dev/tty0-3), whatever the machine
# has, so that GPU requests schedule and two training jobs can run at once. No accounting: use
# squeue for job status. Finished jobs are written to $SLURM_JOBCOMP (one line per job, with its
# start and end time), which is how the test checks that every job went through sbatch.
# PID 1 is not systemd here, so munged, slurmctld and slurmd are started directly.
set -euo pipefail
# A failing step names itself (quiet installs and daemons would otherwise fail without a word).
trap 'echo "bringup.sh: line $LINENO: \"$BASH_COMMAND\" failed (exit $?)" >&2' ERR

CONF_DIR=/etc/slurm
STATE=/var/spool/slurmctld
LOGS=/var/log/slurm
export SLURM_JOBCOMP=${SLURM_JOBCOMP:-$LOGS/jobcomp.log}

stop() {
  pkill -x slurmd 2>/dev/null || true
  pkill -x slurmctld 2>/dev/null || true
  pkill -x munged 2>/dev/null || true
}
if [ "${1:-}" = "--stop" ]; then stop; exit 0; fi

if [ "$(id -u)" != 0 ]; then
  echo "bringup.sh: needs root (to install packages and start daemons)" >&2; exit 2
fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi

stop
host=$(hostname -s)
mkdir -p "$CONF_DIR" "$STATE" /var/spool/slurmd "$LOGS" /run/munge /etc/munge /var/lib/munge /var/log/munge
chown -R munge:munge /run/munge /etc/munge /var/lib/munge /var/log/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
fi

cat > "$CONF_DIR/slurm.conf" <<CONF
ClusterName=cnnvit-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
SlurmdParameters=config_overrides
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$SLURM_JOBCOMP
MinJobAge=600
KillWait=5
OverTimeLimit=0
InactiveLimit=0
MpiDefault=none
NodeName=$host CPUs=8 RealMemory=64000 Gres=gpu:4 State=UNKNOWN
PartitionName=main Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
cat > "$CONF_DIR/gres.conf" <<CONF
NodeName=$host Name=gpu File=/dev/tty[0-3]
CONF

su -s /bin/sh munge -c /usr/sbin/munged
slurmctld
slurmd
for _ in $(seq 1 60); do
  if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
    echo "SLURM is up: $(sinfo -h -o '%P %D %T %c CPUs %G')"
    exit 0
  fi
  sleep 1
done
echo "bringup.sh: the node did not come up; see $LOGS/slurmctld.log and $LOGS/slurmd.log" >&2
sinfo >&2 || true
exit 1
