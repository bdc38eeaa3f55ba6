"""ATen ops per training step of PyTorch's eager step of the study's network, counted the way
`worker bench --ops` counts ours: aten:: ops with no aten:: op above them in torch.profiler's tree
(top-level), and blocking host-device syncs (aten::_local_scalar_dense, aten::nonzero) at any depth.
The step is PyTorch's GPU default: SGD with foreach=True, zero_grad(set_to_none=True).

  python scripts/torch_ops.py --reference ../shared/reference --batch-sizes 1,8,32,128 --json out.json
"""
import argparse, json, os, sys

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

SYNCS = {"aten::_local_scalar_dense", "aten::nonzero"}


def count(step):
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    top = syncs = 0
    names = {}
    for e in prof.events():
        if not e.name.startswith("aten::"):
            continue
        syncs += e.name in SYNCS
        p = e.cpu_parent
        while p is not None and not p.name.startswith("aten::"):
            p = p.cpu_parent
        if p is None:
            top += 1
            names[e.name] = names.get(e.name, 0) + 1
    return top, syncs, names


def main():
    a = argparse.ArgumentParser()
    a.add_argument("--reference", default="../shared/reference", help="folder of seednet.py")
    a.add_argument("--batch-sizes", default="1,8,32,128")
    a.add_argument("--threads", type=int, default=2)
    a.add_argument("--foreach", type=int, default=1, help="1: foreach SGD (the GPU default), 0: per tensor")
    a.add_argument("--json")
    a.add_argument("--names", action="store_true", help="also the top-level ops by name")
    a = a.parse_args()
    sys.path.insert(0, os.path.abspath(a.reference))
    from seednet import SeedNet

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = SeedNet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9, weight_decay=1e-4,
                          foreach=bool(a.foreach))
    rows = []
    for bs in [int(b) for b in a.batch_sizes.split(",")]:
        x, y = torch.randn(bs, 3, 32, 32), torch.randint(0, 10, (bs,))

        def step():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

        for _ in range(2):  # momentum buffers exist from here on, as in a long run
            step()
        top, syncs, names = count(step)
        row = {"batch": bs, "ops": top, "syncs": syncs}
        if a.names:
            row["names"] = names
        rows.append(row)
    text = json.dumps(rows)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
