"""A small CUDA workload for scripts/gpu-check.sh: bf16 matmuls for a few seconds."""

import sys
import time

import torch

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
n = 8192
a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
torch.cuda.synchronize()
done, start = 0, time.time()
while time.time() - start < seconds:
    (a @ b).sum().item()
    done += 1
elapsed = time.time() - start
print(f"gpu_workload: {torch.cuda.get_device_name(0)}: {done} matmuls of {n}^2 in {elapsed:.1f} s, "
      f"{2 * n**3 * done / elapsed / 1e12:.0f} TFLOP/s", flush=True)
