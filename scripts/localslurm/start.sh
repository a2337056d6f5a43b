#!/usr/bin/env bash
# farlab local SLURM: start a real single-node SLURM cluster on this machine (munged, slurmctld, slurmd; root; no systemd).
# Used by tests/slurm (fixture `slurm_cluster`) and CI; adapted from the shared localslurm infrastructure scripts.
# Idempotent: installs the Debian 12 packages if missing, renders slurm.conf.template into /etc/slurm/slurm.conf,
# starts only the daemons that are not already running, installs the sacct shim, waits until the node is idle.
# Daemons it starts are recorded as $LOCALSLURM_STATE/<name>.pid (default /tmp/localslurm); stop.sh stops exactly those.
# Exit codes: 0 up; 77 this machine cannot run it (not root, no apt-get, package install failed) -> tests skip;
#             anything else: a real start failure (see /var/log/slurm/*.log) -> tests fail.
# Env: LOCALSLURM_STATE, LOCALSLURM_WAIT_S (default 60),
#      LOCALSLURM_ACCOUNTING=1 (also install+run MariaDB and slurmdbd so the real sacct works; ~10 s more),
#      LOCALSLURM_CGROUP=1 (cgroup v1 process tracking + memory enforcement),
#      LOCALSLURM_SACCT_SHIM=0 (do not install the sacct shim as /usr/local/bin/sacct; default: install it when accounting is off).
set -euo pipefail
SKIP=77   # "cannot run on this machine" (autotools convention); the pytest fixture turns it into a skip
[ "$(id -u)" = 0 ] || { echo "start.sh: must run as root (it installs packages and runs the daemons)" >&2; exit $SKIP; }
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
STATE=${LOCALSLURM_STATE:-/tmp/localslurm}
WAIT_S=${LOCALSLURM_WAIT_S:-60}
t0=$(date +%s)
mkdir -p "$STATE"
alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
pid_of() { cat "$1" 2>/dev/null || true; }
wait_pidfile() { for i in $(seq 1 100); do [ -s "$1" ] && alive "$(cat "$1")" && return 0; sleep 0.05; done
                 echo "start.sh: no live pid in $1; see /var/log/slurm/*.log" >&2; return 1; }

# 1. packages
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sinfo >/dev/null \
   || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || { echo "start.sh: SLURM is not installed and apt-get is unavailable" >&2; exit $SKIP; }
  echo "start.sh: installing slurmctld slurmd slurm-client munge"
  export DEBIAN_FRONTEND=noninteractive
  # try without an update first (fast when the package lists are present), then refresh the lists
  if ! apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null 2>&1; then
    { apt-get update -qq >/dev/null && apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null; } \
      || { echo "start.sh: apt-get could not install slurmctld slurmd slurm-client munge (offline?)" >&2; exit $SKIP; }
  fi
fi

# 2. munge: key, runtime dirs, daemon (as the munge user, like the packaged unit)
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge /etc/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  echo "start.sh: munged already running"
else
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged
  for i in $(seq 1 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
  cp /run/munge/munged.pid "$STATE/munged.pid"
  munge -n | unmunge >/dev/null || { echo "start.sh: munge self-test failed; see /var/log/munge/munged.log" >&2; exit 1; }
  echo "start.sh: started munged pid $(pid_of "$STATE/munged.pid")"
fi

# 3. slurm.conf
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 2048 ))
DEFMEM_MB=$(( MEM_MB / CPUS ))
ACCT=${LOCALSLURM_ACCOUNTING:-0}
if [ "${LOCALSLURM_CGROUP:-0}" = 1 ]; then PROCTRACK=proctrack/cgroup; TASKPLUGIN=task/cgroup,task/affinity
else PROCTRACK=proctrack/linuxproc; TASKPLUGIN=task/none; fi
cat > /etc/slurm/cgroup.conf <<CG
# written by localslurm start.sh; used only when slurm.conf says proctrack/cgroup (LOCALSLURM_CGROUP=1)
CgroupPlugin=cgroup/v1
CgroupMountpoint=/sys/fs/cgroup
ConstrainCores=yes
ConstrainRAMSpace=yes
ConstrainSwapSpace=no
CG
if [ "$ACCT" = 1 ]; then ACCT_STORAGE=accounting_storage/slurmdbd; JOBACCT=jobacct_gather/linux
else ACCT_STORAGE=accounting_storage/none; JOBACCT=jobacct_gather/none; fi
sed -e "s/@HOST@/$HOST/g" -e "s/@CPUS@/$CPUS/g" -e "s/@MEM_MB@/$MEM_MB/g" -e "s/@DEFMEM_MB@/$DEFMEM_MB/g" -e "s#@STATE@#$STATE#g" \
    -e "s#@ACCT_STORAGE@#$ACCT_STORAGE#g" -e "s#@PROCTRACK@#$PROCTRACK#g" -e "s#@TASKPLUGIN@#$TASKPLUGIN#g" -e "s#@JOBACCT_GATHER@#$JOBACCT#g" \
    "$HERE/slurm.conf.template" > "$STATE/slurm.conf.new"
conf_changed=0
if ! cmp -s "$STATE/slurm.conf.new" /etc/slurm/slurm.conf; then
  mv "$STATE/slurm.conf.new" /etc/slurm/slurm.conf; conf_changed=1
else
  rm -f "$STATE/slurm.conf.new"
fi

# 3b. optional accounting: MariaDB (by hand, no systemd) + slurmdbd; the cluster must exist in the DB before slurmctld
if [ "$ACCT" = 1 ]; then
  if ! command -v slurmdbd >/dev/null || ! command -v mariadbd >/dev/null; then
    echo "start.sh: installing mariadb-server slurmdbd"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mariadb-server slurmdbd >/dev/null \
      || { apt-get update -qq >/dev/null; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mariadb-server slurmdbd >/dev/null; }
  fi
  install -d -o mysql -g root -m 0755 /run/mysqld
  if mysqladmin ping >/dev/null 2>&1; then
    echo "start.sh: mariadb already running"
  else
    rm -f /run/mysqld/mysqld.pid
    nohup /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 >/var/log/slurm/mariadbd.log 2>&1 &
    for i in $(seq 1 100); do mysqladmin ping >/dev/null 2>&1 && break; sleep 0.1; done
    cp /run/mysqld/mysqld.pid "$STATE/mariadbd.pid"
    echo "start.sh: started mariadbd pid $(pid_of "$STATE/mariadbd.pid")"
  fi
  mysql -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'localslurm'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
  cat > "$STATE/slurmdbd.conf.new" <<DBD
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=/var/log/slurm/slurmdbd.log
PidFile=$STATE/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=localslurm
StorageLoc=slurm_acct_db
DBD
  install -m 0600 "$STATE/slurmdbd.conf.new" /etc/slurm/slurmdbd.conf; rm -f "$STATE/slurmdbd.conf.new"
  dbd_pid=$(pid_of "$STATE/slurmdbd.pid")
  if alive "$dbd_pid" && [ "$(cat /proc/$dbd_pid/comm)" = slurmdbd ]; then
    echo "start.sh: slurmdbd already running (pid $dbd_pid)"
  else
    rm -f "$STATE/slurmdbd.pid"; slurmdbd; wait_pidfile "$STATE/slurmdbd.pid"
    for i in $(seq 1 100); do sacctmgr -n -P list cluster format=cluster >/dev/null 2>&1 && break; sleep 0.1; done
    echo "start.sh: started slurmdbd pid $(pid_of "$STATE/slurmdbd.pid")"
  fi
  sacctmgr -n -P list cluster format=cluster | grep -qx localci || sacctmgr -i add cluster localci >/dev/null
fi

# 4. slurmctld and slurmd (both daemonize and write their pid files into $STATE, see the template)
ctld_pid=$(pid_of "$STATE/slurmctld.pid"); slurmd_pid=$(pid_of "$STATE/slurmd.pid")
stop_pid() { alive "$1" || return 0; kill -TERM "$1"; for i in $(seq 1 100); do alive "$1" || return 0; sleep 0.1; done; kill -KILL "$1"; }
if [ "$conf_changed" = 1 ]; then   # e.g. accounting switched on/off: plugins change only on restart
  for p in "$slurmd_pid" "$ctld_pid"; do
    if alive "$p" && case "$(cat /proc/$p/comm)" in slurmd|slurmctld) true;; *) false;; esac; then
      echo "start.sh: slurm.conf changed, restarting $(cat /proc/$p/comm) (pid $p)"; stop_pid "$p"
    fi
  done
fi
if alive "$ctld_pid" && [ "$(cat /proc/$ctld_pid/comm)" = slurmctld ]; then
  echo "start.sh: slurmctld already running (pid $ctld_pid)"
else
  rm -f "$STATE/slurmctld.pid"; slurmctld; wait_pidfile "$STATE/slurmctld.pid"
  echo "start.sh: started slurmctld pid $(pid_of "$STATE/slurmctld.pid")"
fi
if alive "$slurmd_pid" && [ "$(cat /proc/$slurmd_pid/comm)" = slurmd ]; then
  echo "start.sh: slurmd already running (pid $slurmd_pid)"
else
  rm -f "$STATE/slurmd.pid"; slurmd; wait_pidfile "$STATE/slurmd.pid"
  echo "start.sh: started slurmd pid $(pid_of "$STATE/slurmd.pid")"
fi

# 5. sacct shim (no slurmdbd here; submitit needs sacct to see jobs that died without a result file)
if [ "$ACCT" = 1 ]; then
  grep -q 'localslurm sacct shim' /usr/local/bin/sacct 2>/dev/null && rm -f /usr/local/bin/sacct   # real sacct works
elif [ "${LOCALSLURM_SACCT_SHIM:-1}" = 1 ]; then
  if [ ! -e /usr/local/bin/sacct ] || grep -q 'localslurm sacct shim' /usr/local/bin/sacct 2>/dev/null; then
    install -m 0755 "$HERE/sacct-shim" /usr/local/bin/sacct
  else
    echo "start.sh: /usr/local/bin/sacct exists and is not ours; leaving it" >&2
  fi
fi

# 6. wait for the node
for i in $(seq 1 $((WAIT_S * 2))); do
  st=$(sinfo -h -n "$HOST" -o %t 2>/dev/null || true)
  case "$st" in
    idle|mix|alloc)
      # sinfo can show the state recovered from /var/spool before slurmd has registered: prove it with a real step.
      if timeout 20 srun -N1 -n1 -t 1 -J start-probe true >/dev/null 2>&1; then
        echo "start.sh: slurm up in $(( $(date +%s) - t0 )) s: node $HOST state=$st cpus=$CPUS mem=${MEM_MB}MB partition=debug"
        exit 0
      fi;;
    down*|drain*|drng*) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true;;
  esac
  sleep 0.5
done
echo "start.sh: node $HOST not idle after ${WAIT_S}s (state '$st'); see /var/log/slurm/*.log" >&2
exit 1
