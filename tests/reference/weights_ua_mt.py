"""A PyTorch V-Net state_dict with the UA-MT code's parameter names, and its eval-mode output, for
duoseg's `import` / `export` test.

Run: pip install torch safetensors
     python tests/reference/weights_ua_mt.py
writes tests/fixtures/weights/vnet_ua_mt.safetensors (the state_dict: `block_one.conv.0.weight`, ...,
batch-norm running statistics after three training-mode passes, `num_batches_tracked` int64) and
tests/fixtures/weights/vnet_ua_mt_io.safetensors (`x` [1, 1, 16, 16, 16] and the eval-mode `logits`).
The network is ../shared/reference/vnet_ref.py's VNet at width 2, renamed module by module to
yulequan/UA-MT code/networks/vnet.py's names (the same layers in the same order). Seeded.
"""
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / ".." / "shared" / "reference"))
from vnet_ref import VNet  # noqa: E402

MODULES = {"b1": "block_one", "d1": "block_one_dw", "b2": "block_two", "d2": "block_two_dw",
           "b3": "block_three", "d3": "block_three_dw", "b4": "block_four", "d4": "block_four_dw",
           "b5": "block_five", "u5": "block_five_up", "b6": "block_six", "u6": "block_six_up",
           "b7": "block_seven", "u7": "block_seven_up", "b8": "block_eight", "u8": "block_eight_up",
           "b9": "block_nine", "out": "out_conv"}


def ua_mt_name(name):
    module, rest = name.split(".", 1)
    return f"out_conv.{rest}" if module == "out" else f"{MODULES[module]}.conv.{rest}"


torch.manual_seed(0)
net = VNet(n_channels=1, n_classes=2, n=2)
net.train()
with torch.no_grad():
    for _ in range(3):
        net(torch.randn(2, 1, 16, 16, 16) * 2 + 0.5)
net.eval()
x = torch.randn(1, 1, 16, 16, 16)
with torch.no_grad():
    logits = net(x)
state = {ua_mt_name(k): v.contiguous() for k, v in net.state_dict().items()}
out = ROOT / "tests" / "fixtures" / "weights"
out.mkdir(parents=True, exist_ok=True)
save_file(state, str(out / "vnet_ua_mt.safetensors"))
save_file({"x": x.contiguous(), "logits": logits.contiguous()}, str(out / "vnet_ua_mt_io.safetensors"))
print(f"wrote {len(state)} tensors to {out}")
