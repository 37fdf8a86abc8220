"""Training in several processes (DistributedDataParallel, gloo on the CPU) gives the model that one
process gives.

With the whole training set in every step (6 cases: one process with batch 6, or two processes with
batch 3 each) the averaged gradients are the single process's gradient, so plain SGD must land on
the same weights up to float rounding. The real command runs under ``torchrun``; the interruption
test starts two fresh processes itself (``interrupted_worker.py``, never a fork of pytest) to stop
both after two epochs and train again from the checkpoint. Every run is bounded (``RUN_TIMEOUT_S``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from delineo.training import TrainConfig, train
from delineo.training.distributed import Distributed, check_weighting, epoch_seed

pytestmark = pytest.mark.slow

EPOCHS = 3


def full_batch_config(tiny_config, data_root, out, batch_size: int) -> dict:
    # 8 cases, 2 held out: 6 training cases in one step per epoch (6, or 2 x 3); fp32, because on a CPU
    # with native bf16 the autocast rounding of a batch of 6 and of two batches of 3 differ by ~1e-4
    return tiny_config(
        data_root, out, epochs=EPOCHS, batch_size=batch_size, optimizer="sgd", lr=0.01, threads=1, augment="none", amp=False,
    )


def last_weights(out) -> dict[str, torch.Tensor]:
    return torch.load(out / "work" / "checkpoint.pt", map_location="cpu", weights_only=False)["network"]


def assert_same_weights(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < atol, f"largest weight difference {worst:g}"


@pytest.fixture(scope="module")
def one_process(shared_image_dataset, tmp_path_factory):
    """The single-process reference run and its config's folder."""
    from conftest import tiny_config_2d

    out = tmp_path_factory.mktemp("one")
    train(TrainConfig.from_dict(full_batch_config(tiny_config_2d, shared_image_dataset.root, out, batch_size=6)))
    return out, last_weights(out)


@pytest.mark.timeout(600)  # the one-process reference (module fixture) and a run bounded at RUN_TIMEOUT_S
def test_torchrun_two_processes_train_the_model_one_process_trains(one_process, shared_image_dataset, tmp_path):
    from conftest import tiny_config_2d

    ref_out, ref = one_process
    out = tmp_path / "two"
    cfg = tmp_path / "two.yaml"
    cfg.write_text(yaml.safe_dump(full_batch_config(tiny_config_2d, shared_image_dataset.root, out, batch_size=3)))
    [(rc, output)] = run_bounded([[sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                                   "-m", "delineo", "train", "--config", str(cfg)]])
    assert rc == 0, output[-6000:]
    assert output.count("model written to") == 2  # each process returns the folder; process 0 wrote it

    assert_same_weights(last_weights(out), ref)
    # one model folder, one checkpoint, written by process 0 only
    assert sorted(p.name for p in (out / "work").iterdir()) == ["checkpoint.pt"]
    meta = json.loads((out / "model" / "model.json").read_text())
    assert meta["training"]["processes"]["world_size"] == 2 and meta["training"]["processes"]["backend"] == "gloo"
    assert meta["training"]["hardware"].startswith("2 processes (gloo)")
    ref_meta = json.loads((ref_out / "model" / "model.json").read_text())
    assert "processes" not in ref_meta["training"]  # a single process records nothing new
    hist = json.loads((out / "model" / "history.json").read_text())
    ref_hist = json.loads((ref_out / "model" / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    for h, r in zip(hist, ref_hist):  # the loss is the mean over both processes: the single run's loss
        assert h["loss"] == pytest.approx(r["loss"], rel=1e-4)
        assert h["val_mean_dice"] == pytest.approx(r["val_mean_dice"], abs=1e-3)
    assert meta["validation"]["mean_dice_model_grid"] >= ref_meta["validation"]["mean_dice_model_grid"] - 1e-3


#: bound on each multi-process run: alone, one takes 3-10 s; a hung process group must fail the test, not CI
RUN_TIMEOUT_S = 180
WORKER = Path(__file__).with_name("interrupted_worker.py")


def child_env() -> dict[str, str]:
    # collectives (and init_process_group) give up after a minute instead of the default hour
    return {**os.environ, "OMP_NUM_THREADS": "1", "DELINEO_PROGRESS": "off", "DELINEO_DIST_TIMEOUT_MIN": "1"}


def run_bounded(commands: list[list[str]], timeout: float = RUN_TIMEOUT_S) -> list[tuple[int, str]]:
    """Start ``commands`` as fresh processes (each in its own session), wait for all of them at most
    ``timeout`` seconds in total, and return each one's exit code and output. On the deadline every
    process group is killed (torchrun's workers with torchrun) and the test fails with their output."""
    procs = [subprocess.Popen(c, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
             for c in commands]
    deadline = time.monotonic() + timeout
    results = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=max(0.1, deadline - time.monotonic()))
            results.append((p.returncode, out))
    except subprocess.TimeoutExpired:
        outputs = []
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            out, _ = p.communicate(timeout=30)
            outputs.append(out[-3000:])
        pytest.fail(f"processes still running after {timeout:.0f} s, killed; their output:\n" + "\n----\n".join(outputs))
    return results


def _free_ports() -> int:
    """A port whose successor is free too."""
    for _ in range(50):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no two consecutive free ports")


@pytest.mark.timeout(600)  # the one-process reference (module fixture) and a run bounded at RUN_TIMEOUT_S
def test_interrupted_two_process_run_resumes_from_the_checkpoint(one_process, shared_image_dataset, tmp_path):
    from conftest import tiny_config_2d

    _, ref = one_process
    out = tmp_path / "two"
    d = full_batch_config(tiny_config_2d, shared_image_dataset.root, out, batch_size=3)
    config = tmp_path / "two.json"
    config.write_text(json.dumps(d))
    port = _free_ports()
    # two fresh interpreters (not forked from this process and its threads), bounded in time
    results = run_bounded([[sys.executable, str(WORKER), str(rank), str(port), str(config), "2"] for rank in (0, 1)])
    for rank, (rc, output) in enumerate(results):
        assert rc == 0, f"process {rank}:\n{output[-6000:]}"
    ckpt = torch.load(out / "interrupted.pt", map_location="cpu", weights_only=False)
    assert ckpt["state"]["epoch"] == 2
    # the same keys as a single process's checkpoint: either kind resumes the other
    single = torch.load(one_process[0] / "work" / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert ckpt.keys() == single.keys() and ckpt["state"].keys() == single["state"].keys()
    hist = json.loads((out / "model" / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    assert_same_weights(last_weights(out), ref)


def test_weightings_with_state_are_refused_with_several_processes():
    from delineo.errors import ConfigError
    from delineo.training import build_weighting

    two = Distributed(rank=0, world_size=2)
    check_weighting(build_weighting({"kind": "uniform"}, in_channels=3, n_structures=2, spatial_dims=2), two)
    qam = build_weighting({"kind": "qam"}, in_channels=3, n_structures=2, spatial_dims=2)
    check_weighting(qam, Distributed())  # one process: anything goes
    with pytest.raises(ConfigError, match="2 processes"):
        check_weighting(qam, two)


def test_process_zero_draws_what_a_single_process_draws():
    assert epoch_seed(2, 7, 0) == 2 * 100_003 + 7
    assert len({epoch_seed(2, 7, r) for r in range(8)}) == 8
