# pidmap's kernel-path checks, for `cargo xtask matrix` (xtask/src/matrix/).
#
# POSIX sh for busybox: the same file runs inside each QEMU guest (started by the
# initramfs's /init) and natively on the host, with busybox applets first on PATH.
# It starts one agent, checks what it says against /proc and the cgroup filesystem,
# stops it, and removes everything it made.
#
# Environment:
#   PIDMAP        the pidmap binary
#   STATIC_TRUE   a static `true` (busybox applets re-exec and rename themselves, so exact
#                 exec counts need a real one-shot binary)
#   WORK          an empty scratch directory (sockets, logs, pid files)
#   METRICS_PORT  a free loopback TCP port for the agent's metrics
#
# Output: one line per check, `PIDMAP-CHECK <name> pass|fail|skip <message>`, then
# `PIDMAP-CHECKS-DONE`. Every other line is a log for people (the matrix keeps it).

set -u

: "${PIDMAP:?}" "${STATIC_TRUE:?}" "${WORK:?}" "${METRICS_PORT:?}"

export PIDMAP_SOCKET="$WORK/pidmap.sock"
AGENT_LOG="$WORK/agent.log"
STORM=2000
CHECKS="ready cgroup exited pidns storm rename orphan overflow"

agent_pid=""
started=""      # processes this script started: killed at exit
cgroups_made="" # cgroup directories this script made: removed at exit

log() { echo "checks: $*"; }

report() { # report NAME pass|fail|skip MESSAGE...
    local name=$1 verdict=$2
    shift 2
    echo "PIDMAP-CHECK $name $verdict $*"
}

track() { started="$started $*"; }

# Milliseconds since boot, from /proc/uptime (10 ms resolution; busybox date has no %N).
now_ms() {
    local up rest
    read -r up rest </proc/uptime
    echo $(( ${up%.*} * 1000 + 1${up#*.} * 10 - 1000 ))
}

# poll MS CMD...: runs CMD until it succeeds (0) or MS milliseconds have passed (1).
poll() {
    local limit=$(( $(now_ms) + $1 ))
    shift
    until "$@"; do
        [ "$(now_ms)" -ge "$limit" ] && return 1
        sleep 0.02
    done
}

# Field N (counted as in proc(5), N >= 3) of /proc/PID/stat.
stat_field() {
    local stat n
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    n=$(( $2 - 2 ))
    # The fields after the comm, which may itself hold spaces and parentheses.
    set -- ${stat##*) }
    [ "$#" -ge "$n" ] || return 1
    shift $(( n - 1 ))
    echo "$1"
}

# The pids whose parent is PID.
children_of() {
    local dir pid
    for dir in /proc/[0-9]*; do
        pid=${dir#/proc/}
        [ "$(stat_field "$pid" 4 2>/dev/null)" = "$1" ] && echo "$pid"
    done
    return 0
}

# Values of the one-line JSON objects pidmap prints (`null` reads as empty).
jnum() { sed -n "s/.*\"$1\":\(-\{0,1\}[0-9][0-9]*\).*/\1/p"; }
jstr() { sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p"; }

resolve() { "$PIDMAP" resolve -o json "$1" 2>&1; }
status_json() { "$PIDMAP" status -o json 2>/dev/null; }
status_num() { status_json | jnum "$1"; }

# pidmap_events_total{kind="exec"} from the agent's metrics.
exec_events() {
    wget -q -O - "http://127.0.0.1:$METRICS_PORT/metrics" 2>/dev/null |
        sed -n 's/^pidmap_events_total{kind="exec"} \([0-9][0-9]*\).*/\1/p'
}

# Where a cgroup2 hierarchy is mounted, and where the v1 one with the memory controller is.
cgroup2_root() { awk '$3 == "cgroup2" { print $2; exit }' /proc/self/mounts; }
v1_root_with() {
    awk -v c="$1" '$3 == "cgroup" { n = split($4, o, ","); for (i = 1; i <= n; i++) if (o[i] == c) { print $2; exit } }' /proc/self/mounts
}
v1_roots() { awk '$3 == "cgroup" { print $2 }' /proc/self/mounts; }

agent_alive() { [ -n "$agent_pid" ] && kill -0 "$agent_pid" 2>/dev/null; }
agent_ready() {
    agent_alive || return 0 # stop polling: it died
    status_json | grep -q '"ready":true'
}

# start_agent ARGS...: starts an agent on $PIDMAP_SOCKET with ARGS and waits until it is
# ready (2 minutes: under TCG, parsing the kernel's BTF alone takes seconds).
start_agent() {
    "$PIDMAP" agent --socket "$PIDMAP_SOCKET" \
        --containerd-socket "$WORK/no-containerd/containerd.sock" "$@" >>"$AGENT_LOG" 2>&1 &
    agent_pid=$!
    _t0=$(now_ms)
    poll 120000 agent_ready
    if agent_alive && status_json | grep -q '"ready":true'; then
        agent_ready_ms=$(( $(now_ms) - _t0 ))
        return 0
    fi
    return 1
}

stop_agent() {
    [ -n "$agent_pid" ] || return 0
    kill "$agent_pid" 2>/dev/null
    wait "$agent_pid" 2>/dev/null
    agent_pid=""
}

agent_log_tail() { tail -n "${1:-3}" "$AGENT_LOG" 2>/dev/null | tr '\n' '|' | sed 's/|$//; s/|/ | /g'; }

cleanup() {
    stop_agent
    for _p in $started; do kill -9 "$_p" 2>/dev/null; done
    for _p in $started; do wait "$_p" 2>/dev/null; done
    for _d in $cgroups_made; do
        # A process killed a moment ago may still be leaving the cgroup.
        poll 5000 rmdir "$_d" 2>/dev/null || log "warning: cannot remove cgroup $_d"
    done
    if [ -s "$AGENT_LOG" ]; then
        log "agent log (last 40 lines):"
        tail -n 40 "$AGENT_LOG" | sed 's/^/agent-log: /'
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------
# ready: the agent starts, loads its programs, seeds from /proc and says ready.

check_ready() {
    if start_agent --metrics-addr "127.0.0.1:$METRICS_PORT"; then
        report ready pass "ready after $agent_ready_ms ms"
        return 0
    fi
    if agent_alive; then
        report ready fail "not ready after 120 s; agent log: $(agent_log_tail)"
    else
        report ready fail "the agent exited; agent log: $(agent_log_tail)"
    fi
    return 1
}

# ---------------------------------------------------------------------------------------
# cgroup: a process moved into a new cgroup (in cgroup2 and the v1 memory hierarchy, as
# runc does) resolves with that cgroup's id (its directory's inode) and path. pidmap
# reports the cgroup2 cgroup, or the v1 memory one when the process is at the cgroup2 root
# (pure v1).

resolved_cgroup_is() { # PID ID PATH
    _r=$(resolve "$1")
    [ "$(echo "$_r" | jnum cgroup_id)" = "$2" ] && [ "$(echo "$_r" | jstr cgroup_path)" = "$3" ]
}

check_cgroup() {
    sleep 1000 &
    _p=$!
    track $_p
    _name=pidmap-matrix-$$
    _cg2=$(cgroup2_root)
    _mem=$(v1_root_with memory)
    _roots="$_cg2 $_mem"
    if [ -z "$_cg2" ] && [ -z "$_mem" ]; then
        # Pure v1 without the memory controller: move it like runc would (every
        # hierarchy but cpuset, which needs cpus and mems first), then say what pidmap said.
        _roots=$(v1_roots | grep -v cpuset)
    fi
    for _root in $_roots; do
        mkdir "$_root/$_name" && cgroups_made="$_root/$_name $cgroups_made" &&
            echo "$_p" >"$_root/$_name/cgroup.procs" ||
            { report cgroup fail "cannot move pid $_p into $_root/$_name"; return; }
    done
    if [ -n "$_cg2" ]; then
        _which=cgroup2 _dir=$_cg2/$_name
    elif [ -n "$_mem" ]; then
        _which="v1 memory" _dir=$_mem/$_name
    else
        _r=$(resolve "$_p")
        _id=$(echo "$_r" | jnum cgroup_id)
        _path=$(echo "$_r" | jstr cgroup_path)
        report cgroup skip "no cgroup2 mount and no v1 memory controller (kernel without" \
            "CONFIG_MEMCG_V1): the process is in /$_name of the other v1 hierarchies, which" \
            "pidmap does not track; pidmap said cgroup_id=${_id:-null}" \
            "cgroup_path=${_path:-null} state=$(echo "$_r" | jstr state)"
        return
    fi
    _id=$(stat -c %i "$_dir")
    if poll 5000 resolved_cgroup_is "$_p" "$_id" "/$_name"; then
        report cgroup pass "$_which id $_id path /$_name"
    else
        _r=$(resolve "$_p")
        report cgroup fail "pid $_p in $_which /$_name (inode $_id): pidmap said" \
            "cgroup_id=$(echo "$_r" | jnum cgroup_id) cgroup_path=$(echo "$_r" | jstr cgroup_path)"
    fi
}

# ---------------------------------------------------------------------------------------
# exited: a process that exited (and was reaped) reads `exited` within the grace window.

resolved_state_is() { [ "$(resolve "$1" | jstr state)" = "$2" ]; }

check_exited() {
    "$STATIC_TRUE" &
    _p=$!
    wait $_p
    if poll 5000 resolved_state_is $_p exited; then
        report exited pass "pid $_p exited"
    else
        report exited fail "pid $_p exited and was reaped; pidmap said state=$(resolve $_p | jstr state)"
    fi
}

# ---------------------------------------------------------------------------------------
# pidns: a process in a new pid namespace resolves by its host pid, running, with the
# start time /proc gives.

the_child_of() { _c=$(children_of "$1" | head -n 1); [ -n "$_c" ]; }

resolved_running_since() { # PID START
    _r=$(resolve "$1")
    [ "$(echo "$_r" | jstr state)" = running ] && [ "$(echo "$_r" | jnum start_time)" = "$2" ] &&
        [ "$(echo "$_r" | jnum pid)" = "$1" ]
}

check_pidns() {
    unshare -p -f --mount-proc sleep 1000 &
    _u=$!
    track $_u
    if ! poll 5000 the_child_of $_u; then
        report pidns fail "unshare -p -f (pid $_u) started no child"
        return
    fi
    _p=$_c
    track $_p
    _nspid=$(sed -n 's/^NSpid:[[:space:]]*//p' "/proc/$_p/status" | tr -s '[:space:]' ' ' | sed 's/ $//')
    _start=$(stat_field $_p 22)
    if poll 5000 resolved_running_since $_p "$_start"; then
        report pidns pass "host pid $_p (NSpid $_nspid) running, start_time $_start"
    else
        _r=$(resolve $_p)
        report pidns fail "host pid $_p (NSpid $_nspid, start_time $_start): pidmap said" \
            "pid=$(echo "$_r" | jnum pid) state=$(echo "$_r" | jstr state)" \
            "start_time=$(echo "$_r" | jnum start_time)"
    fi
}

# ---------------------------------------------------------------------------------------
# storm: 2,000 execs of a static true; every exec event arrives and none is lost.

exec_events_reach() { _e=$(exec_events); [ -n "$_e" ] && [ "$_e" -ge "$1" ]; }

check_storm() {
    _e0=$(exec_events)
    _r0=$(status_num events_received)
    _l0=$(status_num events_lost)
    if [ -z "$_e0" ] || [ -z "$_r0" ] || [ -z "$_l0" ]; then
        report storm fail "cannot read the counters (metrics exec=$_e0, status received=$_r0 lost=$_l0)"
        return
    fi
    _t0=$(now_ms)
    _i=0
    while [ $_i -lt $STORM ]; do
        "$STATIC_TRUE"
        _i=$(( _i + 1 ))
    done
    _ms=$(( $(now_ms) - _t0 ))
    poll 30000 exec_events_reach $(( _e0 + STORM ))
    _e1=$(exec_events)
    _r1=$(status_num events_received)
    _l1=$(status_num events_lost)
    _msg="$STORM execs in $_ms ms: exec events +$(( _e1 - _e0 )), events received +$(( _r1 - _r0 )), events_lost $_l1"
    if [ $(( _e1 - _e0 )) -ge $STORM ] && [ "$_l1" -eq 0 ]; then
        report storm pass "$_msg"
    else
        report storm fail "$_msg (want exec events >= +$STORM and events_lost 0)"
    fi
}

# ---------------------------------------------------------------------------------------
# rename: a process that renames itself (/proc/self/comm, as prctl(PR_SET_NAME) does)
# resolves with its new comm. The shell stays alive, so no exec renames it back.

comm_is() { [ "$(cat "/proc/$1/comm" 2>/dev/null)" = "$2" ]; }
resolved_comm_is() { [ "$(resolve "$1" | jstr comm)" = "$2" ]; }

check_rename() {
    sh -c 'printf renamed >/proc/$$/comm; while :; do sleep 1; done' &
    _p=$!
    track $_p
    if ! poll 5000 comm_is $_p renamed; then
        report rename fail "pid $_p did not rename itself: /proc comm=$(cat /proc/$_p/comm)"
        return
    fi
    if poll 1000 resolved_comm_is $_p renamed; then
        report rename pass "pid $_p comm renamed"
    else
        report rename fail "pid $_p renamed itself: /proc/$_p/comm=$(cat /proc/$_p/comm)," \
            "pidmap said comm=$(resolve $_p | jstr comm)"
    fi
}

# ---------------------------------------------------------------------------------------
# orphan: a process whose parent exits is reparented (to init, a subreaper or its pid
# namespace's init); pidmap's ppid must equal field 4 of /proc/PID/stat within 100 ms of
# the reparenting. Two cases: an orphan of a plain shell, and one in a pid namespace. The
# parent shell waits on a fifo until pidmap has seen the child with its first parent, so
# the child's own fork and exec events cannot carry the new parent by accident.

# check_ppid PID: sets _why and fails unless pidmap's ppid matches /proc's within 100 ms
# (the first answer always counts, however long a CLI call takes under TCG).
check_ppid() {
    local t0 got el
    t0=$(now_ms)
    while :; do
        got=$(resolve "$1" | jnum ppid)
        _want=$(stat_field "$1" 4)
        el=$(( $(now_ms) - t0 ))
        [ "$got" = "$_want" ] && return 0
        if [ $el -ge 100 ]; then
            _why="pidmap said ppid=${got:-null}, /proc/$1/stat says ppid $_want (checked for $el ms)"
            return 1
        fi
    done
}

# The first child of PID whose comm is COMM.
child_named() { # PID COMM
    _c=""
    for _k in $(children_of "$1"); do
        if [ "$(cat "/proc/$_k/comm" 2>/dev/null)" = "$2" ]; then
            _c=$_k
            return 0
        fi
    done
    return 1
}

resolved_ppid_is() { [ "$(resolve "$1" | jnum ppid)" = "$2" ]; }
ppid_is_not() { [ "$(stat_field "$1" 4)" != "$2" ]; }

# orphan_case LABEL PARENT: the parent (a shell blocked reading the fifo) has a `sleep`
# child; once pidmap knows that child's parent, the fifo lets the parent exit; then the
# child's ppid must follow. Appends to _passes or _fails.
orphan_case() {
    local label=$1 parent=$2 child
    if ! poll 5000 child_named "$parent" sleep; then
        _fails="${_fails:+$_fails; }$label: shell $parent started no sleep"
        return
    fi
    child=$_c
    track "$child"
    if ! poll 5000 resolved_ppid_is "$child" "$parent"; then
        _fails="${_fails:+$_fails; }$label: before the parent exited, pidmap said ppid=$(resolve "$child" | jnum ppid) for pid $child, whose parent is $parent"
        echo >&3
        return
    fi
    echo >&3 # lets the parent's `read` return
    if ! poll 5000 ppid_is_not "$child" "$parent"; then
        _fails="${_fails:+$_fails; }$label: pid $child was never reparented"
        return
    fi
    if check_ppid "$child"; then
        _passes="${_passes:+$_passes; }$label: pid $child ppid $parent -> $_want"
    else
        _fails="${_fails:+$_fails; }$label: pid $child lost parent $parent: $_why"
    fi
}

check_orphan() {
    _fails=""
    _passes=""
    mkfifo "$WORK/orphan.fifo"
    # Held open read-write, so the shells' `read <fifo` opens at once and one line on fd 3
    # releases one of them.
    exec 3<>"$WORK/orphan.fifo"
    # Case 1: a shell with a background sleep exits; the sleep goes to init or a subreaper.
    sh -c "sleep 1000 & read x <$WORK/orphan.fifo" &
    _sh=$!
    track $_sh
    orphan_case "orphan of an exited shell" $_sh
    wait $_sh
    # Case 2: the same inside a new pid namespace: the orphan goes to the namespace's init.
    unshare -p -f --mount-proc sh -c "sh -c 'sleep 1000 & read x <$WORK/orphan.fifo'; exec sleep 1001" &
    _u=$!
    track $_u
    if poll 5000 the_child_of $_u; then
        _init=$_c
        track "$_init"
        if poll 5000 child_named "$_init" sh; then
            orphan_case "orphan in a pid namespace (init $_init)" "$_c"
        else
            _fails="${_fails:+$_fails; }pid-namespace init $_init started no shell"
        fi
    else
        _fails="${_fails:+$_fails; }unshare -p -f (pid $_u) started no child"
    fi
    exec 3>&-
    rm -f "$WORK/orphan.fifo"
    if [ -z "$_fails" ]; then
        report orphan pass "$_passes"
    else
        report orphan fail "$_fails"
    fi
}

# ---------------------------------------------------------------------------------------
# overflow: an agent with a one-page ring (4 KiB on amd64 and Debian's arm64 kernels: about
# 40 events; the kernel refuses less than a page) that polls once a second and is never
# woken early loses events during an exec storm. It must count the drops, rescan
# /proc, and end with a right table: a long-running process started during the storm
# resolves running with its true start time, and one that exited during the storm does
# not read running.

lost_and_rescanned() { # LOST0 RESCANS0
    _s=$(status_json)
    _l=$(echo "$_s" | jnum events_lost)
    _n=$(echo "$_s" | jnum rescans)
    [ -n "$_l" ] && [ -n "$_n" ] && [ "$_l" -gt "$1" ] && [ "$_n" -gt "$2" ]
}

resolved_not_running() {
    _st=$(resolve "$1" | jstr state)
    [ -n "$_st" ] && [ "$_st" != running ]
}

check_overflow() {
    stop_agent
    export PIDMAP_SOCKET="$WORK/pidmap-small-ring.sock"
    # The page size, from this shell's own mappings (busybox has no getconf).
    _ring=$(awk '/^KernelPageSize:/ { print $2 * 1024; exit }' /proc/self/smaps)
    _ring=${_ring:-4096}
    if ! start_agent --ring-buffer-bytes "$_ring" --ring-poll-ms 1000 --ring-wakeup-events 1000000; then
        report overflow fail "the agent with a $_ring-byte ring did not become ready: $(agent_log_tail)"
        return
    fi
    _l0=$(status_num events_lost)
    _n0=$(status_num rescans)
    _i=0
    while [ $_i -lt $STORM ]; do
        "$STATIC_TRUE"
        if [ $_i -eq $(( STORM / 2 )) ]; then
            sleep 1000 &
            _long=$!
            track $_long
            "$STATIC_TRUE" &
            _short=$!
            wait $_short
        fi
        _i=$(( _i + 1 ))
    done
    if ! poll 30000 lost_and_rescanned "$_l0" "$_n0"; then
        report overflow fail "no drops counted or no rescan after $STORM execs through a" \
            "$_ring-byte ring: events_lost $(status_num events_lost), rescans $(status_num rescans)"
        return
    fi
    _lost=$(status_num events_lost)
    _rescans=$(status_num rescans)
    _start=$(stat_field $_long 22)
    _problems=""
    if ! poll 15000 resolved_running_since $_long "$_start"; then
        _r=$(resolve $_long)
        _problems="long-running pid $_long (start_time $_start) reads state=$(echo "$_r" | jstr state) start_time=$(echo "$_r" | jnum start_time)"
    fi
    if ! poll 15000 resolved_not_running $_short; then
        _problems="${_problems:+$_problems; }pid $_short exited during the storm but reads state=$(resolve $_short | jstr state)"
    fi
    _msg="events_lost $_lost, rescans $_rescans"
    if [ -z "$_problems" ]; then
        report overflow pass "$_msg; pid $_long running since $_start, exited pid $_short reads $(resolve $_short | jstr state)"
    else
        report overflow fail "$_msg; $_problems"
    fi
}

# ---------------------------------------------------------------------------------------

log "kernel $(uname -r); pidmap $("$PIDMAP" --version 2>&1)"
if check_ready; then
    check_cgroup
    check_exited
    check_pidns
    check_storm
    check_rename
    check_orphan
    check_overflow
else
    for _check in $CHECKS; do
        [ "$_check" = ready ] || report "$_check" fail "not run: the agent never became ready"
    done
fi
echo PIDMAP-CHECKS-DONE
