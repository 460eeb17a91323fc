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
# Experiment 2 on real data the project has: ResNet-18 pretrained here on MNIST, adapted to new digits
# or to the UCI digits, a grid sized for two CPU cores; ImageNet -> CIFAR-100 needs the weights and data.
TRANSFER_CPU=(-p image_size 32 -y "train_blocks: [last_block]" -y "reference_blocks: [head, all]"
  -y "sparsities: [0.5, 0.9, 0.98]" -p seeds 3 -p epochs 30 -p eval_every 15 -p lr 0.05 -p workers 2
  -p progress False)
chapter 02_transfer_mnist5to9 02_transfer -p source mnist:0-4 -p target mnist:5-9 -p source_epochs 3 \
  -p test_per_class 200 "${TRANSFER_CPU[@]}"
chapter 02_transfer_mnist_to_uci 02_transfer -p source mnist -p target uci_digits -p source_epochs 2 "${TRANSFER_CPU[@]}"
chapter 02_transfer_cifar100 02_transfer -p source imagenet -p target cifar100
# Split-MNIST with an MLP, as van de Ven et al. run it; Split CIFAR-100 with ResNet-18 as the write-up.
chapter 03_snip_ewc_mnist 03_snip_ewc -p dataset mnist -p model lenet300_100 -p seeds 3 -p epochs 4
chapter 03_snip_ewc_cifar100 03_snip_ewc -p dataset cifar100
chapter 04_snip_packnet_mnist 04_snip_packnet -p dataset mnist -p model lenet300_100 -p seeds 3 -p epochs 4
chapter 04_snip_packnet_cifar100 04_snip_packnet -p dataset cifar100

jupyter-book build book/
echo "The report is at book/_build/html/index.html"
