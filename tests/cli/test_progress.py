"""Long commands: a bar on a terminal, one line per step in a log (delineo.progress), and what
evaluate and import-dicom print when their output goes to a file."""

from __future__ import annotations

import io

from delineo.progress import Steps


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_one_line_per_step_in_a_log(monkeypatch):
    monkeypatch.delenv("DELINEO_PROGRESS", raising=False)
    log = io.StringIO()
    with Steps(3, "evaluate", unit="case", stream=log) as steps:
        for case in ("a", "b", "c"):
            steps.step(case)
    lines = log.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("evaluate 1/3 case a (") and "left)" in lines[0]
    assert lines[2].startswith("evaluate 3/3 case c (")


def test_a_bar_on_a_terminal(monkeypatch):
    monkeypatch.delenv("DELINEO_PROGRESS", raising=False)
    tty = _Tty()
    with Steps(2, "train", unit="epoch", stream=tty) as steps:
        steps.step("loss 0.5")
        steps.step("loss 0.4")
    out = tty.getvalue()
    assert "\r" in out and "2/2" in out and "train 1/2 epoch" not in out


def test_override_off(monkeypatch):
    monkeypatch.setenv("DELINEO_PROGRESS", "off")
    log = io.StringIO()
    with Steps(2, "stress", stream=log) as steps:
        steps.step("x")
        steps.write("note")
    assert log.getvalue() == ""


def test_evaluate_logs_one_line_per_case(trained_2d, shared_image_dataset, tmp_path, capsys, monkeypatch):
    """The real command: with stderr going to a file (not a terminal), evaluate writes a line per case."""
    from delineo.cli import main

    monkeypatch.delenv("DELINEO_PROGRESS", raising=False)
    out = tmp_path / "r.json"
    assert main(["evaluate", "--model", str(trained_2d), "--data", str(shared_image_dataset.root), "--out", str(out),
                 "--device", "cpu"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("evaluate ")]
    n = len(__import__("json").loads(out.read_text())["cases"])
    assert len(err) == n and err[-1].startswith(f"evaluate {n}/{n} case ")
