#!/usr/bin/env bash
# Single-node Slurm cluster (slurmctld + slurmd + slurmdbd/MariaDB accounting) plus Open MPI,
# for tests and CI on Debian 12 (Slurm 22.05), run as root, without systemd.
#
#   bash .ci/cluster.sh install              apt-get install the packages (idempotent, quiet)
#   bash .ci/cluster.sh up     [STATE_DIR]   write configs, start every daemon, wait until usable;
#                                            prints one line on stdout: SLURM_CONF=<STATE_DIR>/etc/slurm.conf
#   bash .ci/cluster.sh down   [STATE_DIR]   cancel jobs, stop every daemon by its recorded PID
#   bash .ci/cluster.sh status [STATE_DIR]   which daemons are alive (exit 0 only if all are)
#
# STATE_DIR defaults to /tmp/harness-cluster. Everything (configs, munge key and socket, MariaDB
# data, Slurm state/spool, logs, PIDs) lives under it; /etc/slurm and /etc/munge are not used.
# `rm -rf STATE_DIR` after `down` gives a completely fresh cluster next time.
# Progress and diagnostics go to stderr; see .ci/README.md for details and gotchas.
#
# Tunables (environment): CLUSTER_CPUS (8), CLUSTER_MEM_MB (4000), CLUSTER_UP_TIMEOUT (60 s),
# CLUSTER_SLURMCTLD_PORT (6817), CLUSTER_SLURMD_PORT (6818), CLUSTER_SLURMDBD_PORT (6819),
# CLUSTER_DB_PORT (13306), CLUSTER_KEEP_ON_FAIL=1 (do not tear down after a failed `up`).
set -euo pipefail

# gcc, g++: not the cluster's, but the tests need them (the native noise draw, harness/rng_native.c,
# and torch.compile's CPU kernels); a no-op where the image has them.
# libpmix-dev: Slurm's mpi/pmix plugin dlopens .../pmix2/lib/libpmix.so, which only the -dev package ships.
PACKAGES=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server openmpi-bin libpmix-dev gcc g++)
# Start order; `down` goes in reverse.
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)

CPUS=${CLUSTER_CPUS:-8}
MEM_MB=${CLUSTER_MEM_MB:-4000}
UP_TIMEOUT=${CLUSTER_UP_TIMEOUT:-60}
CTLD_PORT=${CLUSTER_SLURMCTLD_PORT:-6817}
SLURMD_PORT=${CLUSTER_SLURMD_PORT:-6818}
DBD_PORT=${CLUSTER_SLURMDBD_PORT:-6819}
DB_PORT=${CLUSTER_DB_PORT:-13306}
CLUSTER_NAME=harness

log() { printf '[cluster] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

set_paths() {
    local dir=${1:-/tmp/harness-cluster}
    STATE=$(realpath -m -- "$dir")
    [[ $STATE != *[[:space:]]* ]] || die "STATE_DIR must not contain white space (Slurm config values)"
    ETC=$STATE/etc
    PIDS=$STATE/pids
    LOGS=$STATE/log
    RUN=$STATE/run
    MUNGE_DIR=$STATE/munge
    MUNGE_SOCK=$MUNGE_DIR/munge.socket.2
    DB_DIR=$STATE/mysql
    DB_SOCK=$STATE/mysqld/mysqld.sock
    CONF=$ETC/slurm.conf
    export SLURM_CONF=$CONF   # for the daemons and client tools started from here only
}

# ---------------------------------------------------------------- PID bookkeeping
# A PID file counts as alive only if the process exists and its executable is the expected
# daemon, so a recycled PID is never mistaken for (or killed as) one of ours.
# Debian installs the Slurm daemons as NAME-wlm behind update-alternatives links.
exe_is() {  # exe_is PID NAME
    local exe
    exe=$(readlink "/proc/$1/exe" 2>/dev/null) || return 1
    exe=${exe##*/}
    [[ $exe == "$2" || $exe == "$2-wlm" ]]
}

pid_of() {  # prints the recorded PID if that process is alive and is the right daemon
    local name=$1 f=$PIDS/$1.pid pid
    [[ -s $f ]] || return 1
    pid=$(<"$f")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    exe_is "$pid" "$name" || return 1
    echo "$pid"
}

alive() { pid_of "$1" >/dev/null; }

# start NAME CMD...: run a daemon in the foreground mode, detached into its own session, output
# to its log, and record the PID of the daemon itself (setsid execs without forking here because
# a background job of a non-interactive shell is never a process-group leader).
start() {
    local name=$1; shift
    if alive "$name"; then log "$name already running (pid $(pid_of "$name"))"; return 0; fi
    setsid "$@" 9>&- </dev/null >>"$LOGS/$name.out" 2>&1 &
    local pid=$! i
    echo "$pid" >"$PIDS/$name.pid"
    # Until setsid/setpriv have exec'd the daemon, /proc/PID/exe is still the wrapper.
    for ((i = 0; i < 100; i++)); do
        alive "$name" && break
        running "$pid" || break
        sleep 0.05
    done
    log "started $name (pid $pid)"
}

running() {  # the process exists and is not a zombie (PID 1 of a container may never reap)
    local st
    st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    st=${st##*) }
    [[ ${st%% *} != Z ]]
}

# wait_gone TENTHS NAME=PID...: wait up to TENTHS tenths of a second until none is running.
wait_gone() {
    local tenths=$1 np i alive; shift
    for ((i = 0; i < tenths; i++)); do
        alive=0
        for np in "$@"; do running "${np#*=}" && alive=1; done
        ((alive)) || return 0
        sleep 0.1
    done
}

# stop_group TIMEOUT NAME=PID...: SIGTERM to all, wait (bounded) for all, then SIGKILL the rest.
stop_group() {
    local timeout=$1 np; shift
    for np in "$@"; do kill -TERM "${np#*=}" 2>/dev/null || true; done
    wait_gone $((timeout * 10)) "$@"
    for np in "$@"; do
        if running "${np#*=}"; then
            log "${np%%=*} (pid ${np#*=}) ignored SIGTERM for ${timeout}s: SIGKILL"
            kill -KILL "${np#*=}" 2>/dev/null || true
        fi
    done
    wait_gone 50 "$@"
    for np in "$@"; do
        if running "${np#*=}"; then log "WARNING: ${np%%=*} (pid ${np#*=}) survived SIGKILL"
        else log "stopped ${np%%=*} (pid ${np#*=})"; fi
    done
}

# wait_for DESCRIPTION DAEMON CMD...: poll CMD until it succeeds; fail if DAEMON died or the
# overall deadline of `up` passes.
wait_for() {
    local what=$1 daemon=$2; shift 2
    while :; do
        if "$@" >/dev/null 2>&1; then return 0; fi
        if [[ -n $daemon ]] && ! alive "$daemon"; then
            fail "$daemon exited while waiting for $what"
        fi
        ((SECONDS < DEADLINE)) || fail "timed out (CLUSTER_UP_TIMEOUT=${UP_TIMEOUT}s) waiting for $what"
        sleep 0.2
    done
}

fail() {
    log "ERROR: $*"
    local f
    for f in "$LOGS"/*.log "$LOGS"/*.out "$STATE/mysqld/mariadbd.log"; do
        [[ -s $f ]] || continue
        log "---- tail of $f"
        tail -n 15 "$f" >&2 || true
    done
    if [[ ${CLUSTER_KEEP_ON_FAIL:-0} != 1 ]]; then
        log "tearing down (set CLUSTER_KEEP_ON_FAIL=1 to keep the daemons for debugging)"
        do_down || true
    fi
    exit 1
}

lock_state() {
    mkdir -p "$STATE"
    exec 9>"$STATE/.lock"
    flock -w 120 9 || die "another cluster.sh holds $STATE/.lock"
}

# ---------------------------------------------------------------- install
do_install() {
    [[ $(id -u) == 0 ]] || die "install needs root"
    local missing=() p
    for p in "${PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
    done
    if ((${#missing[@]} == 0)); then log "packages already installed"; return 0; fi
    log "installing: ${missing[*]}"
    # Keep package scripts from starting services (a machine with a working init would otherwise
    # start the system-wide munge/mariadb/slurm daemons from /etc).
    local made_policy=0
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    local rc=0 aptlog
    aptlog=$(mktemp)
    {
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq &&
            apt-get install -y -qq --no-install-recommends \
                -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
                "${PACKAGES[@]}"
    } >"$aptlog" 2>&1 || rc=$?
    ((made_policy)) && rm -f /usr/sbin/policy-rc.d
    if ((rc != 0)); then tail -n 30 "$aptlog" >&2; rm -f "$aptlog"; die "apt-get failed (rc $rc)"; fi
    rm -f "$aptlog"
    log "installed"
}

# ---------------------------------------------------------------- configuration
write_configs() {
    install -d -m 0755 "$STATE" "$ETC" "$PIDS" "$LOGS" "$RUN" "$STATE/slurmctld" "$STATE/slurmd" "$STATE/tmp"
    # munged insists that its directories are not writable by anyone but munge (or root).
    install -d -m 0755 -o munge -g munge "$MUNGE_DIR"
    install -d -m 0755 -o mysql -g mysql "$STATE/mysqld"
    # munged and mariadbd run as munge / mysql: every parent of STATE_DIR must let them through.
    local u
    for u in munge mysql; do
        setpriv --reuid="$u" --regid="$u" --clear-groups test -x "$STATE/." ||
            die "user $u cannot reach $STATE: every parent directory needs o+x (pick another STATE_DIR)"
    done

    if [[ ! -s $MUNGE_DIR/munge.key ]]; then
        dd if=/dev/urandom of="$MUNGE_DIR/munge.key" bs=1024 count=1 status=none
        log "created munge key"
    fi
    chown munge:munge "$MUNGE_DIR/munge.key"
    chmod 0400 "$MUNGE_DIR/munge.key"

    if [[ ! -s $ETC/dbpass ]]; then
        (umask 077; od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$ETC/dbpass")
    fi
    DB_PASS=$(<"$ETC/dbpass")

    cat >"$CONF.new" <<EOF
# Generated by .ci/cluster.sh -- single-node test cluster, loopback only.
ClusterName=$CLUSTER_NAME
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
CredType=cred/munge

StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
TmpFS=$STATE/tmp
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info

ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# Schedule new batch jobs at once (default: up to 3 s later).
SchedulerParameters=batch_sched_delay=0
MpiDefault=pmix
MailProg=/bin/true
ReturnToService=2
MaxArraySize=1001
MaxJobCount=20000
MinJobAge=10
KillWait=5
InactiveLimit=0
SlurmctldTimeout=60
SlurmdTimeout=120

AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
# Munge socket for the slurmdbd connections (they do not use AuthInfo in 22.05).
AccountingStoragePass=$MUNGE_SOCK
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none

# More CPUs than the machine has, so tests can run several ranks / array tasks on 2 cores.
SlurmdParameters=config_overrides
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
    mv -f "$CONF.new" "$CONF"
    chmod 0644 "$CONF"

    # slurmdbd reads slurmdbd.conf from the directory of SLURM_CONF; it must be 0600, owned by SlurmUser.
    (
        umask 077
        cat >"$ETC/slurmdbd.conf.new" <<EOF
# Generated by .ci/cluster.sh
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
DebugLevel=info
LogFile=$LOGS/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
    )
    mv -f "$ETC/slurmdbd.conf.new" "$ETC/slurmdbd.conf"
    chown root:root "$ETC/slurmdbd.conf"
    chmod 0600 "$ETC/slurmdbd.conf"
}

# ---------------------------------------------------------------- up
db_sql() { mariadb --no-defaults -S "$DB_SOCK" -u root -N -B -e "$1"; }

node_ready() {  # the node responds and can run jobs; resume it if a past crash left it down/drained
    local s
    s=$(sinfo -h -N -n localhost -o '%t' 2>/dev/null) || return 1
    case $s in
        idle | mix | alloc | comp) return 0 ;;
        down | drain | drng | drained) scontrol update nodename=localhost state=resume >/dev/null 2>&1 || true ;;
    esac
    return 1
}

all_alive() { local n; for n in "${DAEMONS[@]}"; do alive "$n" || return 1; done; }

do_up() {
    [[ $(id -u) == 0 ]] || die "up needs root"
    command -v slurmctld >/dev/null || die "Slurm is not installed: run 'bash .ci/cluster.sh install' first"
    lock_state
    if all_alive && node_ready; then
        log "already up ($STATE)"
        echo "SLURM_CONF=$CONF"
        return 0
    fi
    DEADLINE=$((SECONDS + UP_TIMEOUT))
    local t0=$SECONDS
    write_configs

    # munge: private key, socket and logs under STATE_DIR; runs as the munge user.
    start munged setpriv --reuid=munge --regid=munge --init-groups \
        munged -F --socket="$MUNGE_SOCK" --key-file="$MUNGE_DIR/munge.key" \
        --pid-file="$MUNGE_DIR/munged.pid" --seed-file="$MUNGE_DIR/munged.seed"
    wait_for "munge socket" munged test -S "$MUNGE_SOCK"

    # MariaDB: private datadir, socket, and a loopback TCP port for slurmdbd.
    if [[ ! -d $DB_DIR/mysql ]]; then
        log "initialising MariaDB datadir"  # --force: proceed even if the host name does not resolve
        install -d -m 0750 -o mysql -g mysql "$DB_DIR"
        mariadb-install-db --no-defaults --user=mysql --datadir="$DB_DIR" \
            --auth-root-authentication-method=socket --skip-test-db --skip-name-resolve --force \
            >"$LOGS/mariadb-install-db.out" 2>&1 || fail "mariadb-install-db failed (see $LOGS/mariadb-install-db.out)"
    fi
    start mariadbd mariadbd --no-defaults --user=mysql --datadir="$DB_DIR" --socket="$DB_SOCK" \
        --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
        --pid-file="$STATE/mysqld/mariadbd.pid" --log-error="$STATE/mysqld/mariadbd.log" \
        --innodb-buffer-pool-size=64M --innodb-lock-wait-timeout=900 --max-connections=100
    wait_for "MariaDB" mariadbd mariadb-admin --no-defaults -S "$DB_SOCK" -u root ping
    db_sql "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
            CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
            ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
            ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
            FLUSH PRIVILEGES;" || fail "could not create the MariaDB user for slurmdbd"

    start slurmdbd slurmdbd -D
    wait_for "slurmdbd" slurmdbd sacctmgr -n -P list cluster
    if ! sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
        sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null || fail "sacctmgr add cluster failed"
    fi

    start slurmctld slurmctld -D -f "$CONF"
    wait_for "slurmctld" slurmctld scontrol ping
    start slurmd slurmd -D -f "$CONF" -N localhost
    wait_for "node localhost idle" slurmd node_ready
    wait_for "sacct" "" sacct -n -X -S now-1minute -o JobID
    all_alive || fail "a daemon exited during start-up"
    log "up in $((SECONDS - t0)) s ($STATE)"
    echo "SLURM_CONF=$CONF"
}

# ---------------------------------------------------------------- down
# slurmstepd processes belonging to this cluster: exe is slurmstepd and they inherited
# SLURM_CONF=<our conf> from our slurmd (never a match by name alone).
our_stepds() {
    local p pid
    for p in /proc/[0-9]*; do
        pid=${p#/proc/}
        exe_is "$pid" slurmstepd || continue
        tr '\0' '\n' <"$p/environ" 2>/dev/null | grep -qxF "SLURM_CONF=$CONF" && echo "$pid"
    done
    return 0
}

do_down() {
    local n pid i ids
    # 1. Cancel every job so that job steps end cleanly while slurmctld/slurmd still run.
    if alive slurmctld; then
        ids=$(timeout 10 squeue -h -o '%A' 2>/dev/null | tr '\n' ' ') || ids=
        if [[ -n ${ids// /} ]]; then
            log "cancelling jobs: $ids"
            # shellcheck disable=SC2086
            timeout 10 scancel $ids 2>/dev/null || true
            for ((i = 0; i < 150; i++)); do  # KillWait=5, so this normally takes < 7 s
                [[ -z $(timeout 5 squeue -h -o '%A' -t running,completing 2>/dev/null) ]] && break
                sleep 0.1
            done
        fi
    fi
    # 2. Daemons by recorded PID, in reverse start order; independent ones in parallel:
    #    slurmctld still reports to slurmdbd while it shuts down, slurmdbd needs MariaDB and munge.
    local phase group
    for phase in "slurmd slurmctld" "slurmdbd" "mariadbd munged"; do
        group=()
        for n in $phase; do
            if pid=$(pid_of "$n"); then group+=("$n=$pid"); fi
        done
        ((${#group[@]})) && stop_group 20 "${group[@]}"
        for n in $phase; do rm -f "$PIDS/$n.pid"; done
    done
    # 3. Any job step left behind by a killed slurmd.
    group=()
    for pid in $(our_stepds); do group+=("slurmstepd=$pid"); done
    ((${#group[@]})) && stop_group 5 "${group[@]}"
    log "down ($STATE)"
}

# ---------------------------------------------------------------- status
do_status() {
    local n pid rc=0
    for n in "${DAEMONS[@]}"; do
        if pid=$(pid_of "$n"); then
            printf '%-10s alive (pid %s)\n' "$n" "$pid"
        else
            printf '%-10s down\n' "$n"
            rc=1
        fi
    done
    echo "SLURM_CONF=$CONF"
    return $rc
}

# ---------------------------------------------------------------- main
cmd=${1:-}
shift || true
case $cmd in
    install) do_install ;;
    up) set_paths "${1:-}"; do_up ;;
    down)
        set_paths "${1:-}"
        if [[ -d $STATE ]]; then lock_state; do_down; else log "nothing to stop ($STATE does not exist)"; fi
        ;;
    status) set_paths "${1:-}"; do_status ;;
    *)
        sed -n '2,10p' "$0" >&2
        exit 2
        ;;
esac
