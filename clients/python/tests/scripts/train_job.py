"""A training script as a researcher writes one with seed_sweeps (no real model: a number that
learns). It prints where it started and what it computed, so tests can read its log."""
import math
import time

import seed_sweeps

job = seed_sweeps.job(defaults={"lr": 0.1, "epochs": 4, "sleep": 0.0, "nan_at": 0})
state = job.load() or {"w": 0.0, "seen": []}
print(f"start_epoch {job.start_epoch} attempt {job.attempt}", flush=True)
for epoch in range(job.start_epoch, int(job.params["epochs"]) + 1):
    time.sleep(float(job.params["sleep"]))
    state["w"] += float(job.params["lr"])
    state["seen"].append(epoch)
    loss = math.nan if epoch == int(job.params["nan_at"]) else 1.0 / epoch
    accuracy = min(1.0, round(0.1 * epoch + float(job.params["lr"]), 6))
    stop = job.report(epoch, accuracy=accuracy, train_loss=loss, val_bleu=2.0 * epoch, state=state)
    print(f"epoch {epoch} done, seen {state['seen']}", flush=True)
    if stop:
        print(f"stopping after epoch {epoch}", flush=True)
        break
