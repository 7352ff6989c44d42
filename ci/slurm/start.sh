#!/usr/bin/env bash
# Start a single-node Slurm cluster (munged, slurmctld, slurmd) on this machine, as root, without
# systemd, for the Slurm executor's tests. Idempotent: does nothing when sinfo already answers.
#   bash ci/slurm/start.sh        # then: sinfo, sbatch, ...   stop with: bash ci/slurm/stop.sh
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
state="${STILTS_SLURM_STATE:-/var/lib/stilts-slurm}"

if timeout 5 sinfo -h -o %T 2>/dev/null | grep -q idle; then echo "slurm: already up"; exit 0; fi
for exe in munged slurmctld slurmd sinfo; do
  command -v "$exe" >/dev/null || { echo "slurm: $exe not found (apt-get install slurmctld slurmd slurm-client munge)" >&2; exit 1; }
done

# munge: /run/munge must exist; munged runs as the munge user with a key only it can read
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge
[ -s /etc/munge/munge.key ] || { dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; }
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
pgrep -x munged >/dev/null || su -s /bin/sh munge -c "/usr/sbin/munged"

# two fake GPUs: GRES File= lines must be character devices, or CUDA_VISIBLE_DEVICES is not set
for i in 0 1; do [ -c "/dev/stilts-fake-gpu$i" ] || mknod "/dev/stilts-fake-gpu$i" c 1 3; done

mkdir -p "$state/ctld" "$state/d" /etc/slurm
node="$(slurmd -C | head -1)"
host="$(hostname -s)"
sed -e "s|@NODE@|$node|" -e "s|@HOST@|$host|" -e "s|@STATE@|$state|g" "$here/slurm.conf.in" > /etc/slurm/slurm.conf
echo "NodeName=$host Name=gpu File=/dev/stilts-fake-gpu[0-1]" > /etc/slurm/gres.conf


slurmctld -c -i   # -c: a clean state (no jobs from an earlier run); it may exit 0 and die later
slurmd
# wait on sinfo, not on the daemons' exit codes
for _ in $(seq 1 60); do
  if timeout 5 sinfo -h -o %T 2>/dev/null | grep -q idle; then echo "slurm: node idle"; exit 0; fi
  sleep 0.5
done
echo "slurm: the node did not become idle; logs:" >&2
tail -n 20 "$state/slurmctld.log" "$state/slurmd.log" >&2 || true
sinfo -N -l >&2 || true
exit 1
