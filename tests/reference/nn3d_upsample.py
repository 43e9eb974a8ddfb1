"""PyTorch reference values for duoseg-nn3d's upsample_trilinear (MC-Net's second decoder).

Run: pip install torch numpy safetensors
     python tests/reference/nn3d_upsample.py   # writes tests/fixtures/nn3d/upsample.safetensors

For every case `<name>` the file holds `<name>.x` (input, f32), `<name>.g` (a random upstream
gradient), `<name>.y` (F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=True),
computed in f64) and `<name>.dx` (the gradient of sum(y * g)). Seeded, so reruns give the same file.
"""
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

torch.manual_seed(0)
CASES = {"odd": (2, 3, 3, 4, 5), "flat": (1, 2, 1, 2, 3), "cube": (1, 1, 4, 4, 4)}
tensors = {}
for name, shape in CASES.items():
    x = torch.randn(shape, dtype=torch.float64).float().double().requires_grad_()
    y = F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=True)
    g = torch.randn(y.shape, dtype=torch.float64).float().double()
    (y * g).sum().backward()
    for key, t in (("x", x), ("g", g), ("y", y), ("dx", x.grad)):
        tensors[f"{name}.{key}"] = t.detach().float().contiguous()
out = Path(__file__).resolve().parents[1] / "fixtures" / "nn3d" / "upsample.safetensors"
save_file(tensors, str(out))
print(f"wrote {out}")
