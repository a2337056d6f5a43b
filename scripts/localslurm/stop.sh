#!/usr/bin/env bash
# farlab local SLURM: stop the daemons that start.sh started (PIDs in $LOCALSLURM_STATE, default /tmp/localslurm), nothing else.
# First cancels the jobs of our slurmctld (unless LOCALSLURM_CANCEL_JOBS=0) so no job steps are orphaned.
STATE=${LOCALSLURM_STATE:-/tmp/localslurm}
alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
ctld_pid=$(cat "$STATE/slurmctld.pid" 2>/dev/null || true)
if [ "${LOCALSLURM_CANCEL_JOBS:-1}" = 1 ] && alive "$ctld_pid"; then
  ids=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
  if [ -n "${ids// }" ]; then
    echo "stop.sh: cancelling jobs $ids"; scancel $ids 2>/dev/null || true
    for i in $(seq 1 40); do [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break; sleep 0.5; done
  fi
fi
for d in slurmd slurmctld slurmdbd mariadbd munged; do
  f="$STATE/$d.pid"
  [ -f "$f" ] || continue
  pid=$(cat "$f" 2>/dev/null || true)
  if alive "$pid" && [ "$(cat /proc/$pid/comm 2>/dev/null)" = "$d" ]; then
    kill -TERM "$pid"
    for i in $(seq 1 40); do alive "$pid" || break; sleep 0.25; done
    if alive "$pid"; then echo "stop.sh: $d ($pid) ignored SIGTERM, sending SIGKILL"; kill -KILL "$pid"; fi
    echo "stop.sh: stopped $d (pid $pid)"
  fi
  rm -f "$f"
done
if grep -q 'localslurm sacct shim' /usr/local/bin/sacct 2>/dev/null; then rm -f /usr/local/bin/sacct; fi
echo "stop.sh: done"
