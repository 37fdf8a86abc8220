"""One of the two processes of ``test_distributed.py``'s interruption test, run as a fresh interpreter
(``python interrupted_worker.py RANK PORT CONFIG.json STOP_AFTER``), never forked from pytest: a fork
of a process that already runs threads (tqdm's monitor, database pools of earlier tests) can start
with a lock held by a thread that does not exist in the child, and wait for it forever.

It trains until every process stops once ``STOP_AFTER`` epochs are done (their checkpoint written),
as if the machine went down; process 0 keeps a copy of that checkpoint; then both train again (a new
process group, on PORT + 1) from the checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import torch

import delineo.training.loop as loop
from delineo.training import TrainConfig


class _StopAfter(Exception):
    pass


def main(rank: int, port: int, config: dict, stop_after: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    torch.set_num_threads(1)
    real_tqdm = loop.tqdm

    class Stopping:  # the epoch bar, cut off after ``stop_after`` epochs
        def __init__(self, bar):
            self.bar = bar

        def __iter__(self):
            for i, epoch in enumerate(self.bar):
                if i == stop_after:
                    raise _StopAfter
                yield epoch

        def __getattr__(self, name):
            return getattr(self.bar, name)

    loop.tqdm = lambda *a, **k: Stopping(real_tqdm(*a, **k)) if str(k.get("desc", "")).startswith("train ") else real_tqdm(*a, **k)
    try:
        loop.train(TrainConfig.from_dict(config))
        raise AssertionError("the run was not interrupted")
    except _StopAfter:
        pass
    finally:
        loop.tqdm = real_tqdm
    work = Path(config["work_dir"])
    if rank == 0:
        shutil.copy(work / "checkpoint.pt", work.parent / "interrupted.pt")
    os.environ["MASTER_PORT"] = str(port + 1)
    loop.train(TrainConfig.from_dict(config))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), json.loads(Path(sys.argv[3]).read_text()), int(sys.argv[4]))
