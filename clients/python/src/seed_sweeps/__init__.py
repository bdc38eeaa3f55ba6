"""seed_sweeps: the sweep coordinator from Python.

Inside a command job::

    job = seed_sweeps.job(defaults={"lr": 0.01, "epochs": 5})
    for epoch in range(job.start_epoch, job.params["epochs"] + 1):
        ...
        if job.report(epoch, accuracy=acc, state=model.state_dict()):
            break

From a notebook: ``Client().submit("sweep.toml").wait(progress=True).results()``; an external
sweep's trials in your own loop: ``sweep.optimize(objective, n_jobs=4)``. Guide: docs/python.md.
"""
from ._client import Client, Sweep, SweepDone, Trial
from ._errors import (
    ApiError,
    ConnectionFailed,
    InvalidSpec,
    NotFound,
    SweepError,
    TrialPruned,
    Unauthorized,
    VersionMismatch,
)
from ._http import API_VERSION
from ._job import Distributed, Job, job

__version__ = "0.1.0"

__all__ = [
    "API_VERSION",
    "ApiError",
    "Client",
    "ConnectionFailed",
    "Distributed",
    "InvalidSpec",
    "Job",
    "NotFound",
    "Sweep",
    "SweepDone",
    "SweepError",
    "Trial",
    "TrialPruned",
    "Unauthorized",
    "VersionMismatch",
    "job",
]
