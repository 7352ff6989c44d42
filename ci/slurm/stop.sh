#!/usr/bin/env bash
# Stop what ci/slurm/start.sh started.
set -uo pipefail
scancel --user=root 2>/dev/null
pkill -x slurmd; pkill -x slurmctld; pkill -x munged
for _ in $(seq 1 20); do pgrep -x slurmd >/dev/null || pgrep -x slurmctld >/dev/null || exit 0; sleep 0.5; done
pkill -9 -x slurmd; pkill -9 -x slurmctld
exit 0
