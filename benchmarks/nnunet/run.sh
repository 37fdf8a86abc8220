#!/usr/bin/env bash
# nnU-Net v2 on OpenKBP at delineo's CPU budget (issue 20). Every stage resumes; run from the repo root.
#   benchmarks/nnunet/run.sh convert|plan|timing|train|all
# NNUNET_ROOT (runs/nnunet), NNUNET_DATASET (501), NNUNET_HOURS (1.5 CPU-hours), NNUNET_THREADS (2).
set -euo pipefail
ROOT=${NNUNET_ROOT:-runs/nnunet}; ID=${NNUNET_DATASET:-501}; HOURS=${NNUNET_HOURS:-1.5}; THREADS=${NNUNET_THREADS:-2}
DATA=${DELINEO_DATA:-../shared/data}/openkbp
VENV=.venv-nnunet
export nnUNet_raw=$ROOT/nnUNet_raw nnUNet_preprocessed=$ROOT/nnUNet_preprocessed nnUNet_results=$ROOT/nnUNet_results
export nnUNet_n_proc_DA=0 OMP_NUM_THREADS=$THREADS nnUNet_compile=f   # augmentation in-process: its CPU time is counted
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
if [[ $stage == timing ]]; then  # short measured run: 2 epochs of 10 iterations, fold 0
  install_trainer
  DELINEO_NNUNET_EPOCHS=2 DELINEO_NNUNET_ITERS=10 timeout 15m \
    $VENV/bin/nnUNetv2_train "$ID" 3d_fullres 0 -tr $TRAINER -device cpu -p nnUNetPlans 2>&1 | tee "$ROOT/timing.log"
fi
if [[ $stage == train || $stage == all ]]; then  # DELINEO_NNUNET_EPOCHS: what the budget allows at the measured epoch time
  install_trainer
  DELINEO_NNUNET_BUDGET_CPU_H=$HOURS $VENV/bin/nnUNetv2_train "$ID" 3d_fullres 0 -tr $TRAINER -device cpu --c 2>&1 | tee -a "$ROOT/train.log"
fi
