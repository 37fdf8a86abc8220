"""nnU-Net v2's default trainer, stopped by a CPU-time budget (issue 20: same CPU-hours as delineo).

Copied by ``benchmarks/nnunet/run.sh`` into nnunetv2/training/nnUNetTrainer/variants/ of the nnU-Net
virtual environment, where ``nnUNetv2_train -tr nnUNetTrainerCPUBudget`` finds it. Everything is the
default trainer's (network, loss, augmentation, 250 iterations per epoch, poly LR over num_epochs)
except:

* ``DELINEO_NNUNET_EPOCHS`` (default 1000, nnU-Net's): the epochs the poly schedule decays over; set
  it to what the budget allows at the measured epoch time, so the LR reaches ~0 at the budget;
* ``DELINEO_NNUNET_ITERS`` (default 250): iterations per epoch (only for the short timing run);
* ``DELINEO_NNUNET_BUDGET_CPU_H``: after the epoch in which the process's CPU time (user + system,
  all threads; data augmentation in-process with nnUNet_n_proc_DA=0 so that it is counted) passes
  the budget, the trainer saves ``checkpoint_final.pth`` and ends, as at the last epoch;
* the CPU time, wall time and iteration count of every epoch go to ``budget_log.json`` in the fold
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
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict, device: torch.device = torch.device("cuda"), **kwargs):
        super().__init__(plans, configuration, fold, dataset_json, device=device, **kwargs)
        self.num_epochs = int(os.environ.get("DELINEO_NNUNET_EPOCHS", "1000"))
        self.num_iterations_per_epoch = int(os.environ.get("DELINEO_NNUNET_ITERS", "250"))
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
        log = self._budget_log()
        self._spent_before = log[-1]["cpu_seconds_total"] if log else 0.0  # a resumed run carries on counting
        self._cpu0 = time.process_time()

    def on_epoch_start(self):
        super().on_epoch_start()
        self._epoch_t = (time.perf_counter(), time.process_time())

    def on_epoch_end(self):
        super().on_epoch_end()  # saves checkpoint_latest every save_every epochs, best, and logs
        wall, cpu = time.perf_counter() - self._epoch_t[0], time.process_time() - self._epoch_t[1]
        total = self._spent_before + time.process_time() - self._cpu0
        log = self._budget_log()
        log.append({"epoch": self.current_epoch, "iterations": self.num_iterations_per_epoch, "wall_seconds": round(wall, 1),
                    "cpu_seconds": round(cpu, 1), "cpu_seconds_total": round(total, 1),
                    "seconds_per_iteration_wall": round(wall / self.num_iterations_per_epoch, 2),
                    "threads": torch.get_num_threads()})
        with open(self._budget_log_path(), "w") as f:
            json.dump(log, f, indent=1)
        if self.budget_s and total >= self.budget_s:
            self.print_to_log_file(f"CPU budget spent ({total / 3600:.2f} h): ending after epoch {self.current_epoch}")
            self.save_checkpoint(os.path.join(self.output_folder, "checkpoint_latest.pth"))
            raise _BudgetSpent

    def run_training(self):
        try:
            super().run_training()
        except _BudgetSpent:  # on_epoch_end has counted the epoch; on_train_end writes checkpoint_final.pth
            self.on_train_end()
