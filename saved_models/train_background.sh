#!/usr/bin/env bash
# The background models of the likelihood-ratio detector (Ren et al., 2019):
# for each foreground model, a grid of short runs on perturbed training images
# (mutation rate MU; L2 weight decay LAMBDA), the choice among them on
# validation OOD sets that are not the test pair (tfp_ood.experiments.background_search),
# then the chosen run trained on to the foreground's step count and exported to
# saved_models/background_<model>. Every run resumes from its checkpoint when the
# script is started again. From the repository root, with a frozen copy of the
# code for long runs (see saved_models/train.sh):
#
#     bash saved_models/train_background.sh DATA_DIR [RUNS_DIR] [MODEL...]
#
# The learning rate is half the foreground's: at 1e-3 a FashionMNIST Glow on
# perturbed images (MU 0.1) diverged after 1,057 steps (loss 1e19). At 5e-4 it
# trained, but after 1,500 steps a few clean test images got astronomically
# low likelihoods (mean 1.3e13 bits/dim): hence weight decay in the grid. With
# weight decay 0.01 (MU 0.1, 5e-4) it diverged at step 1,371 (loss 1e24).
set -euo pipefail
DATA=${1:?usage: bash saved_models/train_background.sh DATA_DIR [RUNS_DIR] [MODEL...]}
RUNS=${2:-runs}
shift $(( $# < 2 ? $# : 2 ))
MODELS=${*:-glow_fashion_mnist glow_cifar10 pixelcnn_cifar10 pixelcnn_fashion_mnist}
T="python -m tfp_ood.cli"
# The grid (each can be set in the environment, e.g. MUS="0.1" LAMBDAS=0).
GRID_STEPS=${GRID_STEPS:-1500}
MUS=${MUS:-"0.1 0.2"}
# In nats per image: the kernels of the cpu Glows sum to about 6,000 in squares, so
# 0.01 adds about 4% to a FashionMNIST Glow's negative log-likelihood.
LAMBDAS=${LAMBDAS:-"0 0.01"}
# The decay of the weights' moving average that is evaluated and exported
# (--ema-decay; 0: none): the ratio of two short-trained models moves with every
# step of the optimizer.
EMA=${EMA:-0}
TAG=$([ "$EMA" = 0 ] || echo "_ema$EMA")  # In run and search folder names.

# name -> "family dataset eval-set full-steps batch-size learning-rate clip-norm
# model-flags": the foreground's steps and batch; the PixelCNN++ keeps its 1e-3
# and clip 50. The Glows learn slower, and their flow steps only shrink on the
# way from image to latent (--coupling-scale contracting): with the default
# symmetric scales a FashionMNIST background (mu 0.1, 2e-4, clip 10) diverged
# again at step 1,118; in its last checkpoint the coupling scales of a
# perturbed image saturated at e^3 from the 12th step of level 0 on, each step
# multiplying its latent by about 10, up to 1e17.
declare -A SPEC=(
  [glow_fashion_mnist]="glow fashion_mnist fashion_mnist:test[:2000] 5000 64 5e-4 10 --coupling-scale=contracting"
  [glow_cifar10]="glow cifar10 cifar10:test[:2000] 10000 64 5e-4 10 --coupling-scale=contracting"
  [pixelcnn_cifar10]="pixelcnn cifar10 cifar10:test[:2000] 3000 32 1e-3 50"
  [pixelcnn_fashion_mnist]="pixelcnn fashion_mnist fashion_mnist:test[:2000] 3000 32 1e-3 50"
)

for model in $MODELS; do
  read -r family dataset eval_set full_steps batch lr clip model_flags <<< "${SPEC[$model]}"
  candidates=()
  for mu in $MUS; do
    for lambda in $LAMBDAS; do
      dir="$RUNS/background_$model/mu${mu}_wd${lambda}$TAG"
      $T train --model "$family" --config cpu --dataset "$dataset" --split train \
        --eval "$eval_set" --mutation-rate "$mu" --weight-decay "$lambda" --ema-decay "$EMA" \
        --learning-rate "$lr" --clip-norm "$clip" ${model_flags:-} --batch-size "$batch" --steps "$GRID_STEPS" --eval-every 500 \
        --checkpoint-every 250 --workdir "$dir" --data-dir "$DATA" --no-progress \
        || echo "$dir: stopped with an error (see above); left out of the search"
      if grep -q '"stop_reason": "completed"' "$dir/provenance.json" 2>/dev/null; then
        candidates+=(--background "$dir")
      fi
    done
  done
  # Searched once: afterwards the chosen run trains on past GRID_STEPS, and a second
  # search would compare it, longer trained, against the others.
  if [ ! -f "$RUNS/background_$model/search$TAG/search.json" ]; then
    python -m tfp_ood.experiments.background_search --foreground "saved_models/$model" "${candidates[@]}" \
      --data-dir "$DATA" --out "$RUNS/background_$model/search$TAG"
  fi
  chosen=$(python -c "import json, sys; print(json.load(open(sys.argv[1]))['chosen'])" \
    "$RUNS/background_$model/search$TAG/search.json")
  read -r mu lambda <<< "$(python -c "import json, sys; c = json.load(open(sys.argv[1]))['train']; print(c['mutation_rate'], c['weight_decay'])" "$chosen/config.json")"
  $T train --model "$family" --config cpu --dataset "$dataset" --split train \
    --eval "$eval_set" --mutation-rate "$mu" --weight-decay "$lambda" --ema-decay "$EMA" \
    --learning-rate "$lr" --clip-norm "$clip" ${model_flags:-} --batch-size "$batch" --steps "$full_steps" --eval-every 500 \
    --checkpoint-every 250 --workdir "$chosen" --data-dir "$DATA" --no-progress
  $T export --workdir "$chosen" --output "saved_models/background_$model" --overwrite
  cp "$chosen/history.jsonl" "saved_models/background_${model}_history.jsonl"
  cp "$RUNS/background_$model/search$TAG/search.md" "saved_models/background_${model}_search.md"
done
