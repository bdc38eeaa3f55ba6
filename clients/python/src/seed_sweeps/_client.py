"""From a notebook or a script: submit sweeps, follow them, read their results, and run an external
sweep's trials in your own loop (ask, tell, optimize)."""
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from . import _contract as env
from ._errors import ApiError, SweepError, TrialPruned
from ._http import Http, check_version, dumps

_UNSET: Any = object()  # tell's value not given (None is NaN: the trial diverged)
FINAL = ("completed", "diverged", "failed", "cancelled", "pruned")
NAMED_METRICS = ("lr", "train_loss", "test_loss", "accuracy", "precision", "recall", "f1", "images_per_sec", "seconds")


class SweepDone(SweepError):
    """The sweep has no trial left to ask for (every trial ended, or it was cancelled)."""


class Client:
    """A coordinator: `Client()` reads `SWEEP_SERVER` and `SWEEP_TOKEN` (default
    `http://127.0.0.1:8080`); the API version is checked at once."""

    def __init__(self, url: Optional[str] = None, token: Optional[str] = None, *, timeout: float = 30.0) -> None:
        url = url or os.environ.get(env.SERVER) or "http://127.0.0.1:8080"
        token = token if token is not None else os.environ.get(env.TOKEN)
        self.http = Http(url, token, timeout)
        self.api_version = self.http.health()
        check_version(self.api_version, self.http.url)

    @property
    def url(self) -> str:
        """The coordinator's base URL."""
        return self.http.url

    def submit(self, spec: Union[str, Path, Mapping[str, Any]], *, dry_run: bool = False) -> "Sweep":
        """Submit a sweep: a path to a .toml or .json file, a TOML string, or a dict. Its warnings
        are kept on the returned sweep (`sweep.warnings`)."""
        body, kind = _spec_body(spec)
        query = "?dry_run=true" if dry_run else ""
        doc = self.http.json("POST", f"/api/sweeps{query}", data=body.encode(), headers={"Content-Type": kind})
        if dry_run:
            raise SweepError("dry_run: use client.dry_run(spec) for the jobs a spec would make")
        sweep = Sweep(self, int(doc["id"]))
        sweep.warnings = list(doc.get("warnings", []))
        return sweep

    def dry_run(self, spec: Union[str, Path, Mapping[str, Any]]) -> Dict[str, Any]:
        """The jobs a spec would make, nothing stored."""
        body, kind = _spec_body(spec)
        return self.http.json("POST", "/api/sweeps?dry_run=true", data=body.encode(), headers={"Content-Type": kind})

    def sweeps(self) -> List[Dict[str, Any]]:
        """Every sweep's row: id, name, status and counts."""
        doc = self.http.json("GET", "/api/sweeps")
        return list(doc if isinstance(doc, list) else doc.get("sweeps", []))

    def sweep(self, sweep_id: int) -> "Sweep":
        """Sweep `sweep_id` (checked to exist)."""
        s = Sweep(self, int(sweep_id))
        s.info()
        return s


def _spec_body(spec: Union[str, Path, Mapping[str, Any]]) -> Tuple[str, str]:
    if isinstance(spec, Mapping):
        if "name" not in spec:
            raise SweepError("the sweep is a dict without a name: a sweep file has name and [train], [grid] or [search]")
        return json.dumps(spec), "application/json"
    if isinstance(spec, Path) or (isinstance(spec, str) and "\n" not in spec and spec.endswith((".toml", ".json"))):
        path = Path(spec)
        if not path.is_file():
            raise SweepError(f"no sweep file at {path}")
        kind = "application/json" if path.suffix == ".json" else "application/toml"
        return path.read_text(encoding="utf-8"), kind
    if isinstance(spec, str):
        return spec, "application/toml"
    raise SweepError(f"a sweep is a path, a TOML string or a dict, not {type(spec).__name__}")


class Sweep:
    """One sweep on a coordinator."""

    def __init__(self, client: Client, sweep_id: int) -> None:
        self.client = client
        self.id = sweep_id
        self.warnings: List[str] = []

    def __repr__(self) -> str:
        return f"Sweep({self.id})"

    @property
    def _http(self) -> Http:
        return self.client.http

    def info(self) -> Dict[str, Any]:
        """The sweep's row and spec (its jobs are read with `jobs()`)."""
        return self._http.json("GET", f"/api/sweeps/{self.id}?limit=1")

    @property
    def status(self) -> str:
        """`pending`, `running`, `finished` or `cancelled`, read now."""
        return str(self.info()["status"])

    def wait(self, progress: bool = False, *, poll: float = 1.0, timeout: Optional[float] = None) -> "Sweep":
        """Return once every job has ended (or the sweep was cancelled); `progress` shows a bar
        (tqdm when installed, else a line per change on stderr)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = _Progress(progress)
        try:
            while True:
                row = self.info()
                done = sum(int(row.get(k, 0)) for k in FINAL)
                bar.show(done, int(row.get("total", 0)), row)
                if row["status"] in ("finished", "cancelled"):
                    return self
                if deadline is not None and time.monotonic() > deadline:
                    raise SweepError(f"sweep {self.id} did not finish within {timeout} s ({done} of {row.get('total')} jobs ended)")
                time.sleep(poll)
        finally:
            bar.close()

    def results(self, format: str = "markdown") -> Any:
        """The sweep's table as the REST export gives it: `markdown` or `csv` text, `json` parsed."""
        if format not in ("markdown", "csv", "json"):
            raise SweepError(f"format: markdown, csv or json, not {format!r}")
        r = self._http.call("GET", f"/api/sweeps/{self.id}/results?format={format}")
        return r.json() if format == "json" else r.text

    def jobs(self) -> List[Dict[str, Any]]:
        """Every job: id, params, status, attempt, epoch and its latest metrics, in sweep order."""
        out: List[Dict[str, Any]] = []
        while True:
            page = self._http.json("GET", f"/api/sweeps/{self.id}/jobs?offset={len(out)}&limit=500")
            out.extend(page["jobs"])
            if not page["jobs"] or len(out) >= int(page["total"]):
                return out

    def job(self, job_id: int) -> Dict[str, Any]:
        """One job with every epoch's metrics and its attempts."""
        return self._http.json("GET", f"/api/jobs/{int(job_id)}")

    def shape(self) -> Dict[str, Any]:
        """What the sweep varies (its axes) and what its jobs reported (metrics, the objective)."""
        return self._http.json("GET", f"/api/sweeps/{self.id}/shape")

    def to_pandas(self) -> Any:
        """One row per job: its id and status, its parameters, its final (latest) metrics."""
        try:
            import pandas as pd
        except ImportError:
            raise SweepError("to_pandas needs pandas: pip install 'seed-sweeps[pandas]'") from None
        rows = []
        for j in self.jobs():
            row: Dict[str, Any] = {"job": j["id"], "status": j["status"], "attempt": j["attempt"], "epoch": j["epoch"]}
            row.update(j.get("params") or {})
            row.update(_metrics_of(j.get("latest")))
            rows.append(row)
        return pd.DataFrame(rows)

    def best(self) -> Optional[Dict[str, Any]]:
        """The completed job with the best value of the sweep's objective (its shape's): job, value,
        params, metrics; None while none has one."""
        shape = self.shape()
        metric, mode = shape["objective"], shape["mode"]
        best = None
        for j in self.jobs():
            value = _metrics_of(j.get("latest")).get(metric)
            if j["status"] != "completed" or value is None or value != value:
                continue
            if best is None or (value > best["value"] if mode == "max" else value < best["value"]):
                best = {"job": j["id"], "value": value, "metric": metric, "params": j["params"], "metrics": _metrics_of(j.get("latest"))}
        return best

    def front(self) -> Dict[str, Any]:
        """A sweep with several objectives: its Pareto front (GET /api/sweeps/{id}/pareto)."""
        return self._http.json("GET", f"/api/sweeps/{self.id}/pareto")

    def cancel(self) -> None:
        """Cancel: pending jobs end at once, running ones on their next heartbeat."""
        self._http.call("POST", f"/api/sweeps/{self.id}/cancel", ok_empty=True)

    # ---- ask and tell ----

    def ask(self, lease_seconds: Optional[int] = None, worker: Optional[str] = None) -> Optional["Trial"]:
        """A trial of this external sweep (`[run] external = true`), or None while every trial left is
        out with someone else (they may come back). Raises SweepDone once none is left."""
        body: Dict[str, Any] = {}
        if lease_seconds is not None:
            body["lease_seconds"] = int(lease_seconds)
        if worker is not None:
            body["worker"] = worker
        try:
            r = self._http.call("POST", f"/api/sweeps/{self.id}/ask", ok_empty=True, json=body)
        except ApiError as e:
            if e.status == 410:
                raise SweepDone(e.message) from None
            raise
        if r.status_code == 204:
            return None
        return Trial(self, r.json())

    def tell(
        self,
        trial: "Trial",
        value: Any = _UNSET,
        values: Optional[Sequence[Optional[float]]] = None,
        state: str = "completed",
        error: Optional[str] = None,
    ) -> Dict[str, Any]:
        """End `trial`: its value (or values, one per objective; NaN ends it diverged) and state
        (`completed`, `failed`, `pruned`)."""
        body: Dict[str, Any] = {"job_id": trial.job_id, "attempt": trial.attempt, "state": state}
        if value is not _UNSET:
            body["value"] = None if value is None else float(value)
        if values is not None:
            body["values"] = [None if v is None else float(v) for v in values]
        if error is not None:
            body["error"] = error
        trial._stop_heartbeats()
        return self._http.json(
            "POST",
            f"/api/sweeps/{self.id}/tell",
            data=dumps(body).encode(),
            headers=trial._headers(),
        )

    def optimize(
        self,
        objective: Callable[["Trial"], Any],
        n_trials: Optional[int] = None,
        n_jobs: int = 1,
        *,
        catch: Tuple[type, ...] = (),
        poll: float = 0.5,
    ) -> None:
        """Run `objective(trial)` on this external sweep's trials until it is done (or `n_trials` have
        run here), `n_jobs` at once, heartbeating while each runs. The objective returns its value
        (a sequence for several objectives; NaN: diverged) or raises TrialPruned. Another exception
        fails its trial with its traceback in the job's log, and then, as in Optuna, stops optimize
        and is raised again unless it is one of `catch`."""
        if n_jobs < 1:
            raise SweepError("n_jobs: at least 1")
        runner = _Optimizer(self, objective, n_trials, catch, poll)
        threads = [threading.Thread(target=runner.loop, daemon=True) for _ in range(n_jobs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if runner.raised is not None:
            raise runner.raised

    def to_optuna(self, storage: str, study_name: Optional[str] = None) -> Any:
        """Write the sweep as an Optuna study in `storage` (see docs/python.md) and return it."""
        from ._optuna import to_optuna

        return to_optuna(self, storage, study_name)


def _metrics_of(report: Optional[Mapping[str, Any]]) -> Dict[str, Optional[float]]:
    """A stored report's metrics by name: the named ones and the program's own (`extra`)."""
    if not report:
        return {}
    out = {k: report[k] for k in NAMED_METRICS if report.get(k) is not None}
    out.update(report.get("extra") or {})
    return out


class _Progress:
    def __init__(self, on: bool) -> None:
        self.on, self.bar, self.last = on, None, None
        if on:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(unit="job")
            except ImportError:
                self.bar = None

    def show(self, done: int, total: int, row: Mapping[str, Any]) -> None:
        if not self.on:
            return
        if self.bar is not None:
            self.bar.total = total
            self.bar.n = done
            self.bar.set_postfix_str(f"running {row.get('running', 0)}")
            self.bar.refresh()
        elif (done, total) != self.last:
            print(f"sweep {row.get('id')}: {done} of {total} jobs ended, {row.get('running', 0)} running", file=sys.stderr, flush=True)
        self.last = (done, total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Trial:
    """A trial asked for: `params`, `report` intermediate values, then `sweep.tell(trial, value)`."""

    def __init__(self, sweep: Sweep, claim: Mapping[str, Any]) -> None:
        self.sweep = sweep
        self.job_id = int(claim["id"])
        self.attempt = int(claim["attempt"])
        self.params: Dict[str, Any] = dict(claim.get("params") or {})
        self.lease_secret = str(claim["lease_secret"])
        self.lease_seconds = (claim.get("lease_ms") or 60_000) / 1000
        self.should_stop = False
        self._log_offset = 0
        self._beat: Optional[threading.Thread] = None
        self._quit = threading.Event()

    @property
    def number(self) -> int:
        """The trial's job id (Optuna's `trial.number` is a count; ours is the job)."""
        return self.job_id

    def __repr__(self) -> str:
        return f"Trial(job {self.job_id}, attempt {self.attempt}, {self.params})"

    def _headers(self) -> Dict[str, str]:
        return {"Content-Type": "application/json", "X-Lease-Secret": self.lease_secret}

    def report(self, epoch: int, **metrics: Any) -> bool:
        """Epoch `epoch`'s intermediate values (for curves and early stopping); True when the
        sweep's early-stopping rule prunes the trial (then tell it `pruned` or raise TrialPruned)."""
        body: Dict[str, Any] = {"attempt": self.attempt, "epoch": int(epoch), "extra": {}}
        for name, value in metrics.items():
            target = body if name in NAMED_METRICS else body["extra"]
            target[name] = None if value is None else float(value)
        reply = self.sweep._http.json("POST", f"/api/jobs/{self.job_id}/metrics", data=dumps(body).encode(), headers=self._headers())
        self.should_stop = self.should_stop or bool(reply.get("stop"))
        return self.should_stop

    def should_prune(self) -> bool:
        """Optuna's name: whether the last report (or a heartbeat) said to stop."""
        return self.should_stop

    def log(self, text: str) -> None:
        """Append to the trial's log (shown on its job's page)."""
        data = text.encode()
        self.sweep._http.call(
            "POST",
            f"/api/jobs/{self.job_id}/log?attempt={self.attempt}&offset={self._log_offset}",
            ok_empty=True,
            data=data,
            headers={"Content-Type": "application/octet-stream", "X-Lease-Secret": self.lease_secret},
        )
        self._log_offset += len(data)

    def heartbeat(self) -> None:
        """Renew the lease (optimize does it in the background)."""
        reply = self.sweep._http.json(
            "POST", f"/api/jobs/{self.job_id}/heartbeat", data=json.dumps({"attempt": self.attempt}).encode(), headers=self._headers()
        )
        self.should_stop = self.should_stop or bool(reply.get("stop") or reply.get("cancel"))

    def _start_heartbeats(self) -> None:
        def beat() -> None:
            while not self._quit.wait(max(0.2, self.lease_seconds / 4)):
                try:
                    self.heartbeat()
                except SweepError:
                    return  # the lease is gone: the tell will say so

        self._beat = threading.Thread(target=beat, daemon=True)
        self._beat.start()

    def _stop_heartbeats(self) -> None:
        self._quit.set()
        if self._beat is not None and self._beat is not threading.current_thread():
            self._beat.join()

    # Optuna's suggest API over the coordinator's draw: the value is already chosen.
    def _suggested(self, name: str) -> Any:
        if name not in self.params:
            raise SweepError(f"{name} is not a parameter of this sweep (its trials have {sorted(self.params)})")
        return self.params[name]

    def suggest_float(self, name: str, *args: Any, **kwargs: Any) -> float:
        """Optuna's call, for code written for Optuna: the value the sweep drew (its space is the
        sweep file's; the other arguments are ignored)."""
        return float(self._suggested(name))

    def suggest_int(self, name: str, *args: Any, **kwargs: Any) -> int:
        """As `suggest_float`, an integer parameter."""
        return int(self._suggested(name))

    def suggest_categorical(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """As `suggest_float`, a choice."""
        return self._suggested(name)


class _Optimizer:
    """optimize's shared state: trials started here, the first exception to raise."""

    def __init__(self, sweep: Sweep, objective: Callable[[Trial], Any], n_trials: Optional[int], catch: Tuple[type, ...], poll: float) -> None:
        self.sweep, self.objective, self.n_trials, self.catch, self.poll = sweep, objective, n_trials, catch, poll
        self.started = 0
        self.lock = threading.Lock()
        self.raised: Optional[BaseException] = None

    def _take_turn(self) -> bool:
        with self.lock:
            if self.raised is not None or (self.n_trials is not None and self.started >= self.n_trials):
                return False
            self.started += 1
            return True

    def _give_back_turn(self) -> None:
        with self.lock:
            self.started -= 1

    def loop(self) -> None:
        while self._take_turn():
            try:
                trial = self.sweep.ask()
            except SweepDone:
                self._give_back_turn()
                return
            except BaseException as e:  # noqa: BLE001 - raised again from optimize
                with self.lock:
                    self.raised = self.raised or e
                return
            if trial is None:
                self._give_back_turn()
                time.sleep(self.poll)
                continue
            try:
                self._run(trial)
            except BaseException as e:  # noqa: BLE001 - a tell refused: raised again from optimize
                with self.lock:
                    self.raised = self.raised or e
                return

    def _run(self, trial: Trial) -> None:
        trial._start_heartbeats()
        try:
            result = self.objective(trial)
        except TrialPruned:
            self.sweep.tell(trial, state="pruned")
            return
        except BaseException as e:  # noqa: BLE001 - told as the trial's failure first
            text = traceback.format_exc()
            try:
                trial.log(text)
                self.sweep.tell(trial, state="failed", error=f"{type(e).__name__}: {e}")
            finally:
                if not isinstance(e, self.catch):
                    with self.lock:
                        self.raised = self.raised or e
            return
        finally:
            trial._stop_heartbeats()
        if result is None:
            self.sweep.tell(trial, state="failed", error="the objective returned None: return its value (NaN: diverged)")
        elif isinstance(result, (list, tuple)):
            self.sweep.tell(trial, values=result)  # NaN is sent as null by tell
        else:
            self.sweep.tell(trial, value=result)

