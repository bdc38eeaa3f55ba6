"""Inside a job: the worker's environment contract as one object (params, reports, checkpoints,
the stop file), and the same script run alone outside a sweep."""
import base64
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from . import _contract as env
from ._errors import SweepError

#: The package's own state file in the checkpoint directory (the epoch and the state, one atomic
#: rename: the contract gives the program no epoch of its own).
STATE_TORCH = "seed_sweeps_state.pt"
STATE_JSON = "seed_sweeps_state.json"


@dataclass(frozen=True)
class Distributed:
    """Where the job's ranks meet: the contract's rendezvous (`MASTER_ADDR`, `MASTER_PORT`,
    `NNODES`, `NODE_RANK`) and, under torchrun, this process's `RANK`, `WORLD_SIZE`, `LOCAL_RANK`."""

    master_addr: str
    master_port: int
    nnodes: int
    node_rank: int
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that reports and saves."""
        return self.rank == 0


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SweepError(f"{name}={raw!r} is not an integer") from None


def _distributed() -> Distributed:
    return Distributed(
        master_addr=os.environ.get(env.MASTER_ADDR, "127.0.0.1"),
        master_port=_int_env(env.MASTER_PORT, 29500),
        nnodes=_int_env(env.NNODES, 1),
        node_rank=_int_env(env.NODE_RANK, 0),
        rank=_int_env("RANK", 0),
        world_size=_int_env("WORLD_SIZE", 1),
        local_rank=_int_env("LOCAL_RANK", 0),
    )


def _typed(raw: str, like: Any) -> Any:
    """A command-line value as the type of its default (JSON, else the text, when it has none)."""
    if isinstance(like, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise SweepError(f"expected true or false, got {raw!r}")
    if isinstance(like, int):
        try:
            return int(raw)
        except ValueError:
            raise SweepError(f"expected an integer, got {raw!r}") from None
    if isinstance(like, float):
        try:
            return float(raw)
        except ValueError:
            raise SweepError(f"expected a number, got {raw!r}") from None
    if isinstance(like, str):
        return raw
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def parse_args(argv: Sequence[str], defaults: Mapping[str, Any]) -> Dict[str, Any]:
    """`--key value` and `--key-with-hyphens value` pairs (a lone `--flag` is true) over the defaults."""
    out: Dict[str, Any] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            raise SweepError(f"unexpected argument {arg!r}: parameters are given as --name value")
        name, eq, value = arg[2:].partition("=")
        key = name.replace("-", "_")
        if eq:
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            value, i = argv[i + 1], i + 2
        else:
            value, i = "true", i + 1
        try:
            out[key] = _typed(value, defaults.get(key))
        except SweepError as e:
            raise SweepError(f"--{name}: {e}") from None
    return out


def _number(name: str, value: Any) -> float:
    """A metric's value as a float: Python numbers, numpy scalars, one-element tensors."""
    if hasattr(value, "item") and not isinstance(value, (int, float)):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SweepError(f"metric {name}: must be a number, got {type(value).__name__}")
    return float(value)


class Job:
    """The job a command sweep started this program for (or, outside a sweep, the script alone).

    `params` are the job's parameters; `start_epoch` is 1, or the epoch after the last one saved;
    `report` writes an epoch's metrics (saving `state` first) and says whether to stop."""

    def __init__(
        self,
        params: Dict[str, Any],
        *,
        in_sweep: bool,
        job_id: Optional[int],
        attempt: int,
        checkpoint_dir: Path,
        metrics_path: Optional[Path],
        stop_file: Optional[Path],
        distributed: Distributed,
    ) -> None:
        self.params = params
        self.in_sweep = in_sweep
        self.job_id = job_id
        self.attempt = attempt
        self.checkpoint_dir = checkpoint_dir
        self.distributed = distributed
        self._metrics_path = metrics_path
        self._stop_file = stop_file
        self._saved: Optional[Dict[str, Any]] = None
        self._saved_read = False
        self._last_epoch = 0
        self._diverged = False

    # ---- checkpoints ----

    def _read_saved(self) -> Optional[Dict[str, Any]]:
        if not self._saved_read:
            self._saved_read = True
            self._saved = _read_state(self.checkpoint_dir)
        return self._saved

    @property
    def start_epoch(self) -> int:
        """1 on a first start; after a resume, the epoch after the last one saved."""
        saved = self._read_saved()
        return 1 if saved is None else int(saved["epoch"]) + 1

    def load(self) -> Any:
        """What the last `save` (or `report(state=...)`) kept, or None on a first start. With torch,
        `torch.load(weights_only=True)` (torch 2.11's default): tensors, state dicts and plain
        containers of numbers and strings load; other objects need
        `torch.serialization.add_safe_globals`. Without torch: the bytes or JSON value saved."""
        saved = self._read_saved()
        return None if saved is None else saved["state"]

    def save(self, obj: Any, epoch: Optional[int] = None) -> None:
        """Keep `obj` as the job's state at `epoch` (default: the last reported one), atomically: a
        resume on another worker gets it back through `load`. Only rank 0 saves."""
        if not self.distributed.is_main:
            return
        at = self._last_epoch if epoch is None else int(epoch)
        _write_state(self.checkpoint_dir, at, obj)
        self._saved, self._saved_read = {"epoch": at, "state": obj}, True

    # ---- reports ----

    @property
    def should_stop(self) -> bool:
        """True once the worker asks the program to stop (the sweep cancelled, the job pruned, the
        worker stopping), or after a non-finite loss was reported."""
        return self._diverged or (self._stop_file is not None and self._stop_file.exists())

    def report(self, epoch: int, state: Any = None, **metrics: Any) -> bool:
        """Report epoch `epoch`'s metrics (numbers by name; NaN allowed). `state`, when given, is
        saved first, so the resume after this line starts at `epoch + 1`. Returns True when the
        program should stop: a prune reaches it one epoch after the report it was decided on."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
            raise SweepError(f"epoch: an integer from 1, got {epoch!r}")
        line: Dict[str, Any] = {"epoch": epoch}
        for name, value in metrics.items():
            line[name] = _number(name, value)
            if name.endswith("loss") and not math.isfinite(line[name]):
                self._diverged = True
        if not self.distributed.is_main:
            return self.should_stop
        if state is not None:
            self.save(state, epoch)
        self._last_epoch = epoch
        if self._metrics_path is None:
            shown = ", ".join(f"{k} {v:.6g}" for k, v in line.items() if k != "epoch")
            print(f"epoch {epoch}: {shown}", flush=True)
        else:
            with open(self._metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
                f.flush()
        return self.should_stop


def _read_state(directory: Path) -> Optional[Dict[str, Any]]:
    torch_file, json_file = directory / STATE_TORCH, directory / STATE_JSON
    if torch_file.exists():
        import torch  # saved with torch: it is installed

        saved = torch.load(torch_file, map_location="cpu", weights_only=True)
        return {"epoch": int(saved["epoch"]), "state": saved["state"]}
    if json_file.exists():
        saved = json.loads(json_file.read_text(encoding="utf-8"))
        state = saved["state"]
        if saved.get("kind") == "bytes":
            state = base64.b64decode(state)
        return {"epoch": int(saved["epoch"]), "state": state}
    return None


def _write_state(directory: Path, epoch: int, obj: Any) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    try:
        import torch
    except ImportError:
        torch = None  # type: ignore[assignment]
    if torch is not None:
        target, other = directory / STATE_TORCH, directory / STATE_JSON
        tmp = target.with_name(target.name + ".tmp")
        torch.save({"epoch": epoch, "state": obj}, tmp)
    else:
        target, other = directory / STATE_JSON, directory / STATE_TORCH
        if isinstance(obj, (bytes, bytearray)):
            doc = {"epoch": epoch, "kind": "bytes", "state": base64.b64encode(bytes(obj)).decode()}
        else:
            doc = {"epoch": epoch, "kind": "json", "state": obj}
        tmp = target.with_name(target.name + ".tmp")
        try:
            tmp.write_text(json.dumps(doc, allow_nan=False), encoding="utf-8")
        except (TypeError, ValueError) as e:
            raise SweepError(f"save: without torch, the state is bytes or JSON data ({e})") from None
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, target)
    if other.exists():
        other.unlink()


def job(defaults: Optional[Mapping[str, Any]] = None, argv: Optional[List[str]] = None) -> Job:
    """The job this program runs as. In a sweep (`SWEEP_PARAMS` set) its parameters override
    `defaults` (the command line is the script's own); alone, `--key value` arguments (`argv`,
    default the command line) override `defaults`, reports are printed, and the checkpoint
    directory is a fresh one."""
    base = dict(defaults or {})
    raw = os.environ.get(env.PARAMS)
    in_sweep = raw is not None
    if not in_sweep:
        params = {**base, **parse_args(sys.argv[1:] if argv is None else list(argv), base)}
    else:
        # In a sweep the job's parameters are all in SWEEP_PARAMS: the command line is left to the
        # script (it may have arguments of its own).
        params = base
        try:
            given = json.loads(raw or "")
        except ValueError as e:
            raise SweepError(f"{env.PARAMS} is not JSON: {e}") from None
        if not isinstance(given, dict):
            raise SweepError(f"{env.PARAMS} is not a JSON object")
        params.update(given)
    ckpt = os.environ.get(env.CHECKPOINT_DIR)
    checkpoint_dir = Path(ckpt) if ckpt else Path(tempfile.mkdtemp(prefix="seed_sweeps-"))
    metrics = os.environ.get(env.METRICS)
    stop = os.environ.get(env.STOP_FILE)
    job_id = os.environ.get(env.JOB_ID)
    return Job(
        params,
        in_sweep=in_sweep,
        job_id=int(job_id) if job_id else None,
        attempt=_int_env(env.ATTEMPT, 1),
        checkpoint_dir=checkpoint_dir,
        metrics_path=Path(metrics) if metrics else None,
        stop_file=Path(stop) if stop else None,
        distributed=_distributed(),
    )
