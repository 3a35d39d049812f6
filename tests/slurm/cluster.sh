#!/usr/bin/env bash
# tests/slurm/cluster.sh — a throw-away one-node SLURM cluster for testing the
# workflow's `profiles/slurm` profile (Debian 12, slurm-wlm 22.05, run as root).
#
#   tests/slurm/cluster.sh start    install (apt-get) if needed, configure, start, wait until idle
#   tests/slurm/cluster.sh stop     cancel our jobs, stop ONLY the daemons this script started
#   tests/slurm/cluster.sh status   show our daemons, sinfo, squeue (exit 0 = up, 3 = down)
#   tests/slurm/cluster.sh env      print `export SLURM_CONF=...` (eval "$(cluster.sh env)")
#   tests/slurm/cluster.sh clean    stop, then delete the scratch directory
#
# Everything (config, state, logs, pid files, munge key+socket, database) lives in
# $SLURM_TEST_DIR. Ports are private (not SLURM's defaults), munged runs on its own
# socket, so a system-wide SLURM/munge installation is not touched. `start` and
# `stop` are idempotent; `stop` only signals PIDs from our own pid files, after
# checking that the process has the expected name. State (job ids, accounting
# database) survives stop/start; `clean` wipes it.
#
# Cluster: node `$(hostname -s)` with CPUs=$(nproc), RealMemory=80% of MemAvailable,
# 2 fake GPUs (gres.conf File=/dev/null and /dev/zero; typed `gpu:h100:2` by
# default, so both `--gpus=1` and `--gpus=h100:1` work), partitions `gpu` (default)
# and `cpu`, both on that node.
#
# Accounting (SLURM_TEST_ACCOUNTING):
#   slurmdbd (default)  private MariaDB + slurmdbd: `sacct` works and shows
#                       AllocTRES=...gres/gpu=1 for GPU jobs, and Comment=rule_<rule>
#                       (the plugin's --comment; AccountingStoreFlags=job_comment).
#                       Costs: apt-get of slurmdbd+mariadb-server ~15 s once; first
#                       start ~10 s (DB init + tables), later starts ~3 s, stop ~2 s.
#   none                no database: `sacct` says "accounting storage is disabled";
#                       use `scontrol -d show job ID` (JOB_GRES=gpu:...) while
#                       MinJobAge=600 keeps the job, or the jobcomp file.
#                       Start takes <1 s.
# In both modes every finished job is appended to $SLURM_TEST_DIR/log/jobcomp.txt
# (jobcomp/filetxt), and MinJobAge=600 keeps finished jobs visible to squeue for
# 10 minutes (the profile polls with squeue).
#
# Environment knobs (defaults in brackets):
#   SLURM_TEST_DIR [/tmp/quantstudy-slurm]  SLURM_TEST_ACCOUNTING [slurmdbd]
#   SLURM_TEST_GPU_TYPE [h100] (empty: untyped gpu:2)   SLURM_TEST_GPUS [2] (1..5)
#   SLURM_TEST_PORT_BASE [16817] (slurmctld, +1 slurmd, +2 mariadb, +3 slurmdbd)
#   SLURM_TEST_MEM_MB [80% of MemAvailable]  SLURM_TEST_CPUS [nproc]  (may exceed
#     the hardware: SlurmdParameters=config_overrides; memory is not enforced)
#   SLURM_TEST_TIMEOUT [60] (seconds to wait for each daemon / the node)
#   SLURM_TEST_LINK_ETC [1]: symlink /etc/slurm/slurm.conf -> our config (removed
#     again by `stop`); `start` fails if that file exists and is not ours. This is
#     REQUIRED for snakemake: the jobstep plugin strips SLURM_CONF from the env of
#     the `srun` it runs inside each job, so that srun reads /etc/slurm/slurm.conf.
#     Hence one test cluster per machine at a time.
set -euo pipefail

D=${SLURM_TEST_DIR:-/tmp/quantstudy-slurm}
ACCOUNTING=${SLURM_TEST_ACCOUNTING:-slurmdbd}
GPU_TYPE=${SLURM_TEST_GPU_TYPE-h100}
NGPUS=${SLURM_TEST_GPUS:-2}
PORT_BASE=${SLURM_TEST_PORT_BASE:-16817}
TIMEOUT=${SLURM_TEST_TIMEOUT:-60}
LINK_ETC=${SLURM_TEST_LINK_ETC:-1}
CLUSTER=quantstudy
HOST=$(hostname -s)
ETC_LINK=/etc/slurm/slurm.conf

CTLD_PORT=$PORT_BASE
SLURMD_PORT=$((PORT_BASE + 1))
DB_PORT=$((PORT_BASE + 2))
DBD_PORT=$((PORT_BASE + 3))

MUNGE_SOCK=$D/munge/munge.socket
DB_SOCK=$D/mysql/mysqld.sock
export SLURM_CONF=$D/etc/slurm.conf

say() { echo "cluster.sh: $*"; }
die() {
    echo "cluster.sh: ERROR: $*" >&2
    [[ ${CMD:-} == start ]] && echo "cluster.sh: ('$0 stop' stops whatever this start got running)" >&2
    exit 1
}

case "$ACCOUNTING" in slurmdbd | none) ;; *) die "SLURM_TEST_ACCOUNTING must be 'slurmdbd' or 'none'" ;; esac
case "$NGPUS" in 1 | 2 | 3 | 4 | 5) ;; *) die "SLURM_TEST_GPUS must be 1..5" ;; esac

# name -> pid file
pidfile() {
    case "$1" in
        munged) echo "$D/munge/munged.pid" ;;
        mariadbd) echo "$D/mysql/mysqld.pid" ;;
        *) echo "$D/run/$1.pid" ;;
    esac
}

# Is PID $1 a live (not zombie) process named $2?
alive() {
    local st
    [[ -r /proc/$1/stat && $(cat "/proc/$1/comm" 2>/dev/null) == "$2" ]] || return 1
    st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ $st != Z && $st != X ]]
}

# Print the PID of our daemon $1 if it is running (pid file + process name match).
ourpid() {
    local f pid
    f=$(pidfile "$1")
    [[ -s $f ]] || return 1
    pid=$(tr -dc 0-9 <"$f")
    [[ -n $pid ]] && alive "$pid" "$1" || return 1
    echo "$pid"
}

wait_for() { # wait_for SECONDS COMMAND... : poll until COMMAND succeeds
    local secs=$1 end
    shift
    end=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < end)) || return 1
        sleep 0.2
    done
}

logtail() { for f in "$@"; do [[ -f $f ]] && { echo "--- tail $f" >&2; tail -n 15 "$f" >&2; }; done; return 0; }

ensure_packages() {
    local need=() cmd
    for cmd in slurmctld slurmd sbatch sinfo munged mungekey; do
        command -v "$cmd" >/dev/null || need=(slurm-wlm munge)
    done
    if [[ $ACCOUNTING == slurmdbd ]]; then
        for cmd in slurmdbd mariadbd mariadb-install-db mariadb; do
            command -v "$cmd" >/dev/null || { need+=(slurmdbd mariadb-server mariadb-client); break; }
        done
    fi
    ((${#need[@]})) || return 0
    [[ $(id -u) == 0 ]] || die "missing ${need[*]} and not root: install them first"
    say "installing ${need[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -qq "${need[@]}" >"$D/log/apt-get.log" 2>&1; then
        apt-get update -qq >>"$D/log/apt-get.log" 2>&1 || true
        apt-get install -y -qq "${need[@]}" >>"$D/log/apt-get.log" 2>&1 ||
            { logtail "$D/log/apt-get.log"; die "apt-get install ${need[*]} failed"; }
    fi
}

start_munge() {
    local pid
    if pid=$(ourpid munged); then say "munged already running (pid $pid)"; return; fi
    mkdir -p "$D/munge"
    chown munge:munge "$D/munge"
    chmod 711 "$D/munge" # munged insists on world-executable socket dir
    if [[ ! -s $D/munge/munge.key ]]; then
        mungekey --create --keyfile="$D/munge/munge.key" >/dev/null
    fi
    chown munge:munge "$D/munge/munge.key"
    chmod 600 "$D/munge/munge.key"
    runuser -u munge -- munged --socket="$MUNGE_SOCK" --key-file="$D/munge/munge.key" \
        --log-file="$D/munge/munged.log" --pid-file="$D/munge/munged.pid" \
        --seed-file="$D/munge/munged.seed" ||
        { logtail "$D/munge/munged.log"; die "munged failed to start"; }
    wait_for 10 bash -c "munge -n -S '$MUNGE_SOCK' | unmunge -S '$MUNGE_SOCK'" ||
        { logtail "$D/munge/munged.log"; die "munge -n | unmunge fails"; }
    say "started munged (pid $(ourpid munged), socket $MUNGE_SOCK)"
}

start_mariadb() {
    local pid
    if pid=$(ourpid mariadbd); then say "mariadbd already running (pid $pid)"; return; fi
    mkdir -p "$D/mysql"
    chown mysql:mysql "$D/mysql"
    if [[ ! -d $D/mysql/data/mysql ]]; then
        mariadb-install-db --no-defaults --datadir="$D/mysql/data" --user=mysql \
            --auth-root-authentication-method=socket --skip-test-db \
            >"$D/log/mariadb-install.log" 2>&1 ||
            { logtail "$D/log/mariadb-install.log"; die "mariadb-install-db failed"; }
    fi
    # mariadbd does not daemonise: detach it ourselves; it writes its own pid file.
    setsid mariadbd --no-defaults --user=mysql --datadir="$D/mysql/data" \
        --socket="$DB_SOCK" --pid-file="$D/mysql/mysqld.pid" \
        --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
        --log-error="$D/log/mariadb.err" --innodb-buffer-pool-size=64M \
        --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1 &
    wait_for "$TIMEOUT" mariadb --no-defaults -S "$DB_SOCK" -u root -e 'select 1' ||
        { logtail "$D/log/mariadb.err"; die "mariadbd did not come up"; }
    mariadb --no-defaults -S "$DB_SOCK" -u root -e "
        CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm-test-only';
        CREATE DATABASE IF NOT EXISTS slurm_acct_db;
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
    say "started mariadbd (pid $(ourpid mariadbd), 127.0.0.1:$DB_PORT)"
}

start_slurmdbd() {
    local pid
    if pid=$(ourpid slurmdbd); then say "slurmdbd already running (pid $pid)"; return; fi
    cat >"$D/etc/slurmdbd.conf" <<EOF
# written by tests/slurm/cluster.sh
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm-test-only
StorageLoc=slurm_acct_db
PidFile=$D/run/slurmdbd.pid
LogFile=$D/log/slurmdbd.log
EOF
    chmod 600 "$D/etc/slurmdbd.conf"
    slurmdbd || { logtail "$D/log/slurmdbd.log"; die "slurmdbd failed to start"; }
    wait_for "$TIMEOUT" timeout 5 sacctmgr -n list cluster ||
        { logtail "$D/log/slurmdbd.log"; die "slurmdbd does not answer sacctmgr"; }
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
    say "started slurmdbd (pid $(ourpid slurmdbd), port $DBD_PORT)"
}

write_slurm_conf() {
    local mem cpus gres devs=(/dev/null /dev/zero /dev/full /dev/random /dev/urandom) i
    mem=${SLURM_TEST_MEM_MB:-$(awk '/^MemAvailable:/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)}
    cpus=${SLURM_TEST_CPUS:-$(nproc)}
    gres="gpu${GPU_TYPE:+:$GPU_TYPE}:$NGPUS"
    {
        echo "# written by tests/slurm/cluster.sh"
        echo "ClusterName=$CLUSTER"
        echo "SlurmctldHost=$HOST"
        echo "SlurmUser=root"
        echo "SlurmdUser=root"
        echo "SlurmctldPort=$CTLD_PORT"
        echo "SlurmdPort=$SLURMD_PORT"
        echo "AuthType=auth/munge"
        echo "CredType=cred/munge"
        echo "AuthInfo=socket=$MUNGE_SOCK"
        echo "StateSaveLocation=$D/state"
        echo "SlurmdSpoolDir=$D/spool"
        echo "SlurmctldPidFile=$D/run/slurmctld.pid"
        echo "SlurmdPidFile=$D/run/slurmd.pid"
        echo "SlurmctldLogFile=$D/log/slurmctld.log"
        echo "SlurmdLogFile=$D/log/slurmd.log"
        echo "ProctrackType=proctrack/linuxproc"
        echo "TaskPlugin=task/none"
        echo "MpiDefault=none"
        echo "SchedulerType=sched/backfill"
        echo "SelectType=select/cons_tres"
        echo "SelectTypeParameters=CR_Core_Memory"
        echo "DefMemPerCPU=1000"
        echo "GresTypes=gpu"
        echo "ReturnToService=2"
        echo "# trust CPUs/RealMemory/Gres below even if they exceed the hardware (fake GPUs)"
        echo "SlurmdParameters=config_overrides"
        echo "# keep finished jobs visible to squeue/scontrol for 10 min (profile polls with squeue)"
        echo "MinJobAge=600"
        echo "JobCompType=jobcomp/filetxt"
        echo "JobCompLoc=$D/log/jobcomp.txt"
        echo "JobAcctGatherType=jobacct_gather/linux"
        if [[ $ACCOUNTING == slurmdbd ]]; then
            echo "AccountingStorageType=accounting_storage/slurmdbd"
            echo "AccountingStorageHost=localhost"
            echo "AccountingStoragePort=$DBD_PORT"
            echo "# for slurmdbd connections this names the munge socket"
            echo "AccountingStoragePass=$MUNGE_SOCK"
            echo "AccountingStorageTRES=gres/gpu"
            echo "# sacct -o Comment shows the plugin's rule_<rule>[_wildcards_...] comment"
            echo "AccountingStoreFlags=job_comment"
        else
            echo "AccountingStorageType=accounting_storage/none"
        fi
        echo "NodeName=$HOST CPUs=$cpus RealMemory=$mem Gres=$gres State=UNKNOWN"
        echo "PartitionName=gpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP"
        echo "PartitionName=cpu Nodes=$HOST Default=NO MaxTime=INFINITE State=UP"
    } >"$D/etc/slurm.conf"
    {
        echo "# written by tests/slurm/cluster.sh: fake GPUs, one existing file each"
        for ((i = 0; i < NGPUS; i++)); do
            echo "NodeName=$HOST Name=gpu${GPU_TYPE:+ Type=$GPU_TYPE} File=${devs[$i]}"
        done
    } >"$D/etc/gres.conf"
    say "wrote $D/etc/slurm.conf (CPUs=$cpus RealMemory=${mem}M Gres=$gres accounting=$ACCOUNTING)"
}

# The nested `srun` that snakemake's slurm-jobstep plugin runs inside each job
# drops every SLURM_* variable except the job id ones, SLURM_CONF included, so it
# reads /etc/slurm/slurm.conf: that file must be our config, or jobs fail with
# "srun: error: Unable to confirm allocation for job N: Invalid job id specified".
link_etc() {
    local cur
    [[ $LINK_ETC == 1 ]] || { say "warning: not linking $ETC_LINK (SLURM_TEST_LINK_ETC=0); snakemake jobs' inner srun reads that file"; return 0; }
    if [[ -L $ETC_LINK ]]; then
        cur=$(readlink "$ETC_LINK")
        [[ $cur == "$SLURM_CONF" ]] && return 0
        if [[ ! -e $cur ]]; then # dangling link, e.g. left by a deleted test dir
            rm -f "$ETC_LINK"
        fi
    fi
    if [[ -e $ETC_LINK || -L $ETC_LINK ]]; then
        die "$ETC_LINK exists and is not ours ($(readlink -f "$ETC_LINK")): another SLURM" \
            "config/test cluster is set up here. snakemake's nested srun needs that path to be" \
            "our config. Stop the other cluster, or set SLURM_TEST_LINK_ETC=0 to go on anyway."
    fi
    mkdir -p "$(dirname "$ETC_LINK")"
    ln -s "$SLURM_CONF" "$ETC_LINK"
    say "linked $ETC_LINK -> $SLURM_CONF"
}

node_state() { sinfo -h -N -n "$HOST" -o %t 2>/dev/null | head -n1; }

cmd_start() {
    local pid state end
    mkdir -p "$D"/{etc,state,spool,log,run}
    touch "$D/.quantstudy-slurm"
    link_etc # first: fail before starting anything if /etc/slurm/slurm.conf is not ours
    ensure_packages
    start_munge
    if ! ourpid slurmctld >/dev/null && ! ourpid slurmd >/dev/null; then
        write_slurm_conf
    else
        say "slurm daemon(s) running: keeping existing $SLURM_CONF"
    fi
    if grep -q '^AccountingStorageType=accounting_storage/slurmdbd' "$SLURM_CONF"; then
        start_mariadb
        start_slurmdbd
    fi
    if pid=$(ourpid slurmctld); then
        say "slurmctld already running (pid $pid)"
    else
        slurmctld || { logtail "$D/log/slurmctld.log"; die "slurmctld failed to start"; }
        wait_for 10 ourpid slurmctld || { logtail "$D/log/slurmctld.log"; die "slurmctld died"; }
        say "started slurmctld (pid $(ourpid slurmctld), port $CTLD_PORT)"
    fi
    if pid=$(ourpid slurmd); then
        say "slurmd already running (pid $pid)"
    else
        slurmd || { logtail "$D/log/slurmd.log"; die "slurmd failed to start"; }
        wait_for 10 ourpid slurmd || { logtail "$D/log/slurmd.log"; die "slurmd died"; }
        say "started slurmd (pid $(ourpid slurmd), port $SLURMD_PORT)"
    fi
    end=$((SECONDS + TIMEOUT))
    while :; do
        state=$(node_state || true)
        case "$state" in
            idle | mix | alloc | comp) break ;;
            drain* | down* | drng*) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;;
        esac
        if ((SECONDS >= end)); then
            logtail "$D/log/slurmctld.log" "$D/log/slurmd.log"
            die "node $HOST not idle after ${TIMEOUT}s (sinfo state: '${state:-no answer}')"
        fi
        sleep 0.3
    done
    say "cluster up: node $HOST is $state"
    sinfo
    echo "export SLURM_CONF=$SLURM_CONF"
}

stop_daemon() {
    local name=$1 pid i
    pid=$(ourpid "$name") || return 0
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        alive "$pid" "$name" || break
        sleep 0.2
    done
    if alive "$pid" "$name"; then
        say "$name (pid $pid) ignored SIGTERM for 20s, sending SIGKILL"
        kill -9 "$pid" 2>/dev/null || true
    fi
    say "stopped $name (pid $pid)"
}

cmd_stop() {
    local ids i
    if [[ ! -f $D/.quantstudy-slurm ]]; then say "nothing to stop ($D is not ours or absent)"; return 0; fi
    if ourpid slurmctld >/dev/null; then
        ids=$(squeue -h -t PD,R,CG,S -o %A 2>/dev/null | tr '\n' ' ' || true)
        if [[ -n ${ids// /} ]]; then
            say "cancelling jobs still in our cluster: $ids"
            # shellcheck disable=SC2086
            scancel $ids 2>/dev/null || true
            for ((i = 0; i < 50; i++)); do
                [[ -z $(squeue -h -t PD,R,CG,S -o %A 2>/dev/null) ]] && break
                sleep 0.2
            done
        fi
    fi
    for name in slurmd slurmctld slurmdbd mariadbd munged; do
        stop_daemon "$name"
    done
    if [[ -L $ETC_LINK && $(readlink "$ETC_LINK") == "$SLURM_CONF" ]]; then
        rm -f "$ETC_LINK"
        say "removed link $ETC_LINK"
    fi
    say "stopped (state kept in $D; '$0 clean' deletes it)"
}

cmd_status() {
    local name pid up=1
    for name in munged mariadbd slurmdbd slurmctld slurmd; do
        if pid=$(ourpid "$name"); then
            echo "$name: running (pid $pid)"
        else
            echo "$name: not running"
            case "$name" in slurmctld | slurmd | munged) up=0 ;; esac
        fi
    done
    if ((up)); then
        echo "SLURM_CONF=$SLURM_CONF"
        sinfo || true
        squeue -t all -o '%.8i %.9P %.20j %.10T %.8M %b' || true
        return 0
    fi
    return 3
}

cmd_clean() {
    cmd_stop
    if [[ -f $D/.quantstudy-slurm ]]; then
        rm -rf "$D"
        say "deleted $D"
    fi
}

CMD=${1:-}
case "$CMD" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) echo "export SLURM_CONF=$SLURM_CONF" ;;
    clean) cmd_clean ;;
    *)
        echo "usage: $0 start|stop|status|env|clean" >&2
        exit 2
        ;;
esac
