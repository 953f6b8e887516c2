#!/usr/bin/env bash
# The commands that train the shipped models (cpu configuration, on the offline
# arrays of ../shared/data), then export them into saved_models/. Each run
# resumes from its checkpoint when started again, so this script can be rerun
# after an interruption. Run it from the repository root:
#
#     bash saved_models/train.sh [DATA_DIR] [RUNS_DIR]
#
# Long runs should use a frozen copy of the code (see the README: autograph
# re-reads source files when it traces), e.g. `git worktree add ../tfp_ood_frozen`
# and `PYTHONPATH=../tfp_ood_frozen bash saved_models/train.sh`.
set -euo pipefail
DATA=${1:-../shared/data}
RUNS=${2:-runs}
T="python -m tfp_ood.cli"

$T train --model glow --config cpu --dataset cifar10 --split train \
  --eval 'cifar10:test[:2000]' --eval 'svhn_cropped:test[:2000]' --eval 'cifar10:train[:2000]' \
  --workdir "$RUNS/glow_cifar10" --steps 10000 --data-dir "$DATA"
$T train --model cv_glow --config cpu --dataset cifar10 --split train \
  --eval 'cifar10:test[:2000]' --eval 'svhn_cropped:test[:2000]' --eval 'cifar10:train[:2000]' \
  --workdir "$RUNS/cvglow_cifar10" --steps 10000 --data-dir "$DATA"
# SVHN's offline copy has no train split: the first 7,000 test images train,
# the other 3,000 are held out.
$T train --model glow --config cpu --dataset svhn_cropped --split 'test[:7000]' \
  --eval 'svhn_cropped:test[7000:]' --eval 'cifar10:test[:2000]' \
  --workdir "$RUNS/glow_svhn" --steps 3000 --data-dir "$DATA"
$T train --model glow --config cpu --dataset fashion_mnist --split train \
  --eval 'fashion_mnist:test[:2000]' --eval 'mnist:test[:2000]' \
  --workdir "$RUNS/glow_fashion_mnist" --steps 8000 --data-dir "$DATA"

for name in glow_cifar10 cvglow_cifar10 glow_svhn glow_fashion_mnist; do
  $T export --workdir "$RUNS/$name" --output "saved_models/$name" --overwrite
done
