#!/usr/bin/env bash
# Bring up / tear down a real single-node SLURM cluster on localhost, with accounting.
#
#   slurm/localcluster.sh up [--link-etc]
#                                  install packages if missing (root), start every daemon,
#                                  wait until a trivial job has run; idempotent
#   slurm/localcluster.sh down     cancel all jobs, stop the daemons this script started (by PID),
#                                  remove /etc/slurm/slurm.conf if it is our symlink
#   slurm/localcluster.sh status   say which daemons are running
#   slurm/localcluster.sh env      print `export SLURM_CONF=...` (use: eval "$(... env)")
#
# Daemons: munged (own key + socket), mariadbd (own datadir, TCP on 127.0.0.1), slurmdbd,
# slurmctld, slurmd. No systemd needed; nothing under /etc is required (as root, a
# convenience symlink /etc/slurm/slurm.conf -> $PRISM_SLURM_DIR/slurm.conf is written unless
# a real /etc/slurm/slurm.conf already exists).
#
# Environment (all optional):
#   PRISM_SLURM_DIR             state dir                               [/tmp/prism-slurm]
#   PRISM_SLURM_CPUS            CPUs advertised for the node            [4]
#                               (SlurmdParameters=config_overrides lets this exceed nproc)
#   PRISM_SLURM_MAX_ARRAY_SIZE  MaxArraySize (5 means indices 0..4)     [5]
#   PRISM_SLURM_CLUSTER         ClusterName                             [prism]
#   PRISM_SLURM_PORT_BASE       slurmctld port; slurmd = +1, slurmdbd = +2   [6817]
#   PRISM_SLURM_DB_PORT         MariaDB TCP port (127.0.0.1 only)       [16033]
#   PRISM_SLURM_UP_TIMEOUT      seconds to wait for each readiness step [60]
#   PRISM_SLURM_LINK_ETC        1: same as `up --link-etc`              [0]
set -euo pipefail

STATE="${PRISM_SLURM_DIR:-/tmp/prism-slurm}"
CONF="$STATE/slurm.conf"
DBD_CONF="$STATE/slurmdbd.conf"
PIDS="$STATE/pids"
RUN="$STATE/run"
LOG="$STATE/log"
MUNGE_DIR="$STATE/munge"
MUNGE_SOCK="$MUNGE_DIR/munge.socket"
MUNGE_KEY="$MUNGE_DIR/munge.key"
DB_DIR="$STATE/mysql"
DB_DATA="$DB_DIR/data"
DB_SOCK="$DB_DIR/mysqld.sock"
DB_PASS_FILE="$STATE/db.pass"

CPUS="${PRISM_SLURM_CPUS:-4}"
MAX_ARRAY_SIZE="${PRISM_SLURM_MAX_ARRAY_SIZE:-5}"
CLUSTER="${PRISM_SLURM_CLUSTER:-prism}"
PORT_BASE="${PRISM_SLURM_PORT_BASE:-6817}"
CTLD_PORT="$PORT_BASE"
SLURMD_PORT=$((PORT_BASE + 1))
DBD_PORT=$((PORT_BASE + 2))
DB_PORT="${PRISM_SLURM_DB_PORT:-16033}"
UP_TIMEOUT="${PRISM_SLURM_UP_TIMEOUT:-60}"
LINK_ETC="${PRISM_SLURM_LINK_ETC:-0}"
ACCOUNT="prism"

# Order matters: started left to right, stopped right to left.
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)
PACKAGES=(slurmctld slurmd slurmdbd slurm-client munge mariadb-server)
REQUIRED_CMDS=(slurmctld slurmd slurmdbd sbatch srun sinfo sacct sacctmgr scontrol scancel squeue
               munged mungekey munge mariadbd mariadb-install-db mariadb mariadb-admin setpriv)

export SLURM_CONF="$CONF"
export PATH="$PATH:/usr/sbin:/sbin"

T0=$(date +%s.%N)
die() { echo "localcluster: ERROR: $*" >&2; exit 1; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
log() { printf '[localcluster +%ss] %s\n' "$(elapsed "$T0")" "$*" >&2; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# ---------------------------------------------------------------- process bookkeeping

# PID recorded for daemon $1, or empty.
recorded_pid() { [ -f "$PIDS/$1.pid" ] && tr -dc '0-9' <"$PIDS/$1.pid" || true; }

# True if daemon $1 is running with its recorded PID (and that PID really is that program).
alive() {
    local pid comm stat
    pid=$(recorded_pid "$1")
    [ -n "$pid" ] || return 1
    [ -r "/proc/$pid/comm" ] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [ "$comm" = "$1" ] || return 1
    # A zombie is dead: our daemons are reparented to PID 1, which may reap late or never
    # (containers whose PID 1 is not an init).
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    case "${stat:0:1}" in Z|X) return 1 ;; esac
    return 0
}

# start NAME CMD...: run CMD in its own session in the background, stdio to the log,
# record its PID. setsid does not fork here (a background job of a non-interactive
# shell is not a process-group leader), and setpriv execs, so $! is the daemon.
start_bg() {
    local name=$1; shift
    setsid "$@" </dev/null >>"$LOG/$name.out" 2>&1 &
    echo $! >"$PIDS/$name.pid"
    sleep 0.2
    alive "$name" || { show_logs "$name"; die "$name exited at once (logs in $LOG)"; }
    log "started $name (pid $(recorded_pid "$name"))"
}

stop_daemon() {
    local name=$1 pid i
    if ! alive "$name"; then rm -f "$PIDS/$name.pid"; return 0; fi
    pid=$(recorded_pid "$name")
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 150); do  # up to 30 s
        alive "$name" || break
        sleep 0.2
    done
    if alive "$name"; then
        log "$name (pid $pid) ignored SIGTERM for 30 s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for i in $(seq 1 50); do alive "$name" || break; sleep 0.2; done
    fi
    rm -f "$PIDS/$name.pid"
    log "stopped $name (pid $pid)"
}

# show_logs NAME: the tail of a daemon's logs, for error messages.
show_logs() {
    local f="$LOG/$1.log"   # daemons run with -D log to both; the .out has pre-logfile errors
    [ -s "$f" ] || f="$LOG/$1.out"
    [ -s "$f" ] && { echo "---- tail of $f" >&2; tail -n 25 "$f" >&2; }
    return 0
}

# wait_for DAEMON DESCRIPTION CMD...: poll CMD until it succeeds; fail at once if DAEMON
# died, or after UP_TIMEOUT seconds.
wait_for() {
    local daemon=$1 what=$2; shift 2
    local t0; t0=$(date +%s.%N)
    local deadline=$(( $(date +%s) + UP_TIMEOUT ))
    until "$@" >/dev/null 2>&1; do
        if ! alive "$daemon"; then
            show_logs "$daemon"
            die "$daemon exited while waiting for $what (logs in $LOG)"
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            show_logs "$daemon"
            die "timed out after ${UP_TIMEOUT}s waiting for $what (logs in $LOG)"
        fi
        sleep 0.2
    done
    log "$what ready after $(elapsed "$t0")s"
}

# ---------------------------------------------------------------- install

missing_cmds() {
    local c out=()
    for c in "${REQUIRED_CMDS[@]}"; do command -v "$c" >/dev/null 2>&1 || out+=("$c"); done
    echo "${out[*]:-}"
}

ensure_packages() {
    local missing; missing=$(missing_cmds)
    [ -z "$missing" ] && return 0
    if ! is_root; then
        cat >&2 <<EOF
localcluster: missing commands: $missing
Install the packages as root, then rerun:
    apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y ${PACKAGES[*]}
EOF
        exit 1
    fi
    log "missing commands: $missing; installing ${PACKAGES[*]}"
    # Keep the packages' init scripts from starting system daemons (no systemd here;
    # a system mariadbd/munged would only get in the way). Only if the admin has none.
    local policy_created=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        policy_created=1
    fi
    local rc=0
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q "${PACKAGES[@]}"; then
        apt-get update -q && apt-get install -y -q "${PACKAGES[@]}" || rc=$?
    fi
    [ "$policy_created" = 1 ] && rm -f /usr/sbin/policy-rc.d
    [ "$rc" = 0 ] || die "apt-get install failed (rc $rc)"
    missing=$(missing_cmds)
    [ -z "$missing" ] || die "still missing after install: $missing"
    log "packages installed"
}

# ---------------------------------------------------------------- config

write_configs() {
    local host mem dbpass
    host=$(hostname -s)
    mem=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' | head -n1)
    [ -n "$mem" ] || mem=$(awk '/MemTotal/ { printf "%d", $2 / 1024 }' /proc/meminfo)
    dbpass=$(cat "$DB_PASS_FILE")

    cat >"$CONF.tmp" <<EOF
# Generated by slurm/localcluster.sh -- edits are overwritten by the next 'up'.
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
CredType=cred/munge
MpiDefault=none
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$STATE/plugstack.conf
MailProg=/bin/true
ReturnToService=2
JobRequeue=1
KillWait=2
MinJobAge=10
InactiveLimit=0
Waittime=0
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
MaxArraySize=$MAX_ARRAY_SIZE
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# For slurmdbd over munge this names the munge socket used on that connection.
AccountingStoragePass=$MUNGE_SOCK
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
NodeName=$host NodeAddr=127.0.0.1 NodeHostname=$host CPUs=$CPUS RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
    mv -f "$CONF.tmp" "$CONF"
    chmod 644 "$CONF"
    : >"$STATE/plugstack.conf"   # empty: do not pick up /etc/slurm/plugstack.conf.d

    (umask 077
     cat >"$DBD_CONF.tmp" <<EOF
# Generated by slurm/localcluster.sh
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdHost=$host
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
DebugLevel=info
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$dbpass
StorageLoc=slurm_acct_db
EOF
    )
    mv -f "$DBD_CONF.tmp" "$DBD_CONF"
    chmod 600 "$DBD_CONF"
}

# Opt-in convenience (--link-etc): plain `sbatch` without SLURM_CONF finds this cluster.
# Never clobber a real file.
link_etc_conf() {
    mkdir -p /etc/slurm
    if [ -L /etc/slurm/slurm.conf ] || [ ! -e /etc/slurm/slurm.conf ]; then
        ln -sfn "$CONF" /etc/slurm/slurm.conf
    else
        log "note: /etc/slurm/slurm.conf is a real file; left alone (use SLURM_CONF)"
    fi
}

# Remove /etc/slurm/slurm.conf only when it is a symlink to this cluster's conf.
unlink_etc_conf() {
    if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$CONF" ]; then
        rm -f /etc/slurm/slurm.conf
        log "removed the symlink /etc/slurm/slurm.conf -> $CONF"
    fi
}

# ---------------------------------------------------------------- daemons

start_munged() {
    mkdir -p "$MUNGE_DIR"
    chown munge:munge "$MUNGE_DIR"
    chmod 755 "$MUNGE_DIR"   # munged insists the socket dir be world-executable
    if [ ! -s "$MUNGE_KEY" ]; then
        setpriv --reuid=munge --regid=munge --init-groups mungekey -c -k "$MUNGE_KEY" >/dev/null 2>&1 \
            || { dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
                 chown munge:munge "$MUNGE_KEY"; }
        chmod 600 "$MUNGE_KEY"
        log "generated munge key $MUNGE_KEY"
    fi
    rm -f "$MUNGE_SOCK" "$MUNGE_SOCK.lock"
    start_bg munged setpriv --reuid=munge --regid=munge --init-groups \
        munged --foreground --socket="$MUNGE_SOCK" --key-file="$MUNGE_KEY" \
        --pid-file="$MUNGE_DIR/munged.pid" --seed-file="$MUNGE_DIR/munged.seed" \
        --log-file="$MUNGE_DIR/munged.log"
    wait_for munged munged bash -c "munge -n -S '$MUNGE_SOCK' | unmunge -S '$MUNGE_SOCK'"
}

db_sql() { mariadb --no-defaults --socket="$DB_SOCK" -uroot -e "$1"; }

start_mariadbd() {
    mkdir -p "$DB_DIR"
    chown mysql:mysql "$DB_DIR"
    chmod 750 "$DB_DIR"
    local mariadb_opts=(--datadir="$DB_DATA" --socket="$DB_SOCK" --pid-file="$DB_DIR/mariadbd.pid"
        --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve
        --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900
        --innodb-use-native-aio=0 --tmpdir="$DB_DIR")
    if [ ! -d "$DB_DATA/mysql" ]; then
        local t0; t0=$(date +%s.%N)
        rm -rf "$DB_DATA"
        mkdir -p "$DB_DATA"
        chown mysql:mysql "$DB_DATA"
        mariadb-install-db --no-defaults --user=mysql --datadir="$DB_DATA" \
            --auth-root-authentication-method=socket --skip-test-db \
            >"$LOG/mariadb-install-db.out" 2>&1 \
            || { tail -n 30 "$LOG/mariadb-install-db.out" >&2; die "mariadb-install-db failed"; }
        log "initialised MariaDB datadir in $(elapsed "$t0")s"
    fi
    rm -f "$DB_SOCK"
    # --no-defaults must come first: ignore /etc/mysql entirely.
    start_bg mariadbd mariadbd --no-defaults --user=mysql "${mariadb_opts[@]}"
    wait_for mariadbd mariadbd mariadb-admin --no-defaults --socket="$DB_SOCK" -uroot ping
    local pass; pass=$(cat "$DB_PASS_FILE")
    db_sql "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
            CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
            CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pass';
            ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
            ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$pass';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
            FLUSH PRIVILEGES;" \
        || die "could not create slurm_acct_db / slurm user"
}

start_slurmdbd() {
    start_bg slurmdbd slurmdbd -D
    wait_for slurmdbd slurmdbd sacctmgr -n -P list cluster
}

# Cluster, account and user in accounting (idempotent).
register_accounting() {
    if [ -z "$(sacctmgr -n -P list cluster "$CLUSTER" format=Cluster 2>/dev/null)" ]; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
        log "registered cluster $CLUSTER in accounting"
    fi
    if [ -z "$(sacctmgr -n -P list account "$ACCOUNT" format=Account 2>/dev/null)" ]; then
        sacctmgr -i add account "$ACCOUNT" Cluster="$CLUSTER" \
            Description="prism-hpc local cluster" Organization=prism >/dev/null
    fi
    local u users=(root)
    [ -n "${SUDO_USER:-}" ] && id "$SUDO_USER" >/dev/null 2>&1 && users+=("$SUDO_USER")
    for u in "${users[@]}"; do
        if [ -z "$(sacctmgr -n -P list assoc cluster="$CLUSTER" account="$ACCOUNT" user="$u" format=User 2>/dev/null)" ]; then
            sacctmgr -i add user "$u" Account="$ACCOUNT" Cluster="$CLUSTER" >/dev/null
        fi
    done
}

start_slurmctld() {
    # -i: ignore unreadable state files (e.g. after an unclean stop).
    start_bg slurmctld slurmctld -D -i -f "$CONF"
    wait_for slurmctld slurmctld scontrol ping
}

node_idle() { sinfo -h -N -o '%t' 2>/dev/null | grep -Eqx 'idle|mix'; }

start_slurmd() {
    local host; host=$(hostname -s)
    start_bg slurmd slurmd -D -N "$host" -f "$CONF"
    wait_for slurmd "node $host idle" node_idle
}

smoke_job() {
    local t0 out rc=0; t0=$(date +%s.%N)
    out=$(cd "$STATE" && timeout "$UP_TIMEOUT" sbatch --wait --parsable -J prism-smoke \
          -o /dev/null -e /dev/null --wrap true 2>&1) || rc=$?
    [ "$rc" = 0 ] || die "smoke job failed (rc $rc): $out"
    log "smoke job $out completed in $(elapsed "$t0")s"
}

# ---------------------------------------------------------------- commands

all_alive() { local d; for d in "${DAEMONS[@]}"; do alive "$d" || return 1; done; }
any_alive() { local d; for d in "${DAEMONS[@]}"; do alive "$d" && return 0; done; return 1; }

cmd_up() {
    if all_alive; then
        if [ "$LINK_ETC" = 1 ] && is_root; then link_etc_conf; fi
        echo "localcluster: already up (state dir $STATE)"
        return 0
    fi
    ensure_packages
    is_root || die "'up' must run as root (it starts munged/mariadbd as their own users)"
    if any_alive; then
        log "partially up; restarting every daemon"
        cmd_down
    fi
    mkdir -p "$STATE" "$PIDS" "$RUN" "$LOG" "$STATE/state" "$STATE/spool"
    chmod 755 "$STATE"
    # munged and mariadbd run as their own users and must reach their dirs under $STATE.
    setpriv --reuid=mysql --regid=mysql --clear-groups test -x "$STATE" \
        || die "user mysql cannot enter $STATE (a parent dir is not world-executable); set PRISM_SLURM_DIR elsewhere"
    # A changed ClusterName would make slurmctld refuse its (private) saved state.
    if [ -f "$STATE/state/clustername" ] && [ "$(cat "$STATE/state/clustername")" != "$CLUSTER" ]; then
        log "ClusterName changed; discarding saved controller state"
        rm -rf "$STATE/state" && mkdir -p "$STATE/state"
    fi
    # Whatever fails from here on: stop what was started, keep the logs.
    trap 'rc=$?; if [ "$rc" != 0 ]; then echo "localcluster: bring-up failed; stopping the daemons started so far (logs in $LOG)" >&2; cmd_down >/dev/null 2>&1 || true; fi' EXIT
    [ -s "$DB_PASS_FILE" ] || (umask 077; head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$DB_PASS_FILE")
    write_configs
    start_munged
    start_mariadbd
    start_slurmdbd
    register_accounting
    start_slurmctld
    start_slurmd
    smoke_job
    trap - EXIT
    if [ "$LINK_ETC" = 1 ]; then link_etc_conf; fi
    log "cluster '$CLUSTER' up in $(elapsed "$T0")s  (SLURM_CONF=$CONF, CPUs=$CPUS, MaxArraySize=$MAX_ARRAY_SIZE)"
    echo "localcluster: up; eval \"\$($0 env)\" to use it"
}

cmd_down() {
    if alive slurmctld; then
        scancel --partition=debug >/dev/null 2>&1 || true
        local i
        for i in $(seq 1 50); do  # up to 10 s for jobs to leave
            [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
    local idx
    for ((idx = ${#DAEMONS[@]} - 1; idx >= 0; idx--)); do
        stop_daemon "${DAEMONS[$idx]}"
    done
    is_root && unlink_etc_conf
    echo "localcluster: down"
}

cmd_status() {
    local d rc=0
    for d in "${DAEMONS[@]}"; do
        if alive "$d"; then
            printf '%-10s running (pid %s)\n' "$d" "$(recorded_pid "$d")"
        else
            printf '%-10s stopped\n' "$d"; rc=3
        fi
    done
    echo "SLURM_CONF=$CONF"
    return "$rc"
}

cmd_env() { echo "export SLURM_CONF=$CONF"; }

case "${1:-}" in
    up)
        case "${2:-}" in
            "") ;;
            --link-etc) LINK_ETC=1 ;;
            *) echo "usage: $0 up [--link-etc]" >&2; exit 2 ;;
        esac
        cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    env) cmd_env ;;
    *) echo "usage: $0 up [--link-etc]|down|status|env" >&2; exit 2 ;;
esac
