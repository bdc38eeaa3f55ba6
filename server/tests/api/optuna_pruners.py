"""Optuna's own pruners on a scenario of reports: the reference the coordinator's early stopping is
checked against (server/tests/api/early_stop.rs). Reads the scenario as JSON on stdin and writes,
for each report it processed, [job, epoch, pruned]. A job stops reporting once pruned, and
completes (tell with its last value) after its last epoch, as a worker's job does."""
import json
import sys

import optuna

optuna.logging.set_verbosity(optuna.logging.ERROR)
sc = json.load(sys.stdin)
if sc["method"] == "asha":
    pruner = optuna.pruners.SuccessiveHalvingPruner(
        min_resource=sc["min_epochs"],
        reduction_factor=sc["reduction_factor"],
        min_early_stopping_rate=0,
    )
elif sc["method"] == "hyperband":
    # Our max_epochs: a number, "auto", or absent (each job's epochs, all the same here).
    pruner = optuna.pruners.HyperbandPruner(
        min_resource=sc["min_epochs"],
        max_resource=sc.get("max_epochs", sc["epochs"]),
        reduction_factor=sc["reduction_factor"],
    )
else:
    pruner = optuna.pruners.MedianPruner(
        n_startup_trials=sc["startup_trials"], n_warmup_steps=sc["min_epochs"]
    )
direction = "maximize" if sc["mode"] == "max" else "minimize"
# Hyperband's brackets hash the study's name: the sweep's.
study = optuna.create_study(study_name=sc["name"], direction=direction, pruner=pruner)
trials = [study.ask() for _ in range(sc["jobs"])]
done, out = set(), []
for job, epoch, value in sc["events"]:
    if job in done:
        continue
    t = trials[job]
    t.report(value, epoch)
    pruned = bool(t.should_prune())
    out.append([job, epoch, pruned])
    if pruned:
        study.tell(t, state=optuna.trial.TrialState.PRUNED)
        done.add(job)
    elif epoch == sc["epochs"]:
        study.tell(t, value)
        done.add(job)
json.dump(out, sys.stdout)
