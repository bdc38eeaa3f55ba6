"""PyTorch's side of `scripts/bench-ddp.sh`: torch.distributed all-reduce on the same sizes.

Run under torchrun (gloo on CPU, nccl on CUDA); prints the same table as `worker bench-ddp`.
"""
import os
import sys
import time

import torch
import torch.distributed as dist


def main() -> None:
    sizes = [int(s) for s in (sys.argv[1] if len(sys.argv) > 1 else "1,4,16,64").split(",")]
    cuda = os.environ.get("DEVICE", "cpu") == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if rank == 0:
        print(f"# PyTorch {torch.__version__} torch.distributed, world {world}, {torch.get_num_threads()} thread(s) per rank")
        print("| MiB | ms per all-reduce | algbw GB/s | busbw GB/s |")
        print("| ---: | ---: | ---: | ---: |")
    for mb in sizes:
        t = torch.ones(mb * 1024 * 1024 // 4, device=device)
        iters = min(max(64 // max(mb, 1), 5), 50)
        for _ in range(3):
            dist.all_reduce(t)
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(iters):
            dist.all_reduce(t)
        if cuda:
            torch.cuda.synchronize()
        secs = (time.perf_counter() - t0) / iters
        alg = mb * 1024 * 1024 / secs / 1e9
        bus = alg * 2 * (world - 1) / world
        if rank == 0:
            print(f"| {mb} | {secs * 1e3:.2f} | {alg:.2f} | {bus:.2f} |")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
