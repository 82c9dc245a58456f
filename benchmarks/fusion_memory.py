"""Time and peak memory of STCA-FF (forward + backward) against a naive softmax(QK^T)V, side by side.

    python benchmarks/fusion_memory.py [--channels 256] [--batch 2] [--sizes 32 64 100] [--repeats 3]

Three implementations of the same fusion (same 1x1 projections C -> C/2, C/2, C; one head):
  fused      acamkd_hf's StudentTeacherCrossAttention (scaled_dot_product_attention, Q/K zero-padded to C so the
             fused kernel applies),
  sdpa_raw   scaled_dot_product_attention called with head sizes C/2 (Q, K) and C (V): PyTorch silently falls
             back to its O(N^2) math kernel, which is why the padding exists,
  naive      softmax(Q K^T / sqrt(C/2)) V written out.
Each measurement runs in a fresh subprocess: on CPU there is no allocator peak counter, so the peak is the rise of
the process's maximum resident set size over one forward+backward, above what the inputs already took (after a
warm-up step on a 4x4 map, so that loading the kernels' code is not counted). Times are the median of --repeats
runs after one warm-up (``timing.wall_ms``: wall clock, the device synchronised at both ends). On a CUDA machine, add
--device cuda (peak from torch.cuda.max_memory_allocated, ``timing.cuda_peak_bytes``). The last line is
machine-readable.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
from pathlib import Path

if str(Path(__file__).resolve().parent) not in sys.path:  # the sibling modules, also when loaded by path (tests)
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import timing  # noqa: E402

IMPLEMENTATIONS = ("fused", "sdpa_raw", "naive")


def _measure(impl: str, side: int, channels: int, batch: int, repeats: int, device: str) -> dict:
    """Runs in the child process: returns {"peak_mib", "ms"} for one implementation and map size."""
    import torch
    import torch.nn.functional as F

    from acamkd_hf.fusion import StudentTeacherCrossAttention

    torch.manual_seed(0)
    # Literal gradient (student not detached) in every variant: like for like, and the costlier case for the
    # fused path, which then also carries the student's gradient through the attention.
    fusion = StudentTeacherCrossAttention(channels, detach_student=False).to(device)

    def tokens(x):  # (B, C, H, W) -> (B, 1, HW, C)
        return x.flatten(2).transpose(1, 2).unsqueeze(1)

    def step(teacher, student):
        if impl == "fused":
            out = fusion(teacher, student)
        else:
            q = tokens(fusion.query(teacher))
            k = tokens(fusion.key(student))
            v = tokens(fusion.value(student))
            if impl == "sdpa_raw":
                out = F.scaled_dot_product_attention(q, k, v)
            else:
                out = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1) @ v
        out.float().pow(2).mean().backward()

    # A warm-up step on a tiny map first: the first call of each kernel maps code pages and thread-pool buffers,
    # a constant that is not the memory of the attention. Then the inputs are made, and the rise of the peak over
    # one forward+backward at full size is the number reported.
    step(torch.randn(batch, channels, 4, 4, device=device), torch.randn(batch, channels, 4, 4, device=device))
    teacher = torch.randn(batch, channels, side, side, device=device)
    student = torch.randn(batch, channels, side, side, device=device, requires_grad=True)
    if device == "cuda":
        peak_mib = timing.cuda_peak_bytes(lambda: step(teacher, student)) / timing.MIB
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        step(teacher, student)
        peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    times = []
    for _ in range(repeats):
        student.grad = None
        fusion.zero_grad(set_to_none=True)
        times.append(timing.wall_ms(lambda: step(teacher, student), device))
    return {"peak_mib": peak_mib, "ms": timing.median(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 100], help="map side: side x side tokens")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--_child", nargs=2, metavar=("IMPL", "SIDE"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args._child:
        impl, side = args._child[0], int(args._child[1])
        print(json.dumps(_measure(impl, side, args.channels, args.batch, args.repeats, args.device)))
        return

    print(f"STCA-FF forward+backward, C={args.channels}, batch {args.batch}, device {args.device}")
    header = f"{'tokens':>8} | " + " | ".join(f"{name + ' MiB':>13} {name + ' ms':>12}" for name in IMPLEMENTATIONS)
    header += f" | {'naive/fused mem':>15}"
    print(header)
    print("-" * len(header))
    results = {}
    for side in args.sizes:
        row = {}
        for impl in IMPLEMENTATIONS:
            cmd = [sys.executable, __file__, "--channels", str(args.channels), "--batch", str(args.batch),
                   "--repeats", str(args.repeats), "--device", args.device, "--_child", impl, str(side)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise SystemExit(f"{impl} at {side}x{side} failed:\n{done.stderr}")
            row[impl] = json.loads(done.stdout.strip().splitlines()[-1])
        results[side] = row
        cells = " | ".join(f"{row[i]['peak_mib']:>13.1f} {row[i]['ms']:>12.1f}" for i in IMPLEMENTATIONS)
        ratio = row["naive"]["peak_mib"] / max(row["fused"]["peak_mib"], 1e-9)
        print(f"{side * side:>8} | {cells} | {ratio:>14.1f}x", flush=True)

    last = results[args.sizes[-1]]
    side = args.sizes[-1]
    result = {"tokens": side * side, "fused_peak_mib": last["fused"]["peak_mib"],
              "naive_peak_mib": last["naive"]["peak_mib"], "fused_ms": last["fused"]["ms"],
              "naive_ms": last["naive"]["ms"]}
    timing.print_result(result, lambda key: None if key == "tokens" else 1)


if __name__ == "__main__":
    main()
