"""The trainer end to end on tiny data: run folder, encoder parity, exact resume, checkpoints, CLI errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from resume_check import interrupted_and_resumed, losses, tiny_cfg

import zoo
from training.__main__ import main
from training.checkpoint import LAST, PREV, load_checkpoint
from training.errors import CheckpointError
from training.trainer import Trainer


def test_fit_writes_the_run_folder_and_a_loadable_encoder(tmp_path, tiny_data):
    trainer = Trainer(tiny_cfg(tmp_path, epochs=1), dataset=tiny_data)
    folder = trainer.fit()
    run = tmp_path / "run"
    for name in ("metrics.jsonl", LAST, "encoder/config.json", "encoder/model.safetensors"):
        assert (run / name).is_file(), name
    assert len(losses(run)) == trainer.total_steps == 4
    enc = zoo.load(str(folder), device="cpu")
    train_enc = trainer.method.encoder_for_export().eval().float()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(enc(x), train_enc(x), atol=1e-5)
    cfg = zoo.read_config(folder)
    assert cfg["zoo"]["method"] == "simclr" and cfg["zoo"]["train_config"]["total_steps"] == 4


def check_resumed_run(result: dict) -> None:
    assert result["checkpoint_step"] == 3  # work after the checkpoint is lost
    assert len(result["straight"]) == len(result["resumed"]) == 8
    assert result["straight"] == result["resumed"]  # exactly: same views, same RNG, same queue
    assert result["same_state"]


@pytest.mark.parametrize("method", ["simclr", "mocov2"])
def test_interrupted_and_resumed_run_repeats_the_uninterrupted_losses(tmp_path, tiny_data, method):
    check_resumed_run(interrupted_and_resumed(tmp_path, tiny_data, method, workers=0))


def test_resume_is_exact_with_dataloader_worker_processes(tmp_path):
    # In a fresh interpreter, as the CLI runs: see resume_check.py for why not in the pytest process.
    tests = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests.parent), str(tests)])}
    proc = subprocess.run([sys.executable, str(tests / "resume_check.py"), str(tmp_path), "simclr", "1"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_resumed_run(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_max_steps_stops_with_a_checkpoint_then_resume_finishes(tmp_path, tiny_data):
    t = Trainer(tiny_cfg(tmp_path, max_steps=2), dataset=tiny_data)
    t.fit()
    assert t.step == 2 and not (tmp_path / "run" / "encoder").exists()
    t2 = Trainer(tiny_cfg(tmp_path, resume=True), dataset=tiny_data)
    t2.fit()
    assert t2.step == 8 and (tmp_path / "run" / "encoder" / "model.safetensors").exists()


def test_a_new_run_refuses_to_overwrite_an_old_one(tmp_path, tiny_data):
    Trainer(tiny_cfg(tmp_path, max_steps=1), dataset=tiny_data).fit()
    with pytest.raises(Exception, match="--resume"):
        Trainer(tiny_cfg(tmp_path), dataset=tiny_data).fit()


def test_corrupt_checkpoint_is_a_clear_error_and_the_previous_one_survives(tmp_path, tiny_data):
    Trainer(tiny_cfg(tmp_path, max_steps=6), dataset=tiny_data).fit()  # checkpoints at 3 and 6
    run = tmp_path / "run"
    assert load_checkpoint(run / PREV)["step"] == 3
    data = (run / LAST).read_bytes()
    (run / LAST).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated or corrupt.*checkpoint-prev.pt"):
        Trainer(tiny_cfg(tmp_path, resume=True), dataset=tiny_data).fit()
    assert load_checkpoint(run / PREV)["step"] == 3
    (run / LAST).write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(run / LAST)


def test_a_failed_checkpoint_write_leaves_the_old_file(tmp_path):
    from zoo.atomic import atomic_write

    target = tmp_path / LAST
    target.write_bytes(b"good")

    def write_half_then_fail(p):
        p.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, write_half_then_fail)
    assert target.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == [LAST]


def test_resume_with_another_method_is_refused(tmp_path, tiny_data):
    Trainer(tiny_cfg(tmp_path, max_steps=1), dataset=tiny_data).fit()
    with pytest.raises(CheckpointError, match="simclr"):
        Trainer(tiny_cfg(tmp_path, "mocov2", resume=True), dataset=tiny_data).fit()


@pytest.mark.parametrize("args,expected", [
    (["--method", "nope"], "unknown method 'nope'; choose one of:"),
    (["--method", "simclr", "--arch", "resnet999"], "unknown architecture 'resnet999'"),
    (["--method", "simclr", "--batch-size", "1"], "--batch-size must be at least 2"),
    (["--method", "simclr", "--data-dir", "/nonexistent"], "looked in: /nonexistent"),
    (["--method", "simclr", "-o", "tempreature=0.1"], "unknown option 'tempreature'"),
])
def test_cli_errors_are_one_line_with_nonzero_exit(tmp_path, capsys, args, expected):
    code = main(["fit", "--out", str(tmp_path / "r"), "--no-progress", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and expected in err and len(err.splitlines()) == 1
