"""PyTorch reference values for duoseg-nn3d's conv3d / conv_transpose3d (forward and gradients).

Run: pip install torch numpy safetensors
     python tests/reference/nn3d_conv.py   # writes tests/fixtures/nn3d/conv.safetensors

For every case `<name>` the file holds `<name>.x`, `<name>.w`, `<name>.b` (inputs, f32),
`<name>.g` (a random upstream gradient), `<name>.y` (the op's output) and `<name>.dx`, `<name>.dw`,
`<name>.db` (gradients of sum(y * g)), plus `<name>.params` (i64: transpose flag, stride[3],
padding[3], dilation[3], output_padding[3]). Seeded, so reruns give the same file.
"""
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

torch.manual_seed(0)

# name: (transpose, x shape, w shape, stride, padding, dilation, output_padding)
CASES = {
    "conv_k3_s1_p1": (0, (2, 3, 6, 7, 5), (4, 3, 3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), (0, 0, 0)),
    "conv_k3_s2_p1": (0, (1, 2, 9, 8, 7), (3, 2, 3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), (0, 0, 0)),
    "conv_k3_d2_p2": (0, (2, 2, 7, 8, 9), (3, 2, 3, 3, 3), (1, 1, 1), (2, 2, 2), (2, 2, 2), (0, 0, 0)),
    "conv_k7_s1_p3": (0, (1, 2, 8, 7, 9), (2, 2, 7, 7, 7), (1, 1, 1), (3, 3, 3), (1, 1, 1), (0, 0, 0)),
    "conv_k7_s2_p3": (0, (1, 1, 11, 10, 9), (2, 1, 7, 7, 7), (2, 2, 2), (3, 3, 3), (1, 1, 1), (0, 0, 0)),
    "conv_k2_s2": (0, (2, 3, 6, 8, 4), (5, 3, 2, 2, 2), (2, 2, 2), (0, 0, 0), (1, 1, 1), (0, 0, 0)),
    "conv_k1_s2": (0, (2, 3, 5, 6, 7), (4, 3, 1, 1, 1), (2, 2, 2), (0, 0, 0), (1, 1, 1), (0, 0, 0)),
    "conv_mixed": (0, (1, 3, 6, 7, 8), (2, 3, 3, 1, 2), (1, 2, 1), (0, 1, 2), (2, 1, 1), (0, 0, 0)),
    "convT_k2_s2": (1, (2, 5, 3, 4, 2), (5, 3, 2, 2, 2), (2, 2, 2), (0, 0, 0), (1, 1, 1), (0, 0, 0)),
    "convT_k3_s2_p1_op1": (1, (1, 3, 4, 3, 5), (3, 2, 3, 3, 3), (2, 2, 2), (1, 1, 1), (1, 1, 1), (1, 1, 1)),
    "convT_k3_s1_p1": (1, (2, 2, 5, 6, 4), (2, 3, 3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), (0, 0, 0)),
    "convT_k3_s2_d2_op": (1, (1, 2, 4, 5, 3), (2, 2, 3, 3, 3), (2, 2, 2), (1, 0, 2), (2, 2, 2), (1, 0, 1)),
    "convT_k2_s2_op1": (1, (1, 2, 3, 3, 2), (2, 3, 2, 2, 2), (2, 2, 2), (0, 0, 0), (1, 1, 1), (0, 1, 1)),
}

tensors = {}
for name, (transpose, xs, ws, stride, padding, dilation, output_padding) in CASES.items():
    x = torch.randn(xs, dtype=torch.float64, requires_grad=True)
    w = (0.3 * torch.randn(ws, dtype=torch.float64)).requires_grad_()
    c_out = ws[1] if transpose else ws[0]
    b = torch.randn(c_out, dtype=torch.float64, requires_grad=True)
    if transpose:
        y = F.conv_transpose3d(x, w, b, stride, padding, output_padding, 1, dilation)
    else:
        y = F.conv3d(x, w, b, stride, padding, dilation)
    g = torch.randn(y.shape, dtype=torch.float64)
    (y * g).sum().backward()
    # computed in f64, stored in f32
    for key, t in {"x": x, "w": w, "b": b, "g": g, "y": y, "dx": x.grad, "dw": w.grad, "db": b.grad}.items():
        tensors[f"{name}.{key}"] = t.detach().to(torch.float32).contiguous()
    tensors[f"{name}.params"] = torch.tensor(
        [transpose, *stride, *padding, *dilation, *output_padding], dtype=torch.int64
    )

out = Path(__file__).resolve().parents[1] / "fixtures" / "nn3d" / "conv.safetensors"
out.parent.mkdir(parents=True, exist_ok=True)
tmp = out.with_suffix(".tmp")
save_file(tensors, str(tmp))
tmp.replace(out)
print(f"wrote {out} ({out.stat().st_size} bytes, {len(CASES)} cases)")
