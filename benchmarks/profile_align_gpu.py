"""Profile one pose-refinement chunk at the paper's GPCR scale on CUDA (run by hand on a GPU):
top CUDA-time operators and the wall time split.
``python benchmarks/profile_align_gpu.py [batch]`` (profiled batch size, default 64)."""

from __future__ import annotations

import sys
import time

import torch

from benchmarks.bench_align import make_case
from gmmsession.algorithms.align import AlignConfig, refine_poses_chunk


def main() -> None:
    dev = torch.device("cuda")
    chunk, (pos, amp, sig) = make_case(240, 0.86, 7374, 256)
    images = chunk.images.to(dev)
    params = chunk.params.to(dev)
    pos, amp, sig = pos.to(dev), amp.to(dev), sig.to(dev)
    for batch in (64, 256):
        cfg = AlignConfig(max_resolution_angstrom=3.0, batch_size=batch)
        refine_poses_chunk(images, params, pos, amp, sig, 0.86, cfg)
        torch.cuda.synchronize()
        t = time.perf_counter()
        refine_poses_chunk(images, params, pos, amp, sig, 0.86, cfg)
        torch.cuda.synchronize()
        print(f"batch {batch}: {256 / (time.perf_counter() - t):.0f} particles/s", flush=True)
    profiled = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    cfg = AlignConfig(max_resolution_angstrom=3.0, batch_size=profiled)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
        refine_poses_chunk(images[:profiled], params.select(slice(0, profiled)), pos, amp, sig, 0.86, cfg)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=50))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=50))


if __name__ == "__main__":
    main()
