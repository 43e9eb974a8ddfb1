"""PyTorch reference values for duoseg-nn3d's batch norm (crates/nn3d/tests/it/batch_norm.rs).

Run (from the repository root):
    pip install torch numpy safetensors
    python tests/reference/nn3d_norm.py
Writes tests/fixtures/nn3d/batch_norm_functional.safetensors and batch_norm_module.safetensors.

batch_norm_functional: for a few [N, C, D, H, W] shapes (prefix "case{i}."), inputs x, weight,
bias, running_mean_in, running_var_in, an upstream gradient dy, and for training=True and False:
y_<mode>, dx_<mode>, dweight_<mode>, dbias_<mode>, running_mean_<mode>, running_var_<mode> (the
running statistics after the call; unchanged in eval) of torch.nn.functional.batch_norm
(momentum 0.1, eps 1e-5), all float32. A large case has mean 50 and std 0.5 to test accuracy.

batch_norm_module: an nn.BatchNorm3d(4) state dict after two training forwards (keys "state.*",
num_batches_tracked as an int64 scalar, exactly as torch saves it), then a third input x3 with its
train-mode output y3_train and the state after it ("after.*"), and its eval-mode output y3_eval
under the state after the two forwards.
"""
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

torch.manual_seed(20261125)
out_dir = Path(__file__).resolve().parents[1] / "fixtures" / "nn3d"
out_dir.mkdir(parents=True, exist_ok=True)

EPS, MOMENTUM = 1e-5, 0.1
cases = [
    ((2, 3, 4, 5, 3), 0.0, 1.0),
    ((1, 2, 3, 1, 2), 1.0, 2.0),
    ((3, 1, 2, 3, 4), -0.5, 0.3),
    ((2, 4, 9, 8, 7), 50.0, 0.5),
]
tensors = {}
for i, (shape, loc, scale) in enumerate(cases):
    c = shape[1]
    x = torch.randn(shape) * scale + loc
    weight = torch.rand(c) + 0.5
    bias = torch.randn(c)
    rm = torch.randn(c) * scale + loc
    rv = (torch.rand(c) + 0.5) * scale**2
    dy = torch.randn(shape)
    p = f"case{i}."
    tensors.update({p + "x": x, p + "weight": weight, p + "bias": bias,
                    p + "running_mean_in": rm, p + "running_var_in": rv, p + "dy": dy})
    for mode, training in (("train", True), ("eval", False)):
        xv = x.clone().requires_grad_(True)
        wv = weight.clone().requires_grad_(True)
        bv = bias.clone().requires_grad_(True)
        rmv, rvv = rm.clone(), rv.clone()
        y = F.batch_norm(xv, rmv, rvv, wv, bv, training=training, momentum=MOMENTUM, eps=EPS)
        y.backward(dy)
        tensors.update({p + f"y_{mode}": y.detach(), p + f"dx_{mode}": xv.grad,
                        p + f"dweight_{mode}": wv.grad, p + f"dbias_{mode}": bv.grad,
                        p + f"running_mean_{mode}": rmv, p + f"running_var_{mode}": rvv})
save_file({k: v.contiguous() for k, v in tensors.items()},
          str(out_dir / "batch_norm_functional.safetensors"))

bn = torch.nn.BatchNorm3d(4)
with torch.no_grad():
    bn.weight.copy_(torch.rand(4) + 0.5)
    bn.bias.copy_(torch.randn(4))
bn.train()
for _ in range(2):
    bn(torch.randn(2, 4, 3, 4, 5) * 2.0 + 1.0)
module = {f"state.{k}": v.detach().clone() for k, v in bn.state_dict().items()}
x3 = torch.randn(2, 4, 3, 4, 5) * 2.0 + 1.0
bn.eval()
with torch.no_grad():
    module["y3_eval"] = bn(x3)
bn.train()
with torch.no_grad():
    module["y3_train"] = bn(x3)
module.update({f"after.{k}": v.detach().clone() for k, v in bn.state_dict().items()})
module["x3"] = x3
assert module["state.num_batches_tracked"].dtype == torch.int64
save_file({k: v.contiguous() for k, v in module.items()},
          str(out_dir / "batch_norm_module.safetensors"))
print("wrote", out_dir)
