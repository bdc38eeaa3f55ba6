"""Optuna 5.0's TPE on given histories: the reference the TPE parity tests compare us with.

Reads JSON on stdin and writes JSON on stdout.

  {"op": "model", "space": [...], "mode": "min"|"max", "trials": [...], "points": [[...]],
   "multivariate": bool}
    -> {"good": [i...], "bad": [i...], "l": [[...]], "g": [[...]]}
    The split of the trials (Optuna's _split_trials with its default gamma) and the log-densities
    of the good and bad _ParzenEstimator at each point: one column per point; with multivariate
    false one row per parameter (each parameter's own estimator), else one row.

  {"op": "optimise", "space": [...], "function": name, "trials": n, "seeds": [...],
   "startup_trials": n, "multivariate": bool}
    -> {"best": [per seed, the best value after n trials], "values": [per seed, every value]}

  {"op": "time", "space": [...], "trials": [...completed], "draws": n}
    -> {"median_ms": the median time of one ask and its suggests (`server tpe-bench`)}

space: [{"name", "kind": "float"|"log"|"int"|"choice", "lo", "hi", "n"}]; a trial is
{"x": [internal values], "state": "completed"|"pruned"|"running" (our status words), "value", "epoch"}.
"""

import json
import math
import sys

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers._tpe.parzen_estimator import _ParzenEstimator, _ParzenEstimatorParameters
from optuna.samplers._tpe.sampler import _split_trials, default_gamma, default_weights
from optuna.trial import TrialState, create_trial

optuna.logging.set_verbosity(optuna.logging.WARNING)


def distribution(p):
    if p["kind"] == "float":
        return FloatDistribution(p["lo"], p["hi"])
    if p["kind"] == "log":
        return FloatDistribution(p["lo"], p["hi"], log=True)
    if p["kind"] == "int":
        return IntDistribution(int(p["lo"]), int(p["hi"]))
    return CategoricalDistribution(list(range(p["n"])))


def external(p, x):
    return int(x) if p["kind"] in ("int", "choice") else float(x)


def model(req):
    space = {p["name"]: distribution(p) for p in req["space"]}
    study = optuna.create_study(direction="maximize" if req["mode"] == "max" else "minimize")
    trials = []
    for i, t in enumerate(req["trials"]):
        params = {p["name"]: external(p, x) for p, x in zip(req["space"], t["x"])}
        kw = dict(params=params, distributions=space)
        if t["state"] == "completed":
            ft = create_trial(state=TrialState.COMPLETE, value=t["value"], **kw)
        elif t["state"] == "pruned":
            iv = {t["epoch"]: t["value"]} if t.get("epoch") is not None else {}
            ft = create_trial(state=TrialState.PRUNED, intermediate_values=iv, **kw)
        else:
            ft = create_trial(state=TrialState.RUNNING, **kw)
        ft.number = i
        trials.append(ft)
    n = sum(t.state != TrialState.RUNNING for t in trials)
    good, bad = _split_trials(study, trials, default_gamma(n))
    params = _ParzenEstimatorParameters(1.0, True, False, default_weights, True)
    names = [p["name"] for p in req["space"]]
    groups = [names] if req["multivariate"] else [[n_] for n_ in names]
    idx = {n_: i for i, n_ in enumerate(names)}
    points = np.asarray(req["points"], dtype=float)
    out = {"good": [t.number for t in good], "bad": [t.number for t in bad], "l": [], "g": []}
    for group in groups:
        sub = {n_: space[n_] for n_ in group}
        for key, members in (("l", good), ("g", bad)):
            obs = {n_: np.asarray([req["trials"][t.number]["x"][idx[n_]] for t in members], dtype=float)
                   for n_ in group}
            est = _ParzenEstimator(obs, sub, params)
            at = {n_: points[:, idx[n_]] for n_ in group}
            out[key].append(est.log_pdf(at).tolist())
    return out


FUNCTIONS = {
    # Minimise; each takes the trial and suggests its own parameters from the space.
    "sphere": lambda v: sum((x - 0.3) ** 2 for x in v),
    "rosenbrock": lambda v: sum(100 * (v[i + 1] - v[i] ** 2) ** 2 + (1 - v[i]) ** 2 for i in range(len(v) - 1)),
}


def suggest(trial, p):
    if p["kind"] == "float":
        return trial.suggest_float(p["name"], p["lo"], p["hi"])
    if p["kind"] == "log":
        return trial.suggest_float(p["name"], p["lo"], p["hi"], log=True)
    if p["kind"] == "int":
        return trial.suggest_int(p["name"], int(p["lo"]), int(p["hi"]))
    return trial.suggest_categorical(p["name"], list(range(p["n"])))


def objective_value(name, values):
    if name == "diverging":
        # The study's shape: a bowl in log lr with everything above lr = 0.1 diverging (NaN).
        lr, m = values
        if lr > 0.1:
            return float("nan")
        return (math.log10(lr) + 2.0) ** 2 + (m - 0.9) ** 2
    return FUNCTIONS[name](values)


def optimise(req):
    best, all_values = [], []
    for seed in req["seeds"]:
        sampler = optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=req["startup_trials"], multivariate=req["multivariate"]
        )
        study = optuna.create_study(sampler=sampler)
        values = []
        for _ in range(req["trials"]):
            trial = study.ask()
            x = [suggest(trial, p) for p in req["space"]]
            v = objective_value(req["function"], x)
            values.append({"x": x, "value": None if math.isnan(v) else v})
            if math.isnan(v):
                study.tell(trial, state=TrialState.FAIL)
            else:
                study.tell(trial, v)
        finite = [v["value"] for v in values if v["value"] is not None]
        best.append(min(finite) if finite else None)
        all_values.append(values)
    return {"best": best, "values": all_values}


def time_draws(req):
    """The median time of one ask with its suggests on a study holding the given trials."""
    import time

    space = {p["name"]: distribution(p) for p in req["space"]}
    sampler = optuna.samplers.TPESampler(seed=0, multivariate=True)
    study = optuna.create_study(sampler=sampler)
    study.add_trials(
        [
            create_trial(
                state=TrialState.COMPLETE,
                value=t["value"],
                params={p["name"]: external(p, x) for p, x in zip(req["space"], t["x"])},
                distributions=space,
            )
            for t in req["trials"]
        ]
    )
    times = []
    for _ in range(req["draws"]):
        t0 = time.perf_counter()
        trial = study.ask()
        for p in req["space"]:
            suggest(trial, p)
        times.append(time.perf_counter() - t0)
        # Failed: the next draw sees the same history.
        study.tell(trial, state=TrialState.FAIL)
    times.sort()
    return {"median_ms": 1e3 * times[len(times) // 2]}


def main():
    req = json.load(sys.stdin)
    ops = {"model": model, "optimise": optimise, "time": time_draws}
    json.dump(ops[req["op"]](req), sys.stdout)


if __name__ == "__main__":
    main()
