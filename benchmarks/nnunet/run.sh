#!/usr/bin/env bash
# nnU-Net v2 on OpenKBP at delineo's CPU budget (issue 20). Every stage resumes; run from the repo root.
#   benchmarks/nnunet/run.sh convert|plan|train|predict|score|all
# NNUNET_ROOT (runs/nnunet), NNUNET_DATASET (501), NNUNET_HOURS (1.5 CPU-hours), NNUNET_THREADS (torch
# threads in training; 2), NNUNET_FOLD (all: every training case, as delineo trains on them all),
# NNUNET_ITERS (iterations per epoch; 10: the budget is checked once an epoch), NNUNET_OUT (where the
# scored report goes; benchmarks/results/nnunet-same-budget).
set -euo pipefail
ROOT=${NNUNET_ROOT:-runs/nnunet}; ID=${NNUNET_DATASET:-501}; HOURS=${NNUNET_HOURS:-1.5}; THREADS=${NNUNET_THREADS:-2}
FOLD=${NNUNET_FOLD:-all}; ITERS=${NNUNET_ITERS:-10}; OUT=${NNUNET_OUT:-benchmarks/results/nnunet-same-budget}
DATA=${DELINEO_DATA:-../shared/data}/openkbp
VENV=.venv-nnunet
export nnUNet_raw=$ROOT/nnUNet_raw nnUNet_preprocessed=$ROOT/nnUNet_preprocessed nnUNet_results=$ROOT/nnUNet_results
export OMP_NUM_THREADS=$THREADS nnUNet_compile=f
TRAINER=nnUNetTrainerCPUBudget
install_trainer() {
  local dst; dst=$($VENV/bin/python -c "import nnunetv2, os; print(os.path.join(os.path.dirname(nnunetv2.__file__), 'training/nnUNetTrainer/variants'))")
  cp benchmarks/nnunet/$TRAINER.py "$dst/$TRAINER.py"
}
stage=${1:-all}
if [[ $stage == convert || $stage == all ]]; then
  $VENV/bin/python benchmarks/nnunet/convert_openkbp.py --data "$DATA" --out "$nnUNet_raw" --id "$ID"
fi
if [[ $stage == plan || $stage == all ]]; then  # nnU-Net's defaults; 3d_fullres only (the configuration trained)
  $VENV/bin/nnUNetv2_plan_and_preprocess -d "$ID" --verify_dataset_integrity -c 3d_fullres -np 1
fi
if [[ $stage == train || $stage == all ]]; then
  install_trainer
  resume=(); ls "$nnUNet_results"/Dataset${ID}_*/${TRAINER}__nnUNetPlans__3d_fullres/fold_${FOLD}/checkpoint_latest.pth >/dev/null 2>&1 && resume=(--c)
  # nnUNet_n_proc_DA=0: augmentation in the training process, so that its CPU time is counted
  nnUNet_n_proc_DA=0 DELINEO_NNUNET_BUDGET_CPU_H=$HOURS DELINEO_NNUNET_ITERS=$ITERS DELINEO_NNUNET_VAL_ITERS=2 DELINEO_NNUNET_THREADS=$THREADS \
    DELINEO_NNUNET_SKIP_FINAL_VAL=1 \
    $VENV/bin/nnUNetv2_train "$ID" 3d_fullres "$FOLD" -tr $TRAINER -device cpu "${resume[@]}" 2>&1 | tee -a "$ROOT/train.log"
fi
if [[ $stage == predict || $stage == all ]]; then  # the 33 validation images; no test-time mirroring (delineo uses none)
  install_trainer
  mkdir -p "$ROOT/predictions"
  /usr/bin/time -v -o "$ROOT/predict.time" $VENV/bin/nnUNetv2_predict -i "$nnUNet_raw/Dataset${ID}_OpenKBP/imagesTs" -o "$ROOT/predictions" \
    -d "$ID" -c 3d_fullres -tr $TRAINER -f "$FOLD" -chk checkpoint_final.pth --save_probabilities --disable_tta \
    -device cpu -npp 1 -nps 1 --continue_prediction 2>&1 | tee "$ROOT/predict.log"
fi
if [[ $stage == score || $stage == all ]]; then  # probabilities -> one mask per structure -> delineo's metrics
  $VENV/bin/python benchmarks/nnunet/to_masks.py --predictions "$ROOT/predictions" --raw "$nnUNet_raw/Dataset${ID}_OpenKBP" \
    --out "$ROOT/masks"
  .venv/bin/delineo evaluate --predictions "$ROOT/masks" --data "$DATA/validation" --out "$OUT/validation.json"
fi
