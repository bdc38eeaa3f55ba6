"""examples/pytorch/train.py, which reports through the package, as a command job on real CIFAR-10
records (a small network and a few hundred images: the plumbing, not the accuracy)."""
import os
import sys
from pathlib import Path

from conftest import ROOT


def cifar_mini() -> Path:
    shared = Path(os.environ.get("SEED_SHARED", ROOT / ".." / "shared"))
    d = Path(os.environ.get("CIFAR10_MINI", shared / "data" / "cifar10-mini"))
    assert (d / "data_batch_1.bin").exists(), f"CIFAR-10 test records not found at {d}: set CIFAR10_MINI"
    return d.resolve()


def test_the_pytorch_example_runs_as_a_command_job(client, workers, tmp_path):
    sweep = client.submit({
        "name": "pytorch-example",
        "command": {"argv": [sys.executable, str(ROOT / "examples" / "pytorch" / "train.py"), "--data-dir", str(cifar_mini()),
                             "--epochs", "{epochs}", "--lr", "{lr}", "--limit-train", "256", "--limit-test", "128",
                             "--model-widths", "8,16,16,32", "--model-depth", "1", "--model-heads", "2", "--threads", "1",
                             "--batch-size", "64"]},
        "train": {"epochs": 2},
        "grid": {"lr": [0.01]},
    })
    workers.start("w", "--cpu-ranks", "1", "--exit-when-idle")
    sweep.wait(timeout=300, poll=0.5)
    (job,) = sweep.jobs()
    assert job["status"] == "completed", job
    metrics = sweep.job(job["id"])["metrics"]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert all(0 <= m["accuracy"] <= 1 and m["train_loss"] > 0 for m in metrics)
