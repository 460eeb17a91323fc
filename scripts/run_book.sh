#!/usr/bin/env bash
# The main job: execute every chapter's notebook with papermill into book/experiments/, then build
# the report. Extra arguments go to every papermill call, e.g. `bash scripts/run_book.sh -p seeds 5`;
# ONLY=REGEX runs just the chapters whose name matches, e.g. ONLY=mnist or ONLY='^01_'.
#
# A chapter whose run fails (say, its dataset is not on this machine and cannot be downloaded) gets
# the unexecuted notebook instead, so the book still builds and says plainly that it has no numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p book/experiments

chapter() {  # chapter NAME NOTEBOOK [papermill arguments...]
  local name=$1 notebook=notebooks/$2.ipynb
  shift 2
  if [[ -n "${ONLY:-}" && ! "$name" =~ $ONLY ]]; then return; fi
  echo "== $name"
  local tmp
  tmp=$(mktemp --suffix .ipynb)
  if papermill "$notebook" "$tmp" "$@" "${EXTRA[@]}"; then
    mv "$tmp" "book/experiments/$name.ipynb"
  else
    echo "!! $name did not run; the book gets the unexecuted notebook" >&2
    cp "$notebook" "book/experiments/$name.ipynb"
    rm -f "$tmp"
  fi
}

EXTRA=("$@")
chapter 00_snip_mnist 00_snip_mnist
# MNIST is the real data the project's own machines have: a grid sized for a CPU.
chapter 01_few_shot_mnist 01_few_shot -p dataset mnist -y "models: [simple_convnet]" \
  -y "sparsities: [0.9, 0.95]" -p seeds 3 -p eval_every 15 -p workers 2
chapter 01_few_shot_cifar100 01_few_shot -p dataset cifar100
# Split-MNIST with an MLP, as van de Ven et al. run it; Split CIFAR-100 with ResNet-18 as the write-up.
chapter 03_snip_ewc_mnist 03_snip_ewc -p dataset mnist -p model lenet300_100 -p seeds 3 -p epochs 4
chapter 03_snip_ewc_cifar100 03_snip_ewc -p dataset cifar100
chapter 04_snip_packnet_mnist 04_snip_packnet -p dataset mnist -p model lenet300_100 -p seeds 3 -p epochs 4
chapter 04_snip_packnet_cifar100 04_snip_packnet -p dataset cifar100
# MNIST rotations (digit x 0/90/180/270 as classes), sized for a 2-core CPU: what was cut is said in the chapter.
chapter 06_sparse_maml_mnist 06_sparse_maml -p dataset mnist_rotations -p filters 16 -p inner_steps 1 \
  -p eval_inner_steps 3 -p inner_lr 0.4 -p iterations 400 -p val_episodes 50 -p seeds 3 -p workers 2 -p progress False

jupyter-book build book/
echo "The report is at book/_build/html/index.html"
