"""Ask and tell on an external sweep: the Python loop, and the REST routes' refusals."""
import math
import threading

import pytest
import requests
import seed_sweeps

from conftest import TOKEN, WORKER_TOKEN


def external(client, **search):
    spec = {"name": "ask", "run": {"external": True, "max_attempts": 1}, "search": search}
    return client.submit(spec)


def test_optimize_with_four_threads_completes_exactly_the_trials(client, workers):
    sweep = external(
        client, method="tpe", trials=12, metric="loss", mode="min", startup_trials=4, seed=3,
        space={"x": {"uniform": [-2.0, 2.0]}, "k": {"int": [1, 4]}},
    )
    workers.start("w", "--cpu-ranks", "1")  # a worker with commands allowed never takes these
    seen, lock = [], threading.Lock()

    def objective(trial):
        x, k = trial.suggest_float("x", -2, 2), trial.suggest_int("k", 1, 4)
        with lock:
            seen.append(trial.job_id)
        trial.report(1, loss=(x - 0.5) ** 2 + k + 1.0)
        return (x - 0.5) ** 2 + k

    sweep.optimize(objective, n_jobs=4)
    jobs = sweep.jobs()
    assert len(seen) == len(set(seen)) == 12
    assert sorted(seen) == sorted(j["id"] for j in jobs)
    assert all(j["status"] == "completed" and j["attempt"] == 1 for j in jobs), jobs
    for j in jobs:
        p = j["params"]
        assert j["latest"]["extra"]["loss"] == pytest.approx((p["x"] - 0.5) ** 2 + p["k"])
    with pytest.raises(seed_sweeps.SweepDone):
        sweep.ask()


def test_a_failing_objective_leaves_a_failed_trial_with_its_traceback(client):
    sweep = external(client, method="random", trials=2, space={"x": {"uniform": [0.0, 1.0]}})

    def objective(trial):
        raise ValueError("boom in the objective")

    with pytest.raises(ValueError, match="boom"):
        sweep.optimize(objective)
    failed = [j for j in sweep.jobs() if j["status"] == "failed"]
    assert len(failed) == 1
    assert "ValueError: boom in the objective" in failed[0]["error"]
    log = client.http.call("GET", f"/api/jobs/{failed[0]['id']}/log").text
    assert "Traceback" in log and "boom in the objective" in log
    # Caught: the loop goes on to the end of the sweep, a NaN value ends its trial diverged.
    sweep.optimize(lambda t: math.nan, catch=(ValueError,))
    assert sorted(j["status"] for j in sweep.jobs()) == ["diverged", "failed"]


def test_ask_says_not_now_and_done_apart_and_tell_refuses_bad_input(client, coordinator):
    sweep = external(client, method="random", trials=1, metric="loss", mode="min", space={"x": {"uniform": [0.0, 1.0]}})
    other = external(client, method="random", trials=1, space={"x": {"uniform": [0.0, 1.0]}})
    trial = sweep.ask(lease_seconds=600)
    assert trial is not None and 0 <= trial.params["x"] <= 1
    assert sweep.ask() is None  # the one trial is out: 204, nothing now
    url = coordinator.url

    def tell(body, secret=trial.lease_secret, sweep_id=sweep.id, token=TOKEN):
        return requests.post(f"{url}/api/sweeps/{sweep_id}/tell", json=body,
                             headers={"Authorization": f"Bearer {token}", "X-Lease-Secret": secret})

    base = {"job_id": trial.job_id, "attempt": trial.attempt}
    r = tell({**base, "value": 1.0}, sweep_id=other.id)
    assert r.status_code == 422 and "job_id" in r.json()["error"]
    r = tell({**base, "attempt": trial.attempt + 1, "value": 1.0})
    assert r.status_code == 409
    r = tell({**base, "value": 1.0}, secret="not-the-secret")
    assert r.status_code == 403
    r = tell({**base, "value": "high"})
    assert r.status_code == 422 and "value" in r.json()["error"]
    r = tell({**base, "values": [1.0, 2.0]})
    assert r.status_code == 422 and "values" in r.json()["error"]
    r = tell({**base})
    assert r.status_code == 422 and "value" in r.json()["error"]
    assert sweep.job(trial.job_id)["status"] == "running"  # nothing stored
    assert sweep.job(trial.job_id)["metrics"] == []
    with pytest.raises(seed_sweeps.SweepError, match="infinite"):
        sweep.tell(trial, value=math.inf)
    # The worker token may ask and tell too.
    r = tell({**base, "value": 0.25}, token=WORKER_TOKEN)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "completed"
    assert sweep.job(trial.job_id)["latest"]["extra"]["loss"] == 0.25
    with pytest.raises(seed_sweeps.SweepDone, match="done"):
        sweep.ask()


def test_only_an_external_sweep_is_asked(client):
    sweep = client.submit({"name": "workers'", "grid": {"lr": [0.1]}, "train": {"epochs": 1}})
    with pytest.raises(seed_sweeps.InvalidSpec, match="external"):
        sweep.ask()
