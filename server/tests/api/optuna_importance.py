"""Optuna 5.0's default parameter importance (PED-ANOVA) on given trials: the reference the
importance parity tests compare us with.

Reads JSON on stdin and writes JSON on stdout.

  {"space": [{"name", "kind": "float"|"log"|"int"|"choice", "lo", "hi", "choices"}],
   "mode": "min"|"max", "trials": [{"params": {name: value}, "value": number}]}
    -> {"importances": {name: importance, ...}} as
       optuna.importance.get_param_importances(study, evaluator=PedAnovaImportanceEvaluator())
       gives them on a study made of those completed trials.
"""

import json
import sys
import warnings

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.importance import PedAnovaImportanceEvaluator
from optuna.trial import create_trial

optuna.logging.set_verbosity(optuna.logging.WARNING)
warnings.simplefilter("ignore")


def distribution(p):
    if p["kind"] == "float":
        return FloatDistribution(p["lo"], p["hi"])
    if p["kind"] == "log":
        return FloatDistribution(p["lo"], p["hi"], log=True)
    if p["kind"] == "int":
        return IntDistribution(p["lo"], p["hi"])
    return CategoricalDistribution(p["choices"])


def main():
    req = json.load(sys.stdin)
    dists = {p["name"]: distribution(p) for p in req["space"]}
    direction = "minimize" if req["mode"] == "min" else "maximize"
    study = optuna.create_study(direction=direction)
    study.add_trials(
        [
            create_trial(params=t["params"], distributions=dists, value=t["value"])
            for t in req["trials"]
        ]
    )
    imp = optuna.importance.get_param_importances(
        study, evaluator=PedAnovaImportanceEvaluator()
    )
    json.dump({"importances": imp}, sys.stdout)


if __name__ == "__main__":
    main()
