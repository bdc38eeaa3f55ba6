"""Our PBT decisions against Ray Tune's own code, on the same reports with the same random draws.

Outside CI (Ray is a large install); run:
    python3 -m venv /tmp/rayvenv && /tmp/rayvenv/bin/pip install "ray[tune]"
    PBT_TRACE=/tmp/pbt-trace.json cargo test -p server --lib pbt::tests::ray_trace -- --ignored
    /tmp/rayvenv/bin/python scripts/pbt-ray-parity.py /tmp/pbt-trace.json

The trace (server/src/sweep/pbt.rs, `ray_trace`) holds populations' reports in arrival order, each
with the draws our decision made and the decision. Here Ray's `PopulationBasedTraining._quantiles`
ranks the population and Ray's `_explore` perturbs the donor's config, with Python's `random` and
the search space's `sample` answering the draws we recorded; the few lines of
`on_trial_result`/`_checkpoint_or_exploit` between them (which need a running Tune controller) are
restated below as Ray writes them. Every decision, donor, epoch and new config must agree, and
every recorded draw must be consumed.
"""
import json
import random
import sys

from ray import tune
from ray.tune.schedulers import pbt as ray_pbt
from ray.tune.search.sample import Domain


class Replay:
    def __init__(self, draws):
        self.draws = list(draws)

    def take(self, kind):
        assert self.draws, f"Ray drew a {kind} we did not"
        d = self.draws.pop(0)
        assert d[0] == kind, f"Ray drew a {kind} where we drew {d}"
        return d

    def random(self):
        return self.take("random")[1]

    def choice(self, seq):
        _, n, i = self.take("index")
        assert n == len(seq), f"choice among {len(seq)}, ours among {n}"
        return seq[i]

    def sample(self, *_args, **_kwargs):
        return self.take("sample")[1]


class Trial:
    def __init__(self, number, config):
        self.number = number
        self.config = config
        self.finished = False
        self.experiment_tag = f"trial{number}"

    def is_finished(self):
        return self.finished

    def __repr__(self):
        return f"trial{self.number}"


clipped = [0]


def run(sc):
    mutations = {
        "lr": tune.loguniform(1e-30, 1e30),
        "width": tune.randint(-1_000_000_000, 1_000_000_001),
        "opt": ["a", "b", "c", "d"],
    }
    sched = ray_pbt.PopulationBasedTraining(
        time_attr="training_iteration",
        metric="v",
        mode=sc["mode"],
        perturbation_interval=sc["interval"],
        hyperparam_mutations=mutations,
        quantile_fraction=sc["quantile"],
        resample_probability=sc["resample_probability"],
        perturbation_factors=tuple(sc["perturb"]),
    )
    trials = [Trial(i, dict(c)) for i, c in enumerate(sc["initial"])]
    for t in trials:
        sched._trial_state[t] = ray_pbt._PBTTrialState(t)
    op = 1.0 if sc["mode"] == "max" else -1.0
    decisions = 0
    for ev in sc["events"]:
        if "finished" in ev:
            trials[ev["finished"]].finished = True
            continue
        replay = Replay(ev["draws"])
        random.random, random.choice = replay.random, replay.choice
        for d in mutations.values():
            if isinstance(d, Domain):
                d.sample = replay.sample
        t = trials[ev["member"]]
        state = sched._trial_state[t]
        got = decide(sched, trials, t, state, ev, op, mutations, sc)
        for k in ev.get("clipped", []):
            # We keep a perturbed number inside its bounds where Ray does not: not compared, and
            # the population goes on with ours so that later decisions still compare.
            ours = ev["decision"]["exploit"]["params"][k]
            got["exploit"]["params"][k] = t.config[k] = ours
            clipped[0] += 1
        assert got == ev["decision"], f"{ev}: Ray decided {got}"
        assert not replay.draws, f"{ev}: draws Ray did not make: {replay.draws}"
        decisions += got != "not_due"
    return decisions


def decide(sched, trials, t, state, ev, op, mutations, sc):
    # on_trial_result, asynchronous: the due check, _save_trial_state, the point moved.
    if ev["epoch"] - state.last_perturbation_time < sched._perturbation_interval:
        return "not_due"
    state.last_score = op * ev["value"]
    state.last_train_time = ev["epoch"]
    state.last_perturbation_time = ev["epoch"]
    lower, upper = sched._quantiles()
    # _checkpoint_or_exploit: the top saves (our pin), the rest hold none.
    state.last_checkpoint = f"{t}@{ev['epoch']}" if t in upper else None
    if t not in lower:
        return {"continue": t in upper}
    donor = random.choice(upper)
    dstate = sched._trial_state[donor]
    if not dstate.last_checkpoint:
        return {"no_checkpoint": donor.number}
    # _exploit: the donor's config explored, its perturbation point taken.
    new_config, _ = ray_pbt._explore(
        donor.config, mutations, sched._resample_probability, sched._perturbation_factors, None
    )
    t.config = new_config
    state.last_perturbation_time = dstate.last_perturbation_time
    return {"exploit": {"donor": donor.number, "epoch": dstate.last_perturbation_time,
                        "params": new_config}}


def main():
    scenarios = json.load(open(sys.argv[1]))
    total = 0
    for k, sc in enumerate(scenarios):
        try:
            total += run(sc)
        except AssertionError as e:
            sys.exit(f"scenario {k}: {e}")
    print(f"{len(scenarios)} populations, {total} decisions: every one equal to Ray Tune's "
          f"({clipped[0]} values clipped at their bounds left out)")


if __name__ == "__main__":
    main()
