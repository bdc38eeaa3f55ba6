"""A sweep as an Optuna study, so optuna-dashboard, optuna.visualization and optuna.importance open
any of our sweeps. Where Optuna's view then differs from ours: docs/python.md."""
from typing import Any, Dict, List, Optional, Tuple

from ._errors import SweepError

#: Our final job statuses as Optuna's trial states (a diverged trial is a failure to Optuna).
STATES = {"completed": "COMPLETE", "pruned": "PRUNED", "diverged": "FAIL", "failed": "FAIL", "cancelled": "FAIL"}


def _distributions(optuna: Any, axes: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The sweep's axes as Optuna distributions: a grid's values (and a search's choices) as
    categorical, a search's ranges as float or int ones (log where the space is log-uniform)."""
    d = optuna.distributions
    out: Dict[str, Any] = {}
    for a in axes:
        if a.get("choices") is not None:
            out[a["name"]] = d.CategoricalDistribution(a["choices"])
        elif a.get("int"):
            out[a["name"]] = d.IntDistribution(int(a["low"]), int(a["high"]))
        else:
            out[a["name"]] = d.FloatDistribution(float(a["low"]), float(a["high"]), log=a.get("scale") == "log")
    return out


def _objectives(sweep: Any, shape: Dict[str, Any]) -> List[Tuple[str, str]]:
    """(metric, mode) per objective: a search's several, else the shape's one."""
    search = (sweep.info().get("spec") or {}).get("search") or {}
    listed = search.get("objectives")
    if listed:
        return [(o["metric"], o.get("mode") or "max") for o in listed]
    return [(shape["objective"], shape["mode"])]


def _values(metrics: List[Dict[str, Any]], names: List[str]) -> Optional[List[float]]:
    """Each objective's value at the last epoch that reported it (None if any is missing or NaN)."""
    out = []
    for name in names:
        found = None
        for m in reversed(metrics):
            v = m.get(name, (m.get("extra") or {}).get(name))
            if v is not None:
                found = float(v)
                break
        if found is None:
            return None
        out.append(found)
    return out


def _intermediate(metrics: List[Dict[str, Any]], name: str) -> Dict[int, float]:
    out = {}
    for m in metrics:
        v = m.get(name, (m.get("extra") or {}).get(name))
        if v is not None:
            out[int(m["epoch"])] = float(v)
    return out


def to_optuna(sweep: Any, storage: str, study_name: Optional[str] = None) -> Any:
    """Write `sweep` (a `Sweep`, duck-typed: this module imports nothing of the client's) into
    `storage` as a new Optuna study and return it: every ended trial with its
    params on the sweep's axes, value(s), intermediate values per epoch (one objective) and state;
    our job id and status as user attributes. Pending and running jobs are left out."""
    try:
        import optuna
    except ImportError:
        raise SweepError("to_optuna needs optuna: pip install 'seed-sweeps[optuna]'") from None
    shape = sweep.shape()
    dists = _distributions(optuna, shape["axes"])
    objectives = _objectives(sweep, shape)
    names = [m for m, _ in objectives]
    directions = ["maximize" if mode == "max" else "minimize" for _, mode in objectives]
    trials = []
    for row in sweep.jobs():
        state = STATES.get(row["status"])
        if state is None:
            continue
        metrics = sweep.job(row["id"])["metrics"]
        values = _values(metrics, names) if state == "COMPLETE" else None
        if state == "COMPLETE" and values is None:
            state = "FAIL"  # completed without its objective: nothing Optuna could rank
        params = {k: v for k, v in (row.get("params") or {}).items() if k in dists}
        trials.append(
            optuna.trial.create_trial(
                state=getattr(optuna.trial.TrialState, state),
                params=params,
                distributions={k: dists[k] for k in params},
                values=values,
                intermediate_values=_intermediate(metrics, names[0]) if len(names) == 1 else None,
                user_attrs={"job_id": row["id"], "status": row["status"]},
            )
        )
    name = study_name or f"sweep-{sweep.id}"
    study = optuna.create_study(storage=storage, study_name=name, directions=directions)
    study.set_user_attr("sweep_id", sweep.id)
    study.set_user_attr("objectives", names)
    study.add_trials(trials)
    return study
