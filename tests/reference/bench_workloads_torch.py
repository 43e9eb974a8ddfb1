"""PyTorch side of two workloads of `cargo xtask bench step` (CPU), beside
crates/train/examples/bench_workload.rs. Prints one JSON line with the process's peak RSS.

  --workload step   the hippocampus default step: 2 labeled + 1 unlabeled crop of 32x48x32, 3 classes,
                    both students (V-Net, ResNet-34 V-Net) on all crops, both EMA teachers (train mode,
                    no autograd) on the unlabeled crop, pseudo-labels from the teachers' mean softmax,
                    the losses of ../shared/reference/bench_torch.py's step (supervised CE + Dice,
                    entropy-filtered pseudo-label CE + Dice, L1 consistency, prototype contrastive on
                    4096 sampled voxels), backward, SGD (momentum 0.9, weight decay 1e-4), EMA update
                    (0.99) of both teachers.
  --workload infer  sliding-window inference of one random volume (default 144x144x96) with V-Net in
                    eval mode, windows 112x112x80, stride 18x18x4 (configs/la.json), no autograd.

--device cuda runs the same on the GPU (synchronised before every clock reading) under --mode default
(TF32 convolutions, PyTorch's default), benchmark (cudnn.benchmark) or bf16 (autocast of the forward
passes and losses); the JSON then also has PyTorch's own peak of reserved device memory.

The nets are ../shared/reference/vnet_ref.py's; they always carry Dropout3d (duoseg's hippocampus config
turns it off), a few milliseconds at these sizes. Timing only: the losses are not a reference for values.
"""
import argparse
import json
import math
import os
import resource
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# the PyTorch anchor's folder: ../shared/reference here, the carried copy on the GPU machine
sys.path.insert(0, os.environ.get("DUOSEG_TORCH_REFERENCE") or os.path.join(ROOT, "..", "shared", "reference"))
from bench_torch import dice_loss, sliding_window  # noqa: E402
from vnet_ref import ResNet34VNet, VNet  # noqa: E402


def make_nets(n_classes):
    a = VNet(n_classes=n_classes)
    a.forward_features = True
    return a, ResNet34VNet(n_classes=n_classes)


def autocast(args):
    if args.mode == "bf16":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast(args.device, enabled=False)


def sync(args):
    if args.device == "cuda":
        torch.cuda.synchronize()


def step(students, teachers, opt, xl, yl, xu, t, tmax, k, momentum=0.99, T=0.8, args=None):
    with autocast(args):
        loss = step_loss(students, teachers, xl, yl, xu, t, tmax, k, T)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
        for teacher_net, student in zip(teachers, students):
            for pt, ps in zip(teacher_net.parameters(), student.parameters()):
                pt.mul_(momentum).add_(ps, alpha=1 - momentum)
    return loss


def step_loss(students, teachers, xl, yl, xu, t, tmax, k, T):
    a, b = students
    x = torch.cat([xl, xu])
    la, fa = a(x)
    lb, fb = b(x)
    nl = xl.shape[0]
    with torch.no_grad():
        teacher = 0.5 * (teachers[0](xu)[0].softmax(1) + teachers[1](xu)[0].softmax(1))
    pa, pb = la.softmax(1), lb.softmax(1)
    oh = F.one_hot(yl, k).permute(0, 4, 1, 2, 3).float()
    ls_a = F.cross_entropy(la[:nl], yl) + dice_loss(pa[:nl], oh)
    ls_b = F.cross_entropy(lb[:nl], yl) + dice_loss(pb[:nl], oh)
    pl = teacher.argmax(1)
    ent = -(teacher * torch.log(teacher + 1e-8)).sum(1)
    reliable = ent < torch.quantile(ent.flatten().float()[:1_000_000], 0.8)
    ohu = F.one_hot(pl, k).permute(0, 4, 1, 2, 3).float()
    lu = 0
    for lg, p in ((la, pa), (lb, pb)):
        ce = F.cross_entropy(lg[nl:], pl, reduction="none")
        r = reliable.unsqueeze(1)
        lu = lu + (ce * reliable).sum() / reliable.sum().clamp(min=1) + dice_loss(p[nl:] * r, ohu * r)
    ca, cb = pa[nl:].max(1), pb[nl:].max(1)
    mdiff = ((ca.values > T) & (cb.values > T) & (ca.indices != cb.indices)).unsqueeze(1).float()
    lreg = (mdiff * (pa[nl:] - pb[nl:])).abs().sum() / mdiff.sum().clamp(min=1)
    lc = 0
    for f in (fa, fb):
        fu = F.normalize(f[nl:], dim=1).permute(0, 2, 3, 4, 1).reshape(-1, f.shape[1])
        r, lab = reliable.flatten(), pl.flatten()
        protos = torch.stack([fu[r & (lab == c)].mean(0) for c in range(k)]).nan_to_num()
        unrel = (~r).nonzero().squeeze(1)
        idx = unrel[torch.randint(len(unrel), (min(len(unrel), 4096),))]
        d = torch.cdist(fu[idx], protos)
        lc = lc + F.cross_entropy(-d / 0.1, lab[idx]) + torch.exp(-torch.cdist(protos, protos)[0, 1])
    lam_c = 0.1 * math.exp(-5 * (1 - t / tmax) ** 2)
    return ls_a + ls_b + (lu + lreg) + lam_c * lc


def step_workload(args):
    torch.manual_seed(0)
    k = 3
    dev = args.device
    students = [n.train().to(dev) for n in make_nets(k)]
    teachers = [n.train().to(dev) for n in make_nets(k)]
    for t, s in zip(teachers, students):
        t.load_state_dict(s.state_dict())
        for p in t.parameters():
            p.requires_grad_(False)
    params = list(students[0].parameters()) + list(students[1].parameters())
    opt = torch.optim.SGD(params, lr=0.03, momentum=0.9, weight_decay=1e-4)
    d, h, w = args.crop
    xl = torch.randn(2, 1, d, h, w, device=dev)
    yl = torch.randint(0, k, (2, d, h, w), device=dev)
    xu = torch.randn(1, 1, d, h, w, device=dev)
    times = []
    for i in range(args.warmup + args.iters):
        sync(args)
        t0 = time.perf_counter()
        step(students, teachers, opt, xl, yl, xu, i, 600, k, args=args)
        sync(args)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    return {"workload": "step", "patch": args.crop, "batch": "2+1", "ema_teacher": 0.99,
            "iters": args.iters, "step_s_median": times[len(times) // 2], "step_s_min": times[0]}


def infer_workload(args):
    torch.manual_seed(0)
    a = VNet(n_classes=2).eval().to(args.device)
    vol = torch.randn(1, 1, *args.volume, device=args.device)
    with torch.no_grad(), autocast(args):
        sliding_window(a, vol, args.roi, args.stride)
        sync(args)
        t0 = time.perf_counter()
        _, n = sliding_window(a, vol, args.roi, args.stride)
        sync(args)
        infer_s = time.perf_counter() - t0
    return {"workload": "infer", "volume": args.volume, "roi": args.roi, "stride": args.stride,
            "windows": n, "infer_s": infer_s}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", choices=["step", "infer"], required=True)
    ap.add_argument("--crop", type=int, nargs=3, default=[32, 48, 32])
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--volume", type=int, nargs=3, default=[144, 144, 96])
    ap.add_argument("--roi", type=int, nargs=3, default=[112, 112, 80])
    ap.add_argument("--stride", type=int, nargs=3, default=[18, 18, 4])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--mode", choices=["default", "benchmark", "bf16"], default="default")
    args = ap.parse_args()
    if args.device == "cpu" and args.mode != "default":
        ap.error("--mode benchmark and bf16 are GPU modes")
    torch.backends.cudnn.benchmark = args.mode == "benchmark"
    out = step_workload(args) if args.workload == "step" else infer_workload(args)
    out.update({"impl": "pytorch", "torch": torch.__version__, "device": args.device,
                "mode": args.mode, "threads": torch.get_num_threads(),
                "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20})
    if args.device == "cuda":
        out.update({"gpu": torch.cuda.get_device_name(0),
                    "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30})
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
