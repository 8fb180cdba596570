#!/usr/bin/env bash
# Start an alignlab GPU worker on a RunPod pod (or any GPU box).
#
# Needs, in the pod's environment (RunPod: "Environment Variables", ideally as RunPod secrets):
#   REDIS_URL         the dashboard side's Redis, with its password: redis://:PASSWORD@127.0.0.1:6379/0 through
#                     an SSH tunnel (see docs/runpod.md), or rediss://:PASSWORD@host:6380/0 over TLS
# Optional:
#   ALIGNLAB_VOLUME   the network volume (default /workspace): artifacts, checkpoints, the HF cache
#   ALIGNLAB_QUEUES   queues to serve (default gpu,cpu; gpu-80gb on an 80 GB card)
#   HF_TOKEN          gated models; stays in this process's environment
# A spot preemption sends SIGTERM: the running training stage saves a checkpoint on the volume and its job is
# requeued at once; the next worker on any pod with the same volume resumes from that checkpoint.
set -euo pipefail

if [[ -z "${REDIS_URL:-}" ]]; then
  echo "runpod_start.sh: REDIS_URL is not set: give the dashboard's Redis with its password (docs/runpod.md)" >&2
  exit 2
fi
volume="${ALIGNLAB_VOLUME:-/workspace}"
export ALIGNLAB_HOME="${ALIGNLAB_HOME:-$volume/alignlab}"
export HF_HOME="${HF_HOME:-$volume/hf}"
mkdir -p "$ALIGNLAB_HOME" "$HF_HOME"

cd "$(dirname "$0")/.."
if ! python -c "import workers, pipeline" 2>/dev/null; then
  pip install --no-cache-dir -e '.[gpu]'   # the pod's image brings CUDA torch: no `cpu` extra
fi

python -m workers.health redis            # fails fast on a wrong password or a dead tunnel
alignlab preflight --checks-only          # GPU, driver, bitsandbytes, disk, memory; the DAG check runs from the dashboard
# exec: the worker gets SIGTERM directly from RunPod and has the 5-second grace to checkpoint and requeue
exec python -m workers --queues "${ALIGNLAB_QUEUES:-gpu,cpu}"
