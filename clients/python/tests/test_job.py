"""Inside a job: a command sweep whose script uses seed_sweeps.job() under a real `worker run`."""
import json
import subprocess
import sys

import pytest
import seed_sweeps
from seed_sweeps import _contract
from seed_sweeps._job import parse_args

from conftest import SCRIPTS, binary, job_argv, wait_for


def metrics_of(sweep, job_id):
    return sweep.job(job_id)["metrics"]


def log_of(client, job_id, attempt=None):
    q = f"?attempt={attempt}" if attempt else ""
    return client.http.call("GET", f"/api/jobs/{job_id}/log{q}").text


def test_the_package_reads_exactly_the_workers_contract():
    out = subprocess.run([str(binary("worker")), "contract", "--json"], capture_output=True, text=True, check=True)
    contract = json.loads(out.stdout)
    names = {v["name"] for v in contract["variables"]}
    assert set(_contract.READS) == names
    assert contract["exit_diverged"] == _contract.EXIT_DIVERGED
    # The package's own source reads no SWEEP_* variable but these and its client settings.
    source = "".join(p.read_text() for p in (SCRIPTS.parents[1] / "src" / "seed_sweeps").glob("*.py"))
    import re

    used = set(re.findall(r'"(SWEEP_[A-Z_]+)"', source))
    assert used <= names | {_contract.SERVER, _contract.TOKEN}, used - names


def test_a_command_sweep_records_exactly_the_reported_metrics(client, workers):
    sweep = client.submit({
        "name": "job-metrics",
        "command": {"argv": job_argv()},
        "train": {"epochs": 3},
        "grid": {"lr": [0.1, 0.25]},
    })
    workers.start("w", "--cpu-ranks", "2", "--exit-when-idle")
    sweep.wait(timeout=120, poll=0.2)
    jobs = sweep.jobs()
    assert [j["status"] for j in jobs] == ["completed", "completed"]
    for j in jobs:
        lr = j["params"]["lr"]
        ms = metrics_of(sweep, j["id"])
        assert [m["epoch"] for m in ms] == [1, 2, 3]
        for m in ms:
            e = m["epoch"]
            assert m["accuracy"] == pytest.approx(min(1.0, round(0.1 * e + lr, 6)))
            assert m["train_loss"] == pytest.approx(1.0 / e)
            assert m["extra"]["val_bleu"] == pytest.approx(2.0 * e)


def test_a_killed_worker_resumes_at_the_epoch_after_the_last_saved(client, workers, coordinator):
    sweep = client.submit({
        "name": "job-resume",
        "command": {"argv": job_argv()},
        "train": {"epochs": 6, "sleep": 0.4},
        "run": {"max_attempts": 3},
    })
    first = workers.start("a", "--cpu-ranks", "1")
    job_id = wait_for("a job", lambda: (sweep.jobs() or [{}])[0].get("id"))

    def saved_epoch_two():
        j = sweep.job(job_id)
        if j["epoch"] < 2:
            return False
        r = client.http._send("GET", f"/api/jobs/{job_id}/checkpoint")
        return r.status_code == 200

    wait_for("epoch 2 and its checkpoint", saved_epoch_two)
    first.kill()  # SIGKILL: the program dies with it
    first.wait()
    killed_at = sweep.job(job_id)["epoch"]
    workers.start("b", "--cpu-ranks", "1", "--exit-when-idle")
    sweep.wait(timeout=180, poll=0.2)
    detail = sweep.job(job_id)
    assert detail["status"] == "completed", detail
    assert [m["epoch"] for m in detail["metrics"]] == [1, 2, 3, 4, 5, 6]
    last_attempt = detail["attempts"][-1]["attempt"]
    log = log_of(client, job_id, last_attempt)
    # The resume started after the last epoch whose state was archived (the one reported last,
    # or the one before when the kill came between a line and its upload), and every epoch ran once
    # in the state the program carried through.
    start = int(log.split("start_epoch ")[1].split()[0])
    assert start in (killed_at, killed_at + 1), (killed_at, log)
    assert "seen [1, 2, 3, 4, 5, 6]" in log, log


def test_a_pruned_job_is_told_through_report(client, workers):
    sweep = client.submit({
        "name": "job-prune",
        "command": {"argv": job_argv()},
        "train": {"epochs": 4, "sleep": 0.5},
        "grid": {"lr": [0.5, 0.0]},
        "early_stop": {"method": "asha", "metric": "accuracy", "mode": "max", "min_epochs": 1, "reduction_factor": 2},
    })
    workers.start("w", "--cpu-ranks", "1", "--exit-when-idle")
    sweep.wait(timeout=120, poll=0.2)
    good, bad = sweep.jobs()
    assert good["status"] == "completed", good
    assert bad["status"] == "pruned", bad
    epochs = [m["epoch"] for m in sweep.job(bad["id"])["metrics"]]
    # Stopped before its budget: report returned True one epoch after the decision at the earliest.
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) < 4, epochs
    assert "stopping after epoch" in log_of(client, bad["id"])


def test_alone_the_script_takes_its_defaults_and_arguments(tmp_path):
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("SWEEP_")}
    out = subprocess.run(
        [sys.executable, str(SCRIPTS / "train_job.py"), "--lr", "0.5", "--epochs", "2"],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=True,
    )
    assert "start_epoch 1" in out.stdout
    assert "epoch 2: accuracy 0.7" in out.stdout, out.stdout


def test_arguments_take_the_type_of_their_default():
    got = parse_args(["--lr", "0.5", "--batch-size", "64", "--amp", "--name=x", "--widths", "[1, 2]"],
                     {"lr": 0.1, "batch_size": 32, "amp": False, "name": "a"})
    assert got == {"lr": 0.5, "batch_size": 64, "amp": True, "name": "x", "widths": [1, 2]}
    with pytest.raises(seed_sweeps.SweepError, match="--batch-size: expected an integer"):
        parse_args(["--batch-size", "lots"], {"batch_size": 32})
    with pytest.raises(seed_sweeps.SweepError, match="unexpected argument"):
        parse_args(["stray"], {})


def test_save_and_load_in_a_sweeps_checkpoint_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("SWEEP_PARAMS", json.dumps({"lr": 0.3}))
    monkeypatch.setenv("SWEEP_CHECKPOINT_DIR", str(tmp_path / "ckpt"))
    monkeypatch.setenv("SWEEP_METRICS", str(tmp_path / "metrics.jsonl"))
    monkeypatch.setenv("SWEEP_STOP_FILE", str(tmp_path / "stop"))
    j = seed_sweeps.job(defaults={"lr": 0.1, "epochs": 3}, argv=["--lr", "0.2"])
    assert j.params == {"lr": 0.3, "epochs": 3}  # SWEEP_PARAMS wins
    assert (j.start_epoch, j.load()) == (1, None)
    assert j.report(1, accuracy=0.5, state={"w": [1.0, 2.0]}) is False
    (tmp_path / "stop").touch()
    assert j.report(2, accuracy=float("nan"), state={"w": [3.0]}) is True
    lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[0] == {"epoch": 1, "accuracy": 0.5}
    assert lines[1]["epoch"] == 2 and lines[1]["accuracy"] != lines[1]["accuracy"]
    again = seed_sweeps.job(defaults={"lr": 0.1})
    assert (again.start_epoch, again.load()) == (3, {"w": [3.0]})
    with pytest.raises(seed_sweeps.SweepError, match="must be a number"):
        again.report(3, accuracy="high")
