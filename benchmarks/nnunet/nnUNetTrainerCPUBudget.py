"""nnU-Net v2's default trainer, stopped by a CPU-time budget (issue 20: same CPU-hours as delineo).

Copied by ``benchmarks/nnunet/run.sh`` into nnunetv2/training/nnUNetTrainer/variants/ of the nnU-Net
virtual environment, where ``nnUNetv2_train -tr nnUNetTrainerCPUBudget`` finds it. Everything is the
default trainer's (network, loss, augmentation, 250 iterations per epoch, poly LR over num_epochs)
except:

* ``DELINEO_NNUNET_EPOCHS`` (default 1000, nnU-Net's): an upper bound on the epochs;
* with a budget, the poly schedule (nnU-Net's: ``initial_lr * (1 - progress) ** 0.9``) runs over the
  CPU budget instead of over the epochs, ``progress`` = CPU seconds spent / budget at the start of each
  epoch, so the LR reaches ~0 when the budget is spent (as delineo's ``budget_cpu_hours`` does); an
  epoch count chosen in advance would need the CPU's speed in advance;
* ``DELINEO_NNUNET_ITERS`` (default 250): iterations per epoch (fewer, so that the budget, checked
  at the end of an epoch, is not overrun by most of a 250-iteration epoch on a CPU);
* ``DELINEO_NNUNET_VAL_ITERS`` (default 50): validation iterations per epoch (nnU-Net's pseudo Dice,
  for its log only); their CPU time is left out of the budget, as delineo leaves out its validation;
* ``DELINEO_NNUNET_THREADS``: torch threads (nnU-Net's own ``-device cpu`` takes every core);
* ``DELINEO_NNUNET_SKIP_FINAL_VAL=1``: no prediction of the fold's validation cases at the end (the
  comparison predicts the separate validation cases with ``nnUNetv2_predict`` instead; with fold
  ``all`` nnU-Net would predict all its training cases);
* ``DELINEO_NNUNET_BUDGET_CPU_H``: after the epoch in which the process's CPU time (user + system,
  all threads; data augmentation in-process with nnUNet_n_proc_DA=0 so that it is counted) passes
  the budget, the trainer saves ``checkpoint_final.pth`` and ends, as at the last epoch;
* the CPU time (training only), wall time and iteration count of every epoch go to ``budget_log.json`` in the fold
  folder.
"""

from __future__ import annotations

import json
import os
import time

import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class _BudgetSpent(Exception):
    pass


class nnUNetTrainerCPUBudget(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict, device: torch.device = torch.device("cuda")):
        # the base class records its __init__ arguments by name (for checkpoints): same signature, no **kwargs
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get("DELINEO_NNUNET_EPOCHS", "1000"))
        self.num_iterations_per_epoch = int(os.environ.get("DELINEO_NNUNET_ITERS", "250"))
        self.num_val_iterations_per_epoch = int(os.environ.get("DELINEO_NNUNET_VAL_ITERS", "50"))
        if os.environ.get("DELINEO_NNUNET_THREADS"):
            torch.set_num_threads(int(os.environ["DELINEO_NNUNET_THREADS"]))
        self.save_every = 1  # checkpoint_latest after every (short) epoch: a restart loses at most one
        self._val_cpu = 0.0
        self._val_t0 = None
        self.budget_s = float(os.environ.get("DELINEO_NNUNET_BUDGET_CPU_H", "0")) * 3600 or None
        self._cpu0 = None
        self._epoch_t = None

    def _budget_log_path(self):
        return os.path.join(self.output_folder, "budget_log.json")

    def _budget_log(self) -> list:
        p = self._budget_log_path()
        return json.load(open(p)) if os.path.isfile(p) else []

    def on_train_start(self):
        super().on_train_start()
        log = [e for e in self._budget_log() if e["epoch"] < self.current_epoch]  # epochs the checkpoint holds
        self._spent_before = log[-1]["cpu_seconds_total"] if log else 0.0  # a resumed run carries on counting
        with open(self._budget_log_path(), "w") as f:
            json.dump(log, f, indent=1)
        self._cpu0 = time.process_time()

    def _spent(self) -> float:
        return self._spent_before + time.process_time() - self._cpu0 - self._val_cpu

    def on_epoch_start(self):
        super().on_epoch_start()
        self._epoch_t = (time.perf_counter(), time.process_time())

    def on_train_epoch_start(self):
        super().on_train_epoch_start()  # the poly step by epoch, then replaced when there is a budget
        if self.budget_s:
            progress = min(self._spent() / self.budget_s, 1.0)
            lr = self.initial_lr * (1.0 - progress) ** 0.9
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.logger.log("lrs", lr, self.current_epoch)
            self.print_to_log_file(f"learning rate {lr:.6f} (poly over the CPU budget: {progress:.1%} spent)")

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        self._val_t0 = time.process_time()

    def on_validation_epoch_end(self, val_outputs):
        super().on_validation_epoch_end(val_outputs)
        self._val_cpu += time.process_time() - self._val_t0

    def on_epoch_end(self):
        super().on_epoch_end()  # saves checkpoint_latest every save_every epochs, best, and logs
        wall, cpu = time.perf_counter() - self._epoch_t[0], time.process_time() - self._epoch_t[1]
        total = self._spent()
        log = self._budget_log()
        log.append({"epoch": self.current_epoch - 1, "lr": self.optimizer.param_groups[0]["lr"], "iterations": self.num_iterations_per_epoch, "wall_seconds": round(wall, 1),
                    "cpu_seconds": round(cpu, 1), "cpu_seconds_validation_total": round(self._val_cpu, 1),
                    "cpu_seconds_total": round(total, 1),
                    "train_loss": float(self.logger.get_value("train_losses", step=-1)),
                    "pseudo_dice": [float(d) for d in self.logger.get_value("dice_per_class_or_region", step=-1)],
                    "seconds_per_iteration_wall": round(wall / self.num_iterations_per_epoch, 2),
                    "threads": torch.get_num_threads()})
        with open(self._budget_log_path(), "w") as f:
            json.dump(log, f, indent=1)
        if self.budget_s and total >= self.budget_s:
            self.print_to_log_file(f"CPU budget spent ({total / 3600:.2f} h): ending after epoch {self.current_epoch}")
            self.save_checkpoint(os.path.join(self.output_folder, "checkpoint_latest.pth"))
            raise _BudgetSpent

    def perform_actual_validation(self, save_probabilities: bool = False):
        if os.environ.get("DELINEO_NNUNET_SKIP_FINAL_VAL") == "1":
            self.print_to_log_file("final validation skipped (DELINEO_NNUNET_SKIP_FINAL_VAL=1)")
            return
        super().perform_actual_validation(save_probabilities)

    def run_training(self):
        try:
            super().run_training()
        except _BudgetSpent:  # on_epoch_end has counted the epoch; on_train_end writes checkpoint_final.pth
            self.on_train_end()
