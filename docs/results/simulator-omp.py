"""Forwards of a tiny-model-shaped network on a few cores: what oversubscribed torch threads cost.

    taskset -c 0,1 python simulator-omp.py THREADS SECONDS TOKENS
    # four at once, as in docs/results/simulator.md:
    for i in 1 2 3 4; do taskset -c 0,1 python simulator-omp.py 2 8 256 & done; wait

Plain torch, random weights close to the tiny model's shape (hidden 64, 2 layers, 4 heads of 16,
MLP 128, vocab 1,024). Prints the number of forwards done in SECONDS and their median and p90.
"""

import sys
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(int(sys.argv[1]))
SECONDS, T, H = int(sys.argv[2]), int(sys.argv[3]), 64
LAYERS = [[torch.randn(H, 3 * H), torch.randn(H, H), torch.randn(H, 256), torch.randn(128, H)]
          for _ in range(2)]
EMB = torch.randn(1024, H)
IDS = torch.randint(0, 1024, (T,))


def forward() -> torch.Tensor:
    x = EMB[IDS]
    for qkv, out, up, down in LAYERS:
        q, k, v = (F.rms_norm(x, (H,)) @ qkv).view(T, 3, 4, 16).unbind(1)
        z = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1),
                                           v.transpose(0, 1), is_causal=True)
        x = x + z.transpose(0, 1).reshape(T, H) @ out
        g, w = (F.rms_norm(x, (H,)) @ up).chunk(2, -1)
        x = x + (F.silu(g) * w) @ down
    return (x[-1] @ EMB.T).argmax()


for _ in range(5):
    forward()
times = []
t0 = time.perf_counter()
while time.perf_counter() - t0 < SECONDS:
    s = time.perf_counter()
    forward()
    times.append(time.perf_counter() - s)
times.sort()
print(f"T {T} threads {sys.argv[1]} forwards {len(times)} median {1e3 * times[len(times) // 2]:.2f}"
      f" ms p90 {1e3 * times[int(0.9 * len(times))]:.2f} ms cpu {time.process_time():.1f}s")
