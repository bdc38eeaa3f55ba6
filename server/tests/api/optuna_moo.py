"""Optuna 5.0's multi-objective pieces on given inputs: the reference the Pareto, NSGA-II and
multi-objective TPE tests compare us with.

Reads JSON on stdin and writes JSON on stdout. Losses are minimised (maximised values negated by
the caller) unless "directions" says otherwise.

  {"op": "ranks", "loss": [[...]], "penalty": [...] | null, "n_below": n | null}
    -> {"ranks": [...]}: _fast_non_domination_rank
  {"op": "crowding", "values": [[...]]}
    -> {"order": [i...], "distances": [d or null (infinite)...]}: the order _crowding_distance_sort
       leaves the trials in, and each trial's _calc_crowding_distance
  {"op": "elite", "values": [[...]], "directions": ["minimize"|"maximize"], "penalty": [...] | null,
   "population": n}
    -> {"elite": [i...]}: NSGAIIElitePopulationSelectionStrategy's survivors (sorted)
  {"op": "split", "space": [...], "directions": [...], "trials": [...]}
    -> {"good": [i...], "bad": [i...], "weights_good": [...]}: TPE's _split_trials at its default
       gamma for several objectives, and the good estimator's weights (normalised, prior last)
  {"op": "children", "space": [...], "directions": [...], "parents": [...], "draws": n,
   "crossover_prob", "swapping_prob", "mutation_prob": p | null, "seed"}
    -> {"children": [[value or null (mutated) per parameter], ...]}
  {"op": "optimise", "sampler": "nsga2"|"tpe"|"random", "problem": name, "trials": n,
   "seeds": [...], "population": n}
    -> {"values": [per seed, [[f1, f2], ...] of every trial]}
  {"op": "time", "sampler": "nsga2"|"tpe", "space": [...], "directions": [...], "trials": [...],
   "draws": n}
    -> {"median_ms": the median time of one ask and its suggests}

space: [{"name", "kind": "float"|"log"|"int"|"choice", "lo", "hi", "n"}]; a trial is {"x":
[internal values], "state": our status word, "values": [...], "epoch", "value", "violation"}.
"""

import json
import math
import sys

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers._tpe.parzen_estimator import _ParzenEstimator, _ParzenEstimatorParameters
from optuna.samplers._tpe.sampler import _split_trials, default_gamma_multiobjective, default_weights
from optuna.samplers.nsgaii._child_generation_strategy import NSGAIIChildGenerationStrategy
from optuna.samplers.nsgaii._crossovers._uniform import UniformCrossover
from optuna.samplers.nsgaii._elite_population_selection_strategy import (
    NSGAIIElitePopulationSelectionStrategy,
    _calc_crowding_distance,
    _crowding_distance_sort,
)
from optuna.samplers._lazy_random_state import LazyRandomState
from optuna.study._multi_objective import _fast_non_domination_rank
from optuna.trial import TrialState, create_trial

# The same space as the TPE parity script's (this directory is on the path when run as a script).
from optuna_tpe import distribution, external, suggest

optuna.logging.set_verbosity(optuna.logging.WARNING)


def frozen(i, values, violation=None, state=TrialState.COMPLETE, params=None, space=None, iv=None):
    attrs = {} if violation is None else {"constraints:c": violation}
    kw = {}
    if params is not None:
        kw = dict(params=params, distributions=space)
    if state == TrialState.COMPLETE:
        t = create_trial(state=state, values=values, system_attrs=attrs, **kw)
    elif state == TrialState.PRUNED:
        t = create_trial(state=state, system_attrs=attrs, intermediate_values=iv or {}, **kw)
    else:
        t = create_trial(state=state, system_attrs=attrs, **kw)
    t.number = i
    t._trial_id = i
    return t


def ranks(req):
    loss = np.asarray(req["loss"], dtype=float)
    penalty = None if req.get("penalty") is None else np.asarray(req["penalty"], dtype=float)
    r = _fast_non_domination_rank(loss, penalty=penalty, n_below=req.get("n_below"))
    return {"ranks": [int(x) for x in r]}


def crowding(req):
    pop = [frozen(i, v) for i, v in enumerate(req["values"])]
    dist = _calc_crowding_distance(list(pop))
    _crowding_distance_sort(pop)
    # JSON has no infinity: an end of the range (infinitely far) is null.
    distances = [dist[i] if math.isfinite(dist[i]) else None for i in range(len(pop))]
    return {"order": [t.number for t in pop], "distances": distances}


def directions(req):
    return [optuna.study.StudyDirection.MAXIMIZE if d == "maximize" else optuna.study.StudyDirection.MINIMIZE
            for d in req["directions"]]


def elite(req):
    penalty = req.get("penalty")
    pop = [frozen(i, v, None if penalty is None else penalty[i]) for i, v in enumerate(req["values"])]
    study = optuna.create_study(directions=req["directions"])
    strategy = NSGAIIElitePopulationSelectionStrategy(population_size=req["population"])
    return {"elite": sorted(t.number for t in strategy(study, pop))}


def history(req, space):
    out = []
    for i, t in enumerate(req["trials"]):
        params = {p["name"]: external(p, x) for p, x in zip(req["space"], t["x"])}
        state = {"completed": TrialState.COMPLETE, "pruned": TrialState.PRUNED}.get(t["state"], TrialState.RUNNING)
        iv = {t["epoch"]: t["value"]} if t.get("epoch") is not None else {}
        v = t.get("violation")
        out.append(frozen(i, t.get("values"), v if v else None, state, params, space, iv))
    return out


def split(req):
    space = {p["name"]: distribution(p) for p in req["space"]}
    study = optuna.create_study(directions=req["directions"])
    trials = history(req, space)
    n = sum(t.state != TrialState.RUNNING for t in trials)
    good, bad = _split_trials(study, trials, default_gamma_multiobjective(n))
    names = [p["name"] for p in req["space"]]
    obs = {n_: np.asarray([req["trials"][t.number]["x"][names.index(n_)] for t in good], dtype=float) for n_ in names}
    params = _ParzenEstimatorParameters(1.0, True, False, default_weights, True)
    est = _ParzenEstimator(obs, space, params, np.ones(len(good)))
    return {"good": [t.number for t in good], "bad": [t.number for t in bad],
            "weights_good": est._mixture_distribution.weights.tolist()}


def children(req):
    space = {p["name"]: distribution(p) for p in req["space"]}
    study = optuna.create_study(directions=req["directions"])
    parents = history({"space": req["space"], "trials": req["parents"]}, space)
    rng = LazyRandomState(req["seed"])
    strategy = NSGAIIChildGenerationStrategy(
        crossover_prob=req["crossover_prob"], swapping_prob=req["swapping_prob"],
        mutation_prob=req.get("mutation_prob"), crossover=UniformCrossover(req["swapping_prob"]),
        rng=rng)
    out = []
    for _ in range(req["draws"]):
        child = strategy(study, space, parents)
        out.append([child.get(p["name"]) for p in req["space"]])
    return {"children": out}


def problem(name, x):
    """Bi-objective test problems, both minimised, x in [0, 1]^n."""
    n = len(x)
    if name == "zdt1":
        g = 1 + 9 * sum(x[1:]) / (n - 1)
        return [x[0], g * (1 - math.sqrt(x[0] / g))]
    if name == "zdt2":
        g = 1 + 9 * sum(x[1:]) / (n - 1)
        return [x[0], g * (1 - (x[0] / g) ** 2)]
    if name == "schaffer":
        z = 4 * x[0] - 2
        return [z * z, (z - 2) ** 2]
    raise ValueError(name)


def optimise(req):
    dims = req.get("dims", 4)
    all_values = []
    for seed in req["seeds"]:
        if req["sampler"] == "nsga2":
            sampler = optuna.samplers.NSGAIISampler(seed=seed, population_size=req["population"])
        elif req["sampler"] == "tpe":
            sampler = optuna.samplers.TPESampler(seed=seed)
        else:
            sampler = optuna.samplers.RandomSampler(seed=seed)
        study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
        values = []
        for _ in range(req["trials"]):
            trial = study.ask()
            x = [trial.suggest_float(f"x{i}", 0.0, 1.0) for i in range(dims)]
            v = problem(req["problem"], x)
            study.tell(trial, v)
            values.append(v)
        all_values.append(values)
    return {"values": all_values}


def time_draws(req):
    import time

    space = {p["name"]: distribution(p) for p in req["space"]}
    if req["sampler"] == "nsga2":
        sampler = optuna.samplers.NSGAIISampler(seed=0)
    else:
        sampler = optuna.samplers.TPESampler(seed=0)
    study = optuna.create_study(directions=req["directions"], sampler=sampler)
    # NSGA-II's generations as its own draws would have recorded them.
    key = "NSGAIISampler:generation"
    study.add_trials([
        create_trial(state=TrialState.COMPLETE, values=t["values"],
                     params={p["name"]: external(p, x) for p, x in zip(req["space"], t["x"])},
                     distributions=space,
                     system_attrs={key: t["generation"]} if "generation" in t else {})
        for t in req["trials"]
    ])
    def ask_and_suggest():
        trial = study.ask()
        for p in req["space"]:
            suggest(trial, p)
        return trial

    # One untimed draw: NSGA-II chooses (and caches) its parents, as a running study has them.
    study.tell(ask_and_suggest(), state=TrialState.FAIL)
    times = []
    for _ in range(req["draws"]):
        t0 = time.perf_counter()
        trial = ask_and_suggest()
        times.append(time.perf_counter() - t0)
        study.tell(trial, state=TrialState.FAIL)
    times.sort()
    return {"median_ms": 1e3 * times[len(times) // 2]}


def main():
    req = json.load(sys.stdin)
    ops = {"ranks": ranks, "crowding": crowding, "elite": elite, "split": split,
           "children": children, "optimise": optimise, "time": time_draws}
    json.dump(ops[req["op"]](req), sys.stdout)


if __name__ == "__main__":
    main()
