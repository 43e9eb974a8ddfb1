#!/usr/bin/env bash
# Runs an sbatch script on a throwaway single-node Slurm cluster and waits for it.
#
# usage: tests/slurm/run.sh JOB.sbatch [TIMEOUT_SECONDS]
#
# Starts its own munged (a fresh key, a private socket) and a slurmctld + slurmd pair for this host
# (`hostname -s`, the CPUs `slurmd -C` reports, no cgroups, no accounting database, free ports), all
# state in a temporary folder; submits the script, waits until every array task has ended (squeue,
# then `scontrol show job` for each task's state and exit code), and fails unless every task
# COMPLETED with exit code 0. The daemons are stopped on every way out. Needs root (slurmd) and
# Debian's slurm-wlm and munge (`.ci/run` installs them). The job's output files are where its
# `#SBATCH --output` puts them.
set -euo pipefail

job=${1:?usage: tests/slurm/run.sh JOB.sbatch [TIMEOUT_SECONDS]}
timeout_s=${2:-600}
[[ -f $job ]] || { echo "no such script: $job" >&2; exit 2; }
for tool in munged slurmctld slurmd sbatch squeue scontrol sinfo; do
    command -v "$tool" >/dev/null || { echo "$tool is not installed (apt-get install slurm-wlm munge)" >&2; exit 2; }
done

dir=$(mktemp -d /tmp/duoseg-slurm.XXXXXX)
# others may pass through (munged asks that of its socket's folder) but not list it
chmod 711 "$dir"
mkdir -p "$dir/state" "$dir/spool"
ok=0
cleanup() {
    set +e
    if [[ -f $dir/slurm.conf ]]; then
        SLURM_CONF=$dir/slurm.conf scontrol shutdown >/dev/null 2>&1
    fi
    for pidfile in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munged.pid"; do
        [[ -f $pidfile ]] || continue
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null
    done
    if [[ $ok != 1 ]]; then
        for log in munged slurmctld slurmd; do
            [[ -f $dir/$log.log ]] && { echo "--- $log.log (last lines)" >&2; tail -n 30 "$dir/$log.log" >&2; }
        done
    fi
    rm -rf "$dir"
}
trap cleanup EXIT

# munge: a key of its own and a private socket, so nothing of the host's munge is used or changed
mungekey --create --keyfile="$dir/munge.key"
chmod 600 "$dir/munge.key"
munged --force --key-file="$dir/munge.key" --socket="$dir/munge.socket" \
    --pid-file="$dir/munged.pid" --log-file="$dir/munged.log" --seed-file="$dir/munged.seed"

# two free TCP ports for slurmctld and slurmd
free_port() {
    local p
    for _ in $(seq 100); do
        p=$((20000 + RANDOM % 30000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
    echo "no free port found" >&2
    return 1
}
ctld_port=$(free_port)
slurmd_port=$(free_port)
while [[ $slurmd_port == "$ctld_port" ]]; do slurmd_port=$(free_port); done

host=$(uname -n)  # `hostname -s`, without needing the hostname package
host=${host%%.*}
cpus=$(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' | head -n 1)
cat >"$dir/slurm.conf" <<EOF
ClusterName=duoseg-test
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MinJobAge=600
NodeName=$host NodeAddr=127.0.0.1 CPUs=${cpus:-1} State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$dir/slurm.conf

slurmctld -f "$SLURM_CONF" -i
slurmd -f "$SLURM_CONF" -N "$host"

deadline=$((SECONDS + 60))
until sinfo -h -n "$host" -o %T 2>/dev/null | grep -qx idle; do
    if ((SECONDS > deadline)); then
        echo "the node did not come up: $(sinfo -h -N -o '%N %T %E' 2>&1)" >&2
        exit 1
    fi
    sleep 1
done

id=$(sbatch --parsable "$job")
id=${id%%;*}
echo "submitted job $id ($job)"

deadline=$((SECONDS + timeout_s))
while [[ -n $(squeue -h -j "$id" -o %i 2>/dev/null) ]]; do
    if ((SECONDS > deadline)); then
        echo "job $id still queued or running after ${timeout_s}s:" >&2
        squeue -j "$id" >&2
        scancel "$id"
        exit 1
    fi
    sleep 2
done

# each array task's end, from slurmctld's memory of it (kept MinJobAge seconds)
tasks=$(scontrol -o show job "$id")
[[ -n $tasks ]] || { echo "slurmctld has no record of job $id" >&2; exit 1; }
failed=0
while read -r line; do
    task=$(grep -o 'ArrayTaskId=[^ ]*' <<<"$line")
    state=$(grep -o 'JobState=[^ ]*' <<<"$line")
    code=$(grep -o ' ExitCode=[^ ]*' <<<"$line")
    echo "job $id $task $state$code"
    if [[ $state != JobState=COMPLETED || $code != " ExitCode=0:0" ]]; then
        failed=1
    fi
done <<<"$tasks"
if ((failed)); then
    echo "job $id: not every array task completed" >&2
    exit 1
fi
ok=1
