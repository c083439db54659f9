#!/bin/bash
# Run one command on every host of a Cloud TPU VM pod slice (multi-host JAX).
#
#   TPU=my-v4-32 ZONE=us-central2-b tools/launch/tpu_pod.sh setup
#   TPU=my-v4-32 ZONE=us-central2-b tools/launch/tpu_pod.sh train_vlm.py --config=configs/vlm/llava_phi3_mini.py \
#       --config.model.init_from=/mnt/models/llava-phi-3-mini-hf --config.data.tokenizer=/mnt/models/llava-phi-3-mini-hf \
#       --config.data.dataset_dir=/mnt/data/rlds/VLM-all --config.workdir=/mnt/runs/vlm_all
#
# `setup` clones or updates the repository on every worker and installs it with jax[tpu]. A training
# command runs on all workers at once with --config.distributed.auto=true: jax.distributed.initialize()
# then finds the coordinator, the process count and this host's index from the TPU metadata. The
# dataset, model directories and workdir must be paths every worker sees (a Filestore/NFS mount;
# the RLDS reader opens local paths). See docs/launch.md.
set -euo pipefail
: "${TPU:?set TPU to the TPU VM name}"
: "${ZONE:?set ZONE to its zone}"
REPO_URL=${REPO_URL:-}
DIR=${DIR:-c2a-jax}
JAX_VERSION=${JAX_VERSION:-0.10.2}

ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" ${PROJECT:+--project "$PROJECT"} --worker=all --command "$1"
}

if [ "${1:-}" = setup ]; then
  : "${REPO_URL:?set REPO_URL to a git URL the workers can clone}"
  ssh_all "set -e; if [ -d $DIR/.git ]; then git -C $DIR pull --ff-only; else git clone $REPO_URL $DIR; fi; cd $DIR;
    python3 -m venv .venv; .venv/bin/pip install -q -r requirements.txt -c requirements.lock;
    .venv/bin/pip install -q --no-deps -e .; .venv/bin/pip install -q -U 'jax[tpu]==$JAX_VERSION'"
  exit 0
fi
if [ $# -lt 1 ]; then
  echo "usage: $0 setup | <train_vlm.py|train_dp.py> [--config=... ...]" >&2
  exit 2
fi
args=$(printf ' %q' "$@")
ssh_all "cd $DIR && PYTHONPATH=\$PWD .venv/bin/python$args --config.distributed.auto=true"
