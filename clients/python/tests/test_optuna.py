"""A sweep opened in Optuna: the best trial, its values and its intermediate values equal ours."""
import optuna
import pytest


def test_to_optuna_round_trips_an_external_tpe_sweep(client, tmp_path):
    sweep = client.submit({
        "name": "to-optuna", "run": {"external": True},
        "search": {"method": "tpe", "trials": 10, "metric": "val_loss", "mode": "min", "startup_trials": 4, "seed": 1,
                   "space": {"lr": {"log_uniform": [1e-4, 1e-1]}, "layers": {"choice": [1, 2, 3]}}},
    })

    def objective(trial):
        lr, layers = trial.params["lr"], trial.params["layers"]
        for epoch in (1, 2, 3):
            trial.report(epoch, val_loss=abs(lr - 0.01) * 100 + layers / epoch)
        return abs(lr - 0.01) * 100 + layers / 4

    sweep.optimize(objective)
    study = sweep.to_optuna(f"sqlite:///{tmp_path / 'optuna.db'}")
    ours = sweep.best()
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert study.best_trial.user_attrs["job_id"] == ours["job"]
    assert study.best_value == pytest.approx(ours["value"])
    assert len(study.trials) == 10
    for t in study.trials:
        job = sweep.job(t.user_attrs["job_id"])
        assert t.params == {k: job["params"][k] for k in ("lr", "layers")}
        assert t.intermediate_values[1] == pytest.approx(job["metrics"][0]["extra"]["val_loss"])
        assert t.value == pytest.approx(job["metrics"][-1]["extra"]["val_loss"])
    again = optuna.load_study(study_name=f"sweep-{sweep.id}", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    assert again.best_trial.number == study.best_trial.number
    assert optuna.importance.get_param_importances(again)  # Optuna's own tools open it


def test_a_grid_sweeps_axes_become_categorical(client, workers):
    from conftest import job_argv

    sweep = client.submit({"name": "grid-optuna", "command": {"argv": job_argv()}, "train": {"epochs": 2},
                           "grid": {"lr": [0.1, 0.2]}})
    workers.start("w", "--cpu-ranks", "2", "--exit-when-idle")
    sweep.wait(timeout=120, poll=0.2)
    study = sweep.to_optuna("sqlite:///:memory:")
    assert isinstance(study.trials[0].distributions["lr"], optuna.distributions.CategoricalDistribution)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE  # accuracy
    assert {t.user_attrs["status"] for t in study.trials} == {"completed"}
