#!/usr/bin/env bash
# Shows the kernel settings that matter for uring-echo and loadgen with tens of
# thousands of connections, next to the recommended value; with --apply, sets
# the ones that differ and writes a script that restores the old values.
# Why each setting matters: docs/kernel-tuning.md.
#
# Testing hook, deliberately not in --help: PROC_ROOT and SYS_ROOT replace /proc
# and /sys for every kernel setting read or written, and --apply then needs no
# root, so the apply path can be exercised on a fake tree:
#   PROC_ROOT=/tmp/fakeproc SYS_ROOT=/tmp/fakesys scripts/tune-kernel.sh --apply --revert-file /tmp/r.sh
# Resource limits (ulimit) and capabilities are always the real ones of this shell.
set -euo pipefail
export LC_ALL=C

PROC_ROOT=${PROC_ROOT:-/proc}
SYS_ROOT=${SYS_ROOT:-/sys}
FAKE_TREE=0
if [[ $PROC_ROOT != /proc || $SYS_ROOT != /sys ]]; then
    FAKE_TREE=1
fi

PROG=${0##*/}
APPLY=0
REVERT_FILE=./tune-kernel-revert.sh
CONNS=50000
# The server's default: one worker per CPU this process may run on (nproc
# honours the affinity mask, as the server does).
WORKERS=$(nproc)
PORT=9999

usage() {
    cat <<EOF
Usage: $PROG [--apply] [--revert-file PATH] [--conns N] [--workers N] [--port N]

Shows each kernel setting that matters for uring-echo and loadgen with many
connections: its current value, the recommended one, and whether it is OK.
Reads /proc/sys and /sys directly (no sysctl binary needed); a setting the
kernel does not have is shown as n/a. Showing needs no root and changes nothing.

  --apply             set every setting marked LOW/HIGH/DIFF/BLOCKED to the
                      recommended value (needs root). Prints each change and the
                      exact commands that undo it, and writes them to a revert
                      script. Changes last until reboot; the output shows the
                      /etc/sysctl.d lines that make them permanent.
                      Resource limits (open files, locked memory) belong to the
                      shell that starts the benchmark and cannot be set from
                      here: --apply prints the ulimit/limits.conf/systemd/docker
                      lines instead. irqbalance, busy polling and seccomp are
                      reported, never changed.
  --revert-file PATH  where --apply writes the revert script
                      (default ./tune-kernel-revert.sh; refuses to overwrite one,
                      since it holds the values from before an earlier --apply)
  --conns N           connections the benchmark opens (default 50000): sizes
                      the open-files, port-range, TIME_WAIT, conntrack and
                      TCP-memory recommendations
  --workers N         uring-echo --workers (default: the number of CPUs,
                      as the server's): io_uring rings, each with
                      its own direct-descriptor table of RLIMIT_NOFILE slots
  --port N            uring-echo --port (default 9999): warned about if it lies
                      inside the ephemeral port range
  -h, --help          this text

Statuses: OK; LOW / HIGH (below / above the recommendation); DIFF (differs);
BLOCKED (io_uring cannot be used by you); uring-only (enough for the io_uring
backend, whose rings sidestep the limit, not for epoll); epoll-only (kernel
too old for the io_uring backend); info (reported only); n/a (absent on this
kernel or host).

Examples:
  show:    $PROG --conns 50000 --workers 8
  apply:   sudo $PROG --apply        (writes ./tune-kernel-revert.sh)
  revert:  sudo sh ./tune-kernel-revert.sh
EOF
}

die() {
    printf '%s: %s\n' "$PROG" "$*" >&2
    exit 1
}

is_uint() {
    [[ $1 =~ ^[0-9]+$ ]]
}

while (($#)); do
    case $1 in
        --apply) APPLY=1 ;;
        --revert-file)
            (($# >= 2)) || die "--revert-file needs a path"
            REVERT_FILE=$2
            shift
            ;;
        --revert-file=*) REVERT_FILE=${1#*=} ;;
        --conns | --workers | --port)
            (($# >= 2)) || die "$1 needs a number"
            if ! is_uint "$2" || (($2 == 0)); then
                die "$1 needs a positive number, not '$2'"
            fi
            case $1 in
                --conns) CONNS=$2 ;;
                --workers) WORKERS=$2 ;;
                --port) PORT=$2 ;;
            esac
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done
[[ -n $REVERT_FILE ]] || die "--revert-file needs a path"

if ((APPLY)) && ((FAKE_TREE == 0)) && ((EUID != 0)); then
    die "--apply writes kernel settings and needs root: sudo $0 --apply $(
        printf '%q ' --revert-file "$REVERT_FILE" --conns "$CONNS" --workers "$WORKERS" --port "$PORT"
    )(without --apply this script only reads, and needs no root)"
fi
if ((APPLY)) && [[ -e $REVERT_FILE ]]; then
    die "$REVERT_FILE already exists: it restores the values from before an earlier --apply. Run it (sudo sh $REVERT_FILE) and remove it, or pass --revert-file with another path. Nothing was changed."
fi

# ---------------------------------------------------------------- reading

# Prints a file's content with runs of blanks squeezed to one space, or n/a.
read_norm() {
    local v
    if ! { v=$(<"$1"); } 2>/dev/null; then
        echo n/a
        return 0
    fi
    local -a parts
    read -ra parts <<<"${v//$'\n'/ }"
    echo "${parts[*]:-}"
}

sysctl_path() {
    printf '%s/sys/%s' "$PROC_ROOT" "${1//.//}"
}

# The word in brackets, e.g. "madvise" from "always [madvise] never".
read_bracketed() {
    local v
    v=$(read_norm "$1")
    if [[ $v =~ \[([^]]+)\] ]]; then
        echo "${BASH_REMATCH[1]}"
    else
        echo "$v"
    fi
}

# a >= b for non-negative integers of any length (fs.file-max can be 2^63-1).
num_ge() {
    local a=$1 b=$2
    if ((${#a} != ${#b})); then
        ((${#a} > ${#b}))
        return
    fi
    [[ $a == "$b" || $a > $b ]]
}

# Single-quotes a value for sh.
shq() {
    printf "'%s'" "${1//\'/\'\\\'\'}"
}

KERNEL_RELEASE=$(read_norm "$PROC_ROOT/sys/kernel/osrelease")
KMAJ=0
KMIN=0
if [[ $KERNEL_RELEASE =~ ^([0-9]+)\.([0-9]+) ]]; then
    KMAJ=${BASH_REMATCH[1]}
    KMIN=${BASH_REMATCH[2]}
fi
kernel_at_least() {
    ((KMAJ > $1 || (KMAJ == $1 && KMIN >= $2)))
}

# Effective capabilities of this shell (real /proc: they describe this process).
CAPEFF=0
if cap_line=$(grep -m1 '^CapEff:' /proc/self/status 2>/dev/null); then
    CAPEFF=$((16#${cap_line##*[[:space:]]}))
fi
has_cap() {
    (((CAPEFF >> $1) & 1))
}
CAP_IPC_LOCK=14
CAP_SYS_ADMIN=21

PAGE_SIZE=$(getconf PAGESIZE 2>/dev/null || echo 4096)
is_uint "$PAGE_SIZE" || PAGE_SIZE=4096
MEM_KB=0
if mem_line=$(grep -m1 '^MemTotal:' "$PROC_ROOT/meminfo" 2>/dev/null); then
    read -r _ MEM_KB _ <<<"$mem_line"
    is_uint "$MEM_KB" || MEM_KB=0
fi

# ---------------------------------------------------------------- the table

PROBLEMS=0
declare -a NOTES=()
# Pending changes for --apply: kind (sysctl|sysfs), label, path, old, new.
declare -a CH_KIND=() CH_LABEL=() CH_PATH=() CH_OLD=() CH_NEW=()

row() {
    printf '%-32s %-28s %-26s %s\n' "$1" "$2" "$3" "$4"
}

note() {
    NOTES+=("$1")
}

# Records a row; a status other than OK/info/n/a counts as a problem.
report() {
    local label=$1 cur=$2 rec=$3 status=$4
    row "$label" "$cur" "$rec" "$status"
    case $status in
        OK* | info | n/a) ;;
        *) PROBLEMS=$((PROBLEMS + 1)) ;;
    esac
}

want_change() {
    CH_KIND+=("$1")
    CH_LABEL+=("$2")
    CH_PATH+=("$3")
    CH_OLD+=("$4")
    CH_NEW+=("$5")
}

# check_sysctl KEY KIND REC NOTE
#   KIND min: OK if current >= REC      max: OK if current <= REC
#        eq:  OK if current == REC      vmin: each field >= REC's (sets the
#        field-wise maximum)            info: reported, never changed
# NOTE is printed under the table when the setting is not OK.
check_sysctl() {
    local key=$1 kind=$2 rec=$3 why=${4:-}
    local path cur status=OK shown target=""
    path=$(sysctl_path "$key")
    cur=$(read_norm "$path")
    case $kind in
        min) shown=">= $rec" ;;
        max) shown="<= $rec" ;;
        vmin) shown=">= $rec" ;;
        *) shown=$rec ;;
    esac
    if [[ $cur == n/a ]]; then
        report "$key" n/a "$shown" n/a
        return 0
    fi
    case $kind in
        min)
            if ! is_uint "$cur" || ! num_ge "$cur" "$rec"; then
                status=LOW
                target=$rec
            fi
            ;;
        max)
            if ! is_uint "$cur" || ! num_ge "$rec" "$cur"; then
                status=HIGH
                target=$rec
            fi
            ;;
        eq)
            if [[ $cur != "$rec" ]]; then
                status=DIFF
                target=$rec
            fi
            ;;
        vmin)
            local -a c r t=()
            local i
            read -ra c <<<"$cur"
            read -ra r <<<"$rec"
            for i in "${!r[@]}"; do
                if [[ ${c[i]:-} =~ ^[0-9]+$ ]] && num_ge "${c[i]}" "${r[i]}"; then
                    t+=("${c[i]}")
                else
                    t+=("${r[i]}")
                    status=LOW
                fi
            done
            [[ $status == OK ]] || target="${t[*]}"
            ;;
        info) status=info ;;
    esac
    report "$key" "$cur" "$shown" "$status"
    if [[ -n $target ]]; then
        want_change sysctl "$key" "$path" "$cur" "$target"
        [[ -z $why ]] || note "$key: $why"
    fi
    return 0
}

echo "uring-echo kernel check: kernel ${KERNEL_RELEASE}, uid $EUID, sized for --conns $CONNS --workers $WORKERS --port $PORT"
if ((FAKE_TREE)); then
    echo "(test mode: kernel settings from PROC_ROOT=$PROC_ROOT SYS_ROOT=$SYS_ROOT)"
fi
echo
row SETTING CURRENT RECOMMENDED STATUS

# -- kernel version
if ((KMAJ == 0)); then
    report kernel n/a ">= 6.0 for io_uring" n/a
elif kernel_at_least 6 0; then
    report kernel "$KERNEL_RELEASE" ">= 6.0 for io_uring" OK
else
    report kernel "$KERNEL_RELEASE" ">= 6.0 for io_uring" "epoll-only"
    note "kernel: uring-echo's io_uring backend needs multishot receive (6.0); run it with --backend epoll here."
fi

# -- open files
FILES_WANTED=$((4 * CONNS))
((FILES_WANTED >= 1048576)) || FILES_WANTED=1048576
check_sysctl fs.nr_open min 1048576 \
    "ceiling for RLIMIT_NOFILE: no process can raise its open-files limit above it."
check_sysctl fs.file-max min "$FILES_WANTED" \
    "system-wide count of open files; every socket is one, io_uring direct descriptors included."

NOFILE_SOFT=$(ulimit -Sn)
NOFILE_HARD=$(ulimit -Hn)
EPOLL_NEEDS=$((CONNS + 1024))
PER_RING=$(((CONNS + WORKERS - 1) / WORKERS))
nofile_ge() {
    [[ $1 == unlimited ]] || num_ge "$1" "$2"
}
if nofile_ge "$NOFILE_SOFT" "$EPOLL_NEEDS"; then
    NOFILE_STATUS=OK
elif nofile_ge "$NOFILE_SOFT" "$PER_RING"; then
    NOFILE_STATUS=uring-only
else
    NOFILE_STATUS=LOW
fi
report "RLIMIT_NOFILE (ulimit -n)" "$NOFILE_SOFT/$NOFILE_HARD" ">= $EPOLL_NEEDS soft" "$NOFILE_STATUS"
if [[ $NOFILE_STATUS != OK ]]; then
    note "RLIMIT_NOFILE: the epoll backend (and any plain-fd client) needs one descriptor per connection: soft limit >= $EPOLL_NEEDS. The io_uring backend accepts into each ring's direct-descriptor table, which the kernel caps at the soft limit per ring, not per process: $WORKERS rings x $NOFILE_SOFT slots, about $PER_RING connections per ring at --conns $CONNS."
fi

# -- ports and connection setup
read -r PORT_LO PORT_HI _ <<<"$(read_norm "$(sysctl_path net.ipv4.ip_local_port_range)") x"
if is_uint "$PORT_LO" && is_uint "$PORT_HI"; then
    PORTS=$((PORT_HI - PORT_LO + 1))
    if ((PORTS >= CONNS)); then
        report net.ipv4.ip_local_port_range "$PORT_LO $PORT_HI" "10000 65535" OK
    else
        report net.ipv4.ip_local_port_range "$PORT_LO $PORT_HI" "10000 65535" LOW
        want_change sysctl net.ipv4.ip_local_port_range "$(sysctl_path net.ipv4.ip_local_port_range)" "$PORT_LO $PORT_HI" "10000 65535"
        note "net.ipv4.ip_local_port_range: $PORTS ephemeral ports per (source IP, destination IP:port); $CONNS connections need $(((CONNS + PORTS - 1) / PORTS)) source addresses (loadgen spreads over 127.0.0.x on loopback, --source-addrs elsewhere), or a wider range."
    fi
    if ((PORT >= PORT_LO && PORT <= PORT_HI)); then
        note "net.ipv4.ip_local_port_range: server port $PORT lies inside it; an outgoing connection can hold it when uring-echo starts (EADDRINUSE). Reserve it: sysctl -w net.ipv4.ip_local_reserved_ports=$PORT"
    fi
else
    report net.ipv4.ip_local_port_range n/a "10000 65535" n/a
fi
check_sysctl net.core.somaxconn min 65535 \
    "caps every listen() backlog, uring-echo's --backlog (default 4096) included; raise both for connection storms."
check_sysctl net.ipv4.tcp_max_syn_backlog min 65535 \
    "SYN queue bound that applies when syncookies are off."
check_sysctl net.ipv4.tcp_syncookies eq 1 \
    "1 sends cookies only when a listener's SYN queue overflows; 2 sends them always (loses TCP options), 0 drops SYNs."
check_sysctl net.ipv4.tcp_tw_reuse eq 1 \
    "1 lets connect() reuse a TIME_WAIT 4-tuple (needs tcp_timestamps); 2, the default, does so only for loopback."
check_sysctl net.ipv4.tcp_fin_timeout max 15 \
    "how long an orphaned socket waits in FIN_WAIT_2; it does not shorten TIME_WAIT (fixed 60 s)."
TW_WANTED=$((2 * CONNS))
check_sysctl net.ipv4.tcp_max_tw_buckets min "$TW_WANTED" \
    "TIME_WAIT sockets beyond it are destroyed early ('time wait bucket table overflow'); 2 x --conns covers two back-to-back runs."

# -- memory
TCP_MEM_MAX=$((CONNS * 2 * 32768 / PAGE_SIZE))
TCP_MEM_CAP=$((MEM_KB * 1024 / PAGE_SIZE / 4))
TCP_MEM_CAPPED=0
if ((TCP_MEM_CAP > 0 && TCP_MEM_MAX > TCP_MEM_CAP)); then
    TCP_MEM_MAX=$TCP_MEM_CAP
    TCP_MEM_CAPPED=1
fi
check_sysctl net.ipv4.tcp_mem vmin "$((TCP_MEM_MAX / 2)) $((TCP_MEM_MAX * 3 / 4)) $TCP_MEM_MAX" \
    "in pages of $PAGE_SIZE bytes (min pressure max) for all TCP sockets together; sized as 2 sockets per connection x 32 KiB queued each."
if ((TCP_MEM_CAPPED)); then
    note "net.ipv4.tcp_mem: the recommendation is capped at a quarter of RAM; $CONNS connections x 32 KiB would need more."
fi
check_sysctl net.ipv4.tcp_rmem vmin "4096 131072 6291456" \
    "per-socket receive buffer bounds (min default max) for autotuning; below the usual kernel defaults here."
check_sysctl net.ipv4.tcp_wmem vmin "4096 16384 4194304" \
    "per-socket send buffer bounds (min default max) for autotuning; below the usual kernel defaults here."
check_sysctl net.core.rmem_max min 4194304 \
    "caps SO_RCVBUF set by a program (uring-echo sets none; autotuning is bounded by tcp_rmem instead)."
check_sysctl net.core.wmem_max min 4194304 \
    "caps SO_SNDBUF set by a program (uring-echo sets none; autotuning is bounded by tcp_wmem instead)."
check_sysctl net.core.netdev_max_backlog min 16384 \
    "per-CPU queue of received packets waiting for the stack; loopback traffic goes through it too."

SOFTNET_DROPS=0
if [[ -r $PROC_ROOT/net/softnet_stat ]]; then
    while read -r _ dropped _; do
        if [[ $dropped =~ ^[0-9a-fA-F]+$ ]]; then
            SOFTNET_DROPS=$((SOFTNET_DROPS + 16#$dropped))
        fi
    done <"$PROC_ROOT/net/softnet_stat"
    if ((SOFTNET_DROPS == 0)); then
        report "softnet drops since boot" 0 0 OK
    else
        report "softnet drops since boot" "$SOFTNET_DROPS" 0 info
        note "softnet drops: packets dropped because netdev_max_backlog was full (column 2 of /proc/net/softnet_stat, per CPU); watch whether it grows during a run."
    fi
else
    report "softnet drops since boot" n/a 0 n/a
fi

# -- conntrack
CT_WANTED=$((4 * CONNS))
((CT_WANTED >= 262144)) || CT_WANTED=262144
if [[ -e $(sysctl_path net.netfilter.nf_conntrack_max) ]]; then
    check_sysctl net.netfilter.nf_conntrack_max min "$CT_WANTED" \
        "one entry per connection, kept 120 s after close (TIME_WAIT); when full, new connections' packets are dropped ('nf_conntrack: table full'). Or exempt benchmark traffic with NOTRACK rules (docs/kernel-tuning.md)."
else
    report net.netfilter.nf_conntrack_max "not loaded" ">= $CT_WANTED if loaded" OK
fi

# -- io_uring
URING_DISABLED=$(read_norm "$(sysctl_path kernel.io_uring_disabled)")
URING_GROUP=$(read_norm "$(sysctl_path kernel.io_uring_group)")
TARGET_USER=${SUDO_USER:-$(id -un 2>/dev/null || echo "uid $EUID")}
user_in_uring_group() {
    is_uint "$URING_GROUP" || return 1
    local g
    for g in $(id -G "$TARGET_USER" 2>/dev/null); do
        [[ $g == "$URING_GROUP" ]] && return 0
    done
    return 1
}
case $URING_DISABLED in
    n/a)
        if kernel_at_least 6 6; then
            report kernel.io_uring_disabled n/a 0 n/a
        else
            report kernel.io_uring_disabled "n/a (before 6.6)" 0 OK
        fi
        ;;
    0) report kernel.io_uring_disabled 0 0 OK ;;
    1)
        if [[ -z ${SUDO_USER:-} ]] && has_cap "$CAP_SYS_ADMIN"; then
            report kernel.io_uring_disabled 1 0 "OK (CAP_SYS_ADMIN)"
        elif user_in_uring_group; then
            report kernel.io_uring_disabled 1 0 "OK (io_uring_group)"
        else
            report kernel.io_uring_disabled 1 0 BLOCKED
            want_change sysctl kernel.io_uring_disabled "$(sysctl_path kernel.io_uring_disabled)" 1 0
            note "kernel.io_uring_disabled: 1 lets only CAP_SYS_ADMIN and members of kernel.io_uring_group create rings; $TARGET_USER is neither, so uring-echo fails with EPERM (use --backend epoll). Instead of 0 you can add $TARGET_USER to a group and set kernel.io_uring_group to its gid."
        fi
        ;;
    *)
        report kernel.io_uring_disabled "$URING_DISABLED" 0 BLOCKED
        want_change sysctl kernel.io_uring_disabled "$(sysctl_path kernel.io_uring_disabled)" "$URING_DISABLED" 0
        note "kernel.io_uring_disabled: 2 makes io_uring_setup fail with EPERM for everyone, root included; uring-echo says so and suggests --backend epoll. It is a security policy: set it back after benchmarking (the revert script does)."
        ;;
esac
if [[ $URING_GROUP == n/a ]]; then
    report kernel.io_uring_group n/a "gid, if disabled=1" n/a
else
    report kernel.io_uring_group "$URING_GROUP" "gid, if disabled=1" info
fi

MEMLOCK_SOFT=$(ulimit -Sl)
MEMLOCK_HARD=$(ulimit -Hl)
MEMLOCK_WANTED=65536
if ! kernel_at_least 5 12 || kernel_at_least 6 14; then
    if has_cap "$CAP_IPC_LOCK" && [[ -z ${SUDO_USER:-} ]]; then
        MEMLOCK_STATUS="OK (CAP_IPC_LOCK)"
    elif nofile_ge "$MEMLOCK_SOFT" "$MEMLOCK_WANTED"; then
        MEMLOCK_STATUS=OK
    else
        MEMLOCK_STATUS=LOW
        note "RLIMIT_MEMLOCK: on this kernel io_uring charges ring memory to the locked-memory limit of the user (before 5.12, and again from 6.14), unless the process has CAP_IPC_LOCK. One uring-echo ring (SQ 4096, CQ 65536 entries) plus its buffer ring takes about 1.4 MiB, and all processes of one user share the limit: $WORKERS workers plus loadgen's rings exceed a default 8192 KiB, and io_uring_setup fails with ENOMEM."
    fi
else
    MEMLOCK_STATUS="OK (not charged)"
fi
report "RLIMIT_MEMLOCK (ulimit -l, KiB)" "$MEMLOCK_SOFT/$MEMLOCK_HARD" ">= $MEMLOCK_WANTED or unlimited" "$MEMLOCK_STATUS"

SECCOMP=$(grep -m1 '^Seccomp:' /proc/self/status 2>/dev/null | tr -dc '0-9' || true)
case $SECCOMP in
    0) report "seccomp (this shell)" "off" "off, or io_uring allowed" OK ;;
    2)
        report "seccomp (this shell)" "filter" "off, or io_uring allowed" info
        note "seccomp: a filter is active (a container runtime's profile?). Docker's default profile blocks io_uring_setup since Docker 25; uring-echo then fails with EPERM and suggests --backend epoll. See docs/kernel-tuning.md for a custom profile."
        ;;
    '') report "seccomp (this shell)" n/a "off, or io_uring allowed" n/a ;;
    *) report "seccomp (this shell)" "strict" "off, or io_uring allowed" info ;;
esac
if [[ -e /.dockerenv || -e /run/.containerenv ]]; then
    note "container: this shell runs in a container. net.* settings are per network namespace (set them with docker run --sysctl), fs.* and kernel.* belong to the host."
fi

# -- busy polling
check_sysctl net.core.busy_poll info "0 (50 for latency)"
check_sysctl net.core.busy_read info "0 (50 for latency)"

# -- transparent huge pages
THP_PATH=$SYS_ROOT/kernel/mm/transparent_hugepage/enabled
THP=$(read_bracketed "$THP_PATH")
if [[ $THP == n/a ]]; then
    report "transparent_hugepage/enabled" n/a madvise n/a
elif [[ $THP == madvise ]]; then
    report "transparent_hugepage/enabled" "$THP" madvise OK
else
    report "transparent_hugepage/enabled" "$THP" madvise DIFF
    want_change sysfs "transparent_hugepage/enabled" "$THP_PATH" "$THP" madvise
    note "transparent_hugepage: 'always' backs the buffer pools (--buf-count x --buf-size per worker) with 2 MiB pages but adds khugepaged/compaction jitter; 'madvise' gives huge pages only to memory that asks (uring-echo does not). Pick one and keep it across compared runs."
fi
THP_DEFRAG=$(read_bracketed "$SYS_ROOT/kernel/mm/transparent_hugepage/defrag")
report "transparent_hugepage/defrag" "$THP_DEFRAG" "madvise" info

# -- CPU frequency governor
declare -a GOV_FILES=()
for f in "$SYS_ROOT"/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor; do
    if [[ -r $f ]]; then
        GOV_FILES+=("$f")
    fi
done
if ((${#GOV_FILES[@]} == 0)); then
    report "cpufreq scaling_governor" "n/a (no cpufreq)" performance n/a
else
    declare -A GOV_COUNT=()
    GOV_OFF=0
    for f in "${GOV_FILES[@]}"; do
        g=$(read_norm "$f")
        GOV_COUNT[$g]=$((${GOV_COUNT[$g]:-0} + 1))
        if [[ $g != performance && $g != n/a ]]; then
            want_change sysfs "${f#"$SYS_ROOT"/devices/system/cpu/}" "$f" "$g" performance
            GOV_OFF=$((GOV_OFF + 1))
        fi
    done
    GOV_SHOWN=""
    for g in "${!GOV_COUNT[@]}"; do
        GOV_SHOWN+="${GOV_SHOWN:+, }$g x${GOV_COUNT[$g]}"
    done
    if ((GOV_OFF == 0)); then
        report "cpufreq scaling_governor" "$GOV_SHOWN" performance OK
    else
        report "cpufreq scaling_governor" "$GOV_SHOWN" performance DIFF
        note "cpufreq: a governor other than performance changes clock speed with load, so throughput and latency drift between runs."
    fi
fi

# -- irqbalance
IRQB_RUNNING=0
if command -v pgrep >/dev/null 2>&1; then
    if pgrep -x irqbalance >/dev/null 2>&1; then
        IRQB_RUNNING=1
    fi
else
    for c in "$PROC_ROOT"/[0-9]*/comm; do
        if [[ $(read_norm "$c") == irqbalance ]]; then
            IRQB_RUNNING=1
            break
        fi
    done
fi
if ((IRQB_RUNNING)); then
    report irqbalance running "stopped if IRQs pinned" info
    note "irqbalance: it moves NIC interrupts between CPUs every 10 s, which undoes manual pinning (/proc/irq/*/smp_affinity_list). Stop it while pinning: systemctl stop irqbalance (revert: systemctl start irqbalance)."
elif command -v irqbalance >/dev/null 2>&1; then
    report irqbalance "installed, not running" "stopped if IRQs pinned" info
else
    report irqbalance "not installed" "stopped if IRQs pinned" info
fi

# ---------------------------------------------------------------- notes

if ((${#NOTES[@]})); then
    echo
    echo "Notes:"
    for n in "${NOTES[@]}"; do
        printf '  - %s\n' "$n"
    done
fi

limit_hints() {
    local show=0
    [[ $NOFILE_STATUS == OK ]] || show=1
    [[ $MEMLOCK_STATUS != LOW ]] || show=1
    ((show)) || return 0
    echo
    echo "Resource limits belong to the shell that starts uring-echo and loadgen; this script cannot raise them. Use one of:"
    if [[ $NOFILE_STATUS != OK ]]; then
        echo "  ulimit -n 1048576                 # that shell; above the hard limit ($NOFILE_HARD) only as root"
        echo "  /etc/security/limits.d/90-uring-echo.conf: '* soft nofile 1048576' and '* hard nofile 1048576' (next login)"
        echo "  systemd unit: LimitNOFILE=1048576;  docker run --ulimit nofile=1048576:1048576"
        echo "  prlimit --pid PID --nofile=1048576:1048576   # running process; epoll only: a ring's table is sized at start"
    fi
    if [[ $MEMLOCK_STATUS == LOW ]]; then
        echo "  ulimit -l unlimited               # that shell, as root (or raise the hard limit first)"
        echo "  /etc/security/limits.d/90-uring-echo.conf: '* soft memlock unlimited' and '* hard memlock unlimited'"
        echo "  systemd unit: LimitMEMLOCK=infinity;  docker run --ulimit memlock=-1:-1 (or --cap-add IPC_LOCK)"
    fi
    return 0
}

# ---------------------------------------------------------------- show only

if ((APPLY == 0)); then
    limit_hints
    echo
    if ((PROBLEMS == 0)); then
        echo "All checked settings are as recommended."
    else
        echo "$PROBLEMS setting(s) differ from the recommendation. sudo $0 --apply sets the kernel ones and writes a revert script."
    fi
    exit 0
fi

# ---------------------------------------------------------------- apply

echo
if ((${#CH_PATH[@]} == 0)); then
    echo "Nothing to change; no revert script written."
    limit_hints
    exit 0
fi

# Writes a value the way `sysctl -w` does: one write to the file.
write_value() {
    { printf '%s\n' "$2" >"$1"; } 2>/dev/null
}

read_back() {
    if [[ $1 == sysfs && $2 == */transparent_hugepage/* ]]; then
        read_bracketed "$2"
    else
        read_norm "$2"
    fi
}

revert_command() { # kind label path old
    if [[ $1 == sysctl ]] && ((FAKE_TREE == 0)); then
        printf 'sysctl -w %s=%s' "$2" "$(shq "$4")"
    else
        printf 'echo %s > %s' "$(shq "$4")" "$(shq "$3")"
    fi
}

declare -a DONE_I=()
FAILED=0
echo "Applying:"
for i in "${!CH_PATH[@]}"; do
    kind=${CH_KIND[i]} label=${CH_LABEL[i]} path=${CH_PATH[i]} old=${CH_OLD[i]} new=${CH_NEW[i]}
    if ! write_value "$path" "$new"; then
        printf '  FAILED  %s: could not write %s (read-only /proc/sys in a container, or a non-initial network namespace?)\n' "$label" "$path"
        FAILED=$((FAILED + 1))
        continue
    fi
    got=$(read_back "$kind" "$path")
    if [[ $got == "$new" ]]; then
        printf '  set     %s: %s -> %s\n' "$label" "$old" "$got"
    else
        printf '  set     %s: %s -> %s (wrote %s; the kernel adjusted it)\n' "$label" "$old" "$got" "$new"
    fi
    DONE_I+=("$i")
done

if ((${#DONE_I[@]})); then
    {
        echo "#!/bin/sh"
        echo "# Written by scripts/tune-kernel.sh --apply on $(date -u '+%Y-%m-%d %H:%M:%S UTC'), kernel $KERNEL_RELEASE."
        echo "# Restores the values that run changed, newest first. Run as root: sudo sh $REVERT_FILE"
        echo "set -e"
        # shellcheck disable=SC2016 # written literally into the revert script
        printf '%s\n' 'w() { printf '\''%s\n'\'' "$2" > "$1" && echo "restored $1 = $2"; }'
        for ((j = ${#DONE_I[@]} - 1; j >= 0; j--)); do
            i=${DONE_I[j]}
            printf 'w %s %s   # %s, was set to %s\n' "$(shq "${CH_PATH[i]}")" "$(shq "${CH_OLD[i]}")" "${CH_LABEL[i]}" "${CH_NEW[i]}"
        done
    } >"$REVERT_FILE"
    chmod +x "$REVERT_FILE"

    echo
    echo "To revert (also written to $REVERT_FILE; run it with: sudo sh $REVERT_FILE):"
    for ((j = ${#DONE_I[@]} - 1; j >= 0; j--)); do
        i=${DONE_I[j]}
        printf '  %s\n' "$(revert_command "${CH_KIND[i]}" "${CH_LABEL[i]}" "${CH_PATH[i]}" "${CH_OLD[i]}")"
    done

    persist=()
    for i in "${DONE_I[@]}"; do
        if [[ ${CH_KIND[i]} == sysctl ]]; then
            persist+=("${CH_LABEL[i]} = ${CH_NEW[i]}")
        fi
    done
    if ((${#persist[@]})); then
        echo
        echo "These last until reboot. To keep the sysctls, put these lines in /etc/sysctl.d/90-uring-echo.conf:"
        printf '  %s\n' "${persist[@]}"
    fi
else
    echo
    echo "Nothing was changed; no revert script written."
fi

limit_hints
if ((FAILED)); then
    echo
    echo "$FAILED setting(s) could not be written."
    exit 1
fi
exit 0
