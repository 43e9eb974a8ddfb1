"""PyTorch timings of the ops of `cargo xtask bench nn3d`, same shapes and names as
crates/nn3d/examples/bench_nn3d.rs, for a side-by-side row in bench/nn3d.json.

Run:
    pip install torch
    python tests/reference/bench_nn3d_torch.py [--device cpu|cuda] [--runs 5] [--warmup 1] [--only SUBSTRING]
(on the GPU machine: /opt/torch/.venv/bin/python ... --device cuda). Prints one JSON object.

Per op: median over --runs timed runs (after --warmup untimed ones) of the forward alone and of
forward + backward with an upstream gradient of ones (as candle's `y.backward()` seeds; here it is
allocated once, outside the clock), gradients
for the input and all parameters; f32; torch.backends.cudnn.benchmark on; the device is
synchronised before each clock reading. Ops: F.conv3d 16->16 3^3 pad 1, F.batch_norm in training
mode (momentum 0.1, eps 1e-5, running stats updated) on (2, 16, 112, 112, 80), F.conv3d 16->32 2^3
stride 2 on the same input, F.conv_transpose3d 32->16 2^3 stride 2 on (2, 32, 56, 56, 40).
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F


def shape_name(shape):
    return "x".join(str(d) for d in shape)


def cases(dev):
    full, half = (2, 16, 112, 112, 80), (2, 32, 56, 56, 40)

    def param(*shape, std=0.1):
        return (torch.randn(*shape, device=dev) * std).requires_grad_(True)

    out = []
    x = param(*full, std=1.0)
    w, b = param(16, 16, 3, 3, 3, std=(2 / (16 * 27)) ** 0.5), param(16)
    out.append((f"conv3d_f32_{shape_name(full)}_c16_k3_p1", "conv3d", full,
                lambda x=x, w=w, b=b: F.conv3d(x, w, b, padding=1)))
    x = param(*full, std=1.0)
    g = torch.ones(16, device=dev).requires_grad_(True)
    beta = torch.zeros(16, device=dev).requires_grad_(True)
    rm, rv = torch.zeros(16, device=dev), torch.ones(16, device=dev)
    out.append((f"batch_norm3d_train_f32_{shape_name(full)}", "batch_norm3d_train", full,
                lambda x=x, g=g, beta=beta: F.batch_norm(x, rm, rv, g, beta, training=True,
                                                         momentum=0.1, eps=1e-5)))
    x = param(*full, std=1.0)
    w, b = param(32, 16, 2, 2, 2), param(32)
    out.append((f"conv3d_f32_{shape_name(full)}_c32_k2_s2", "conv3d", full,
                lambda x=x, w=w, b=b: F.conv3d(x, w, b, stride=2)))
    x = param(*half, std=1.0)
    w, b = param(32, 16, 2, 2, 2), param(16)
    out.append((f"conv_transpose3d_f32_{shape_name(half)}_c16_k2_s2", "conv_transpose3d", half,
                lambda x=x, w=w, b=b: F.conv_transpose3d(x, w, b, stride=2)))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--only", default=None)
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    if dev.type == "cuda":
        desc = f"{args.device} ({torch.cuda.get_device_name(dev)})"
    else:
        desc = f"cpu ({torch.get_num_threads()} threads)"
    results = []
    for name, op, shape, forward in cases(dev):
        if args.only and args.only not in name:
            continue
        fwd, fwd_bwd = [], []
        grad = None
        for i in range(args.warmup + args.runs):
            sync()
            t0 = time.perf_counter()
            y = forward()
            sync()
            if i >= args.warmup:
                fwd.append(time.perf_counter() - t0)
            del y
        for i in range(args.warmup + args.runs):
            sync()
            t0 = time.perf_counter()
            y = forward()
            if grad is None or grad.shape != y.shape:
                grad = torch.ones_like(y)
            y.backward(grad)
            sync()
            if i >= args.warmup:
                fwd_bwd.append(time.perf_counter() - t0)
            del y
        results.append({
            "name": name, "op": op, "dtype": "f32", "shape": list(shape), "device": desc,
            "forward_s": statistics.median(fwd), "forward_backward_s": statistics.median(fwd_bwd),
            "forward_runs_s": fwd, "forward_backward_runs_s": fwd_bwd,
        })
    print(json.dumps({
        "benchmark": "nn3d", "implementation": f"torch {torch.__version__}",
        "device": desc, "cudnn_benchmark": True, "runs": args.runs, "warmup": args.warmup,
        "statistic": "median", "backward_seed": "ones", "forward_mode": "autograd on (as in training)",
        "results": results,
    }, indent=1))


if __name__ == "__main__":
    main()
