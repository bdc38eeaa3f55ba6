"""The study's CIFAR-10 network in plain PyTorch, as a command job of the sweep coordinator.

Written for this project as an example of sweeping a program that is not ours: it reports through
the Python package (clients/python, docs/python.md), three lines over a plain training loop:

  job = seed_sweeps.job(...)            the job's parameters, and where a resume starts
  job.load()                            model + optimiser as the last reported epoch left them
  job.report(epoch, state=..., **m)     saves the state, then the epoch's metrics; True: stop now
  exit code 3                           the loss became non-finite (diverged)

Without a worker around it runs on its own (reports printed). Its flags are `worker train`'s, so one
sweep can run both over the same grid.

Same network (residual stages, then self-attention blocks), data (the official CIFAR-10 binary
records), SGD with momentum and weight decay, warmup then step decay, crop + flip + Cutout. Not the
same: no colour jitter, one process (no DDP), PyTorch's own initialisation and data order.
"""
import argparse
import math
import os
import sys
import time

import numpy as np
import seed_sweeps
import torch
import torch.nn as nn
import torch.nn.functional as F

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)


def ints(s):
    return [int(x) for x in s.split(",") if x]


def arguments():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="data/cifar-10-batches-bin")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--warmup-factor", type=float, default=0.01)
    p.add_argument("--milestones", type=ints, default=[60, 120, 200, 260])
    p.add_argument("--gamma", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit-train", type=int)
    p.add_argument("--limit-test", type=int)
    p.add_argument("--model-widths", type=ints, default=[64, 128, 256, 512])
    p.add_argument("--model-depth", type=int, default=4)
    p.add_argument("--model-heads", type=int, default=4)
    p.add_argument("--threads", type=int)
    p.add_argument("--eval-batch-size", type=int, default=512)
    return p.parse_args()


# ---------- the network ----------

def conv_bn(c_in, c_out, k, stride=1):
    return [nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False), nn.BatchNorm2d(c_out)]


class Residual(nn.Module):
    """1x1, 3x3, 1x1 convolutions with BN, added to the input, then ReLU and BN."""

    def __init__(self, c):
        super().__init__()
        a, b, c3 = conv_bn(c, c, 1), conv_bn(c, c, 3), conv_bn(c, c, 1)
        self.conv = nn.Sequential(*a, nn.ReLU(), *b, nn.ReLU(), *c3)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x):
        return self.bn(F.relu(self.conv(x) + x))


class Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d, bias=False), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, c))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class Net(nn.Module):
    """Four stages (a strided conv + BN, then two residual blocks), attention over the 4x4 map,
    2x2 max pooling over (token, channel) pairs, a linear classifier."""

    def __init__(self, widths, depth, heads, classes=10):
        super().__init__()
        layers, c_in = [], 3
        for i, w in enumerate(widths):
            layers += [*conv_bn(c_in, w, 3, 1 if i == 0 else 2), Residual(w), Residual(w)]
            c_in = w
        self.conv = nn.Sequential(*layers)
        self.blocks = nn.Sequential(*[Attention(c_in, heads) for _ in range(depth)])
        self.fc = nn.Linear(8 * c_in // 2, classes)

    def forward(self, x):
        x = self.blocks(self.conv(x).flatten(2).transpose(1, 2))
        b, n, c = x.shape
        return self.fc(x.reshape(b, n // 2, 2, c // 2, 2).amax(dim=(2, 4)).flatten(1))


# ---------- data ----------

def read_split(data_dir, files, limit):
    raw = np.concatenate([np.fromfile(os.path.join(data_dir, f), dtype=np.uint8) for f in files])
    rec = raw.reshape(-1, 3073)[:limit]
    images = torch.from_numpy(rec[:, 1:].reshape(-1, 3, 32, 32).copy())
    return images, torch.from_numpy(rec[:, 0].astype(np.int64))


def normalise(x):
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x.float() / 255 - mean) / std


def augment(x, g):
    """Zero-padded random crop (offsets 0..8), horizontal flip p=0.5, then Cutout 16x16."""
    b = x.shape[0]
    padded = F.pad(normalise(x), (4, 4, 4, 4))
    dx, dy = torch.randint(0, 9, (b,), generator=g), torch.randint(0, 9, (b,), generator=g)
    rows = (dy.view(b, 1) + torch.arange(32)).view(b, 1, 32, 1).expand(b, 3, 32, 40)
    out = padded.gather(2, rows)
    cols = (dx.view(b, 1) + torch.arange(32)).view(b, 1, 1, 32).expand(b, 3, 32, 32)
    out = out.gather(3, cols)
    flip = torch.rand(b, generator=g) < 0.5
    out[flip] = out[flip].flip(3)
    cy, cx = torch.randint(0, 32, (b,), generator=g), torch.randint(0, 32, (b,), generator=g)
    ys, xs = torch.arange(32).view(1, 32, 1), torch.arange(32).view(1, 1, 32)
    hole = ((ys - cy.view(b, 1, 1)).abs() < 8) & ((xs - cx.view(b, 1, 1)).abs() < 8)
    return out.masked_fill(hole.unsqueeze(1), 0.0)


# ---------- the run ----------

def lr_at(a, epoch):
    if epoch <= a.warmup_epochs:
        return a.lr * (a.warmup_factor + (1 - a.warmup_factor) * (epoch - 1) / max(1, a.warmup_epochs))
    return a.lr * a.gamma ** sum(epoch > m for m in a.milestones)


def evaluate(net, images, labels, batch):
    net.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(labels), batch):
            out = net(normalise(images[i:i + batch]))
            loss += F.cross_entropy(out, labels[i:i + batch], reduction="sum").item()
            correct += (out.argmax(1) == labels[i:i + batch]).sum().item()
    return loss / len(labels), correct / len(labels)


def main():
    a = arguments()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    job = seed_sweeps.job(argv=[])  # the flags above are the parameters; the job saves and reports

    train_x, train_y = read_split(a.data_dir, [f"data_batch_{i}.bin" for i in range(1, 6) if os.path.exists(os.path.join(a.data_dir, f"data_batch_{i}.bin"))], a.limit_train)
    test_x, test_y = read_split(a.data_dir, ["test_batch.bin"], a.limit_test)
    net = Net(a.model_widths, a.model_depth, a.model_heads)
    opt = torch.optim.SGD(net.parameters(), lr=a.lr, momentum=a.momentum, weight_decay=a.weight_decay)
    saved = job.load()
    if saved is not None:
        net.load_state_dict(saved["net"])
        opt.load_state_dict(saved["opt"])
        print(f"resuming after epoch {job.start_epoch - 1}", flush=True)

    for epoch in range(job.start_epoch, a.epochs + 1):
        t0 = time.time()
        lr = lr_at(a, epoch)
        for group in opt.param_groups:
            group["lr"] = lr
        g = torch.Generator().manual_seed(a.seed * 100_003 + epoch)  # the same batches after a resume
        order = torch.randperm(len(train_y), generator=g)
        net.train()
        total, seen = 0.0, 0
        for i in range(0, len(order), a.batch_size):
            idx = order[i:i + a.batch_size]
            loss = F.cross_entropy(net(augment(train_x[idx], g)), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            seen += len(idx)
        train_loss = total / seen
        train_seconds = time.time() - t0
        test_loss, accuracy = (math.nan, 0.0) if not math.isfinite(train_loss) else evaluate(net, test_x, test_y, a.eval_batch_size)
        line = {"lr": lr, "train_loss": train_loss, "test_loss": test_loss, "accuracy": accuracy,
                "images_per_sec": seen / train_seconds, "seconds": time.time() - t0}
        if not math.isfinite(train_loss):
            job.report(epoch, **line)  # NaN is reported as it is: the worker ends the job diverged
            print(f"epoch {epoch}: the loss is not finite; stopping", flush=True)
            sys.exit(3)
        # The state is saved before the line is written: a resume starts after the last reported epoch.
        stop = job.report(epoch, state={"net": net.state_dict(), "opt": opt.state_dict()}, **line)
        print(f"epoch {epoch}: train loss {train_loss:.4f}, test loss {test_loss:.4f}, "
              f"accuracy {100 * accuracy:.2f}%, lr {lr:.2e}, {line['images_per_sec']:.0f} img/s", flush=True)
        if stop:
            print("asked to stop: leaving after a saved epoch", flush=True)
            return


if __name__ == "__main__":
    main()
