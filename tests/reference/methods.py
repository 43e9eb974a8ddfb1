"""PyTorch reference for the comparison methods (issue 23): writes the fixtures their Rust losses are tested against.

Run from the repository root (CPU is enough):
    pip install torch numpy safetensors scipy scikit-image
    python tests/reference/methods.py
Writes tests/fixtures/methods/{mean_teacher,ua_mt,sassnet,dtc,mc_net,mcf}.{safetensors,json} (< 1 MB in all).

Each loss term is computed from network OUTPUTS (logits, tanh SDF heads, discriminator logits) and labels, term by
term as the method's public LA 3D training script computes it (docs/methods.md cites file and lines), so the Rust side
feeds the same tensors to its loss functions without running a network. The one network built here is SASSNet's
discriminator (width ndf=2 instead of 64, a 32x16x16 input, global average pooling standing in for AvgPool3d((7,7,5)),
which is the global mean at the LA patch 112x112x80), eval mode (dropout off).

Conventions (every <method>.json repeats them and describes every tensor):
  - layout NCDHW; batch = 2 labeled items first, then 2 unlabeled; 2 classes; 8x8x8 voxels;
  - `in.*` inputs (float32, exactly representable; labels int64), `out.*` results, `grad.*` gradients of the named
    total loss with respect to an input (the public code's detach / no_grad choices are reproduced, so the gradients pin
    down which tensors are constants);
  - everything is computed in float64 from the float32 inputs; outputs of at most 64 values (scalars as 0-d
    tensors, schedules, discriminator logits) are stored as float64, larger maps and gradients as float32;
  - `in.iterations` holds 0-based loop indices t (t completed optimiser steps before this one); schedules are given at
    each of them; the loss total uses the iteration `t_eval` from the json.
"""
import json
import math
import os
import re

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file
from scipy.ndimage import distance_transform_edt
from skimage import segmentation as skimage_seg

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "methods")
BL, BU, NC, S = 2, 2, 2, 8          # labeled, unlabeled, classes, voxels per side
ITERS = [0, 1, 149, 150, 1000, 2499, 2500, 2501, 3000, 5999, 6000, 14999]
T_EVAL = 3000
LAYOUT = ("NCDHW (PyTorch order: batch, channel, then the three spatial axes of the crop, which the LA code calls "
          "(w, h, d) = (112, 112, 80)); batch index 0-1 labeled, 2-3 unlabeled")


# ------------------------------------------------------------------------------------------ shared pieces
def gen(seed):
    g = torch.Generator().manual_seed(seed)
    return g


def f32(x):
    """Round to float32 and back: stored inputs are exact, references are float64."""
    return x.float().double()


def randn(g, *shape, scale=1.0):
    return f32(torch.randn(*shape, generator=g, dtype=torch.float64) * scale)


def blobs(g, n):
    """n binary ellipsoids in an S^3 grid (int64), never empty, never full."""
    idx = torch.stack(torch.meshgrid(*[torch.arange(S, dtype=torch.float64)] * 3, indexing="ij"))
    out = []
    for _ in range(n):
        c = 2.5 + 3.0 * torch.rand(3, generator=g, dtype=torch.float64)
        r = 1.6 + 2.0 * torch.rand(3, generator=g, dtype=torch.float64)
        q = (((idx - c.view(3, 1, 1, 1)) / r.view(3, 1, 1, 1)) ** 2).sum(0)
        out.append((q <= 1.0).long())
    y = torch.stack(out)
    assert all(0 < int(v.sum()) < S ** 3 for v in y)
    return y


def logits_for(g, y_full, n_extra, scale=1.5, signal=1.0):
    """Random 2-class logits; labeled items get +signal on their true class (so the losses are not trivial)."""
    b = y_full.shape[0] + n_extra
    z = torch.randn(b, NC, S, S, S, generator=g, dtype=torch.float64) * scale
    z[: y_full.shape[0]] += signal * F.one_hot(y_full, NC).permute(0, 4, 1, 2, 3).double()
    return f32(z)


def sigmoid_rampup(current, rampup_length):
    """exp(-5 (1 - clip(current, 0, L) / L)^2); 1 when L == 0 (Laine & Aila, as in every repo's utils/ramps.py)."""
    if rampup_length == 0:
        return 1.0
    c = float(np.clip(current, 0.0, rampup_length))
    phase = 1.0 - c / rampup_length
    return float(np.exp(-5.0 * phase * phase))


def dice_sq(score, target, smooth=1e-5):
    """UA-MT / SASSNet / DTC / MCF utils/losses.py dice_loss: squared sums in the denominator, whole batch pooled."""
    target = target.double()
    inter = torch.sum(score * target)
    return 1 - (2 * inter + smooth) / (torch.sum(score * score) + torch.sum(target * target) + smooth)


def dice_2class(probs, labels):
    """SSL4MIS utils/losses.py DiceLoss(n_classes).forward(softmax probs, labels[:, None]): mean over ALL classes."""
    onehot = torch.stack([(labels == c).double() for c in range(probs.shape[1])], 1)
    return sum(dice_sq(probs[:, c], onehot[:, c]) for c in range(probs.shape[1])) / probs.shape[1]


def binary_dice_linear(p, t, ep=1e-8):
    """MC-Net utils/losses.py Binary_dice_loss: linear sums in the denominator, ep = 1e-8."""
    t = t.double()
    return 1 - (2 * torch.sum(p * t) + ep) / (torch.sum(p) + torch.sum(t) + ep)


def compute_sdf(img_gt, out_shape):
    """DTC / SASSNet utils/util.py compute_sdf: per item, negdis/max - posdis/max (min-max normalised EDTs, both minima
    are 0), inner boundary (6-connectivity, array border reflected) set to 0; an empty mask gives all zeros."""
    img_gt = img_gt.astype(np.uint8)
    normalized = np.zeros(out_shape)
    for b in range(out_shape[0]):
        posmask = img_gt[b].astype(bool)
        if posmask.any():
            negmask = ~posmask
            posdis = distance_transform_edt(posmask)
            negdis = distance_transform_edt(negmask)
            boundary = skimage_seg.find_boundaries(posmask, mode="inner").astype(np.uint8)
            sdf = (negdis - np.min(negdis)) / (np.max(negdis) - np.min(negdis)) \
                - (posdis - np.min(posdis)) / (np.max(posdis) - np.min(posdis))
            sdf[boundary == 1] = 0
            normalized[b] = sdf
    return normalized


def ema_alpha(step, alpha):
    """update_ema_variables: alpha_eff = min(1 - 1/(global_step + 1), alpha), global_step = 0-based t."""
    return min(1 - 1 / (step + 1), alpha)


def lr_step(t, base=0.01):
    """UA-MT / SASSNet / DTC: after optimiser step k (1-based) with k % 2500 == 0, lr = base * 0.1^(k // 2500)."""
    return base * 0.1 ** (t // 2500)


def lr_mcf(t, base=0.01):
    """MCF: the x0.1 check runs before iter_num is incremented, so the change lands one step later."""
    return base * 0.1 ** (max(t - 1, 0) // 2500)


def scal(v):
    v = v.detach() if torch.is_tensor(v) else v
    return torch.as_tensor(float(v), dtype=torch.float64).reshape(())


def vec(vals):
    return torch.tensor([float(v) for v in vals], dtype=torch.float64)


class Writer:
    """Collects tensors with descriptions; writes <name>.safetensors + <name>.json."""

    def __init__(self, name, hyper, sources):
        self.name, self.hyper, self.sources = name, hyper, sources
        self.t, self.desc = {}, {}

    def add(self, key, value, meaning):
        v = torch.as_tensor(value).detach()
        is_input = key.startswith("in.") or (key.startswith("d.") and not key.startswith("d.out") and
                                             not key.startswith("d.grad"))
        if v.is_floating_point() and (is_input or v.numel() > 64):
            v = v.float()    # inputs (already float32-exact), maps and gradients; scalars / schedules stay float64
        if key in self.t:
            raise KeyError(key)
        self.t[key] = v.contiguous()
        self.desc[key] = meaning

    def write(self):
        os.makedirs(ROOT, exist_ok=True)
        path = os.path.join(ROOT, f"{self.name}.safetensors")
        save_file(self.t, path)
        os.chmod(path, 0o644)
        meta = {
            "method": self.name, "layout": LAYOUT, "sources": self.sources, "t_eval": T_EVAL,
            "dtypes": "inputs float32 (labels, iterations int64); outputs with <= 64 values (scalars as 0-d tensors, "
                      "schedules) float64; larger maps and gradients float32; all values computed in float64 from the "
                      "float32 inputs",
            "hyper": self.hyper,
            "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", ""), "meaning": self.desc[k]}
                        for k, v in sorted(self.t.items())},
        }
        text = json.dumps(meta, indent=1)
        text = re.sub(r"\[\s*([-0-9.,\s]*?)\s*\]", lambda m: "[" + re.sub(r"\s+", " ", m.group(1)) + "]", text)
        with open(os.path.join(ROOT, f"{self.name}.json"), "w") as f:
            f.write(text + "\n")
        scalars = {k: round(float(v), 6) for k, v in self.t.items() if v.dim() == 0}
        print(self.name, scalars)


def leaf(x):
    return x.clone().requires_grad_(True)


# ------------------------------------------------------------------------------------------ Mean Teacher
def mean_teacher():
    g = gen(101)
    y = blobs(g, BL)
    s = leaf(logits_for(g, y, BU))                   # student on the clean batch
    tch = randn(g, BU, NC, S, S, S, scale=1.5)        # EMA model on unlabeled + noise, under no_grad
    hp = {"consistency": 0.1, "consistency_rampup": 40.0, "ramp_unit_iterations": 150, "ema_decay": 0.99,
          "max_iterations": 6000, "base_lr": 0.01, "labeled_bs": BL, "batch_size": BL + BU}
    w = Writer("mean_teacher", hp, [
        "yulequan/UA-MT code/train_LA_meanteacher_certainty_unlabel.py (LA; the MT objective = this with mask == 1)",
        "HiLab-git/SSL4MIS code/train_mean_teacher_3D.py lines 140-166 (BraTS; consistency identical, Dice 2-class)"])
    p = torch.softmax(s, 1)
    ce = F.cross_entropy(s[:BL], y)
    dice_fg = dice_sq(p[:BL, 1], y == 1)
    dice_2c = dice_2class(p[:BL], y)
    sup = 0.5 * (ce + dice_fg)
    cons = torch.mean((p[BL:] - torch.softmax(tch, 1)) ** 2)
    wt = hp["consistency"] * sigmoid_rampup(T_EVAL // 150, 40.0)
    total = sup + wt * cons
    total.backward()
    # EMA update fixture: teacher <- alpha teacher + (1 - alpha) student at steps 0, 3 and 1000
    pt, ps = randn(g, 16), randn(g, 16)
    upd = torch.stack([ema_alpha(k, 0.99) * pt + (1 - ema_alpha(k, 0.99)) * ps for k in (0, 3, 1000)])
    w.add("in.logits_student", s, "student logits for the whole batch [4,2,8,8,8] (labeled 0-1, unlabeled 2-3)")
    w.add("in.logits_teacher", tch, "EMA-teacher logits for the unlabeled items [2,2,8,8,8] (constant: no_grad)")
    w.add("in.labels", y, "labels of the labeled items [2,8,8,8], {0,1}")
    w.add("in.iterations", torch.tensor(ITERS), "0-based iteration indices t for the schedule outputs")
    w.add("in.ema_teacher_params", pt, "a flat teacher parameter vector [16] before the EMA update")
    w.add("in.ema_student_params", ps, "the student parameter vector [16]")
    w.add("out.sup_ce", scal(ce), "F.cross_entropy(logits[:2], y): mean over the 2*512 labeled voxels")
    w.add("out.sup_dice_fg", scal(dice_fg),
          "1 - (2 sum p1 y + 1e-5) / (sum p1^2 + sum y^2 + 1e-5), p1 = softmax channel 1, labeled half pooled (UA-MT)")
    w.add("out.sup_dice_2class", scal(dice_2c),
          "SSL4MIS DiceLoss(2): mean over classes c=0,1 of the same squared Dice with one-hot(y)_c (option only)")
    w.add("out.supervised", scal(sup), "0.5 * (sup_ce + sup_dice_fg)")
    w.add("out.consistency", scal(cons), "mean over 2*2*512 of (softmax(student[2:]) - softmax(teacher))^2")
    w.add("out.weight_at_t", scal(wt), "0.1 * sigmoid_rampup(t_eval // 150, 40)")
    w.add("out.total", scal(total), "supervised + weight_at_t * consistency")
    w.add("out.ramp_weight", vec(hp["consistency"] * sigmoid_rampup(t // 150, 40.0) for t in ITERS),
          "0.1 * exp(-5 (1 - min(t // 150, 40) / 40)^2) at each in.iterations")
    w.add("out.ema_alpha", vec(ema_alpha(t, 0.99) for t in ITERS), "min(1 - 1/(t + 1), 0.99) at each in.iterations")
    w.add("out.ema_updated", upd, "[3,16]: alpha teacher + (1 - alpha) student at global_step 0, 3, 1000 "
                                  "(alpha 0, 0.75, 0.99)")
    w.add("out.lr", vec(lr_step(t) for t in ITERS), "learning rate used by step t: 0.01 * 0.1^(t // 2500)")
    w.add("grad.logits_student", s.grad, "d out.total / d in.logits_student")
    w.write()


# ------------------------------------------------------------------------------------------ UA-MT
def ua_mt():
    g = gen(203)
    y = blobs(g, BL)
    s = leaf(logits_for(g, y, BU))
    tch = randn(g, BU, NC, S, S, S, scale=1.5)
    T = 8
    base = torch.randn(1, BU, NC, S, S, S, generator=g, dtype=torch.float64) * 2.0
    mc = f32(base + torch.randn(T, BU, NC, S, S, S, generator=g, dtype=torch.float64) * 0.7)  # T noisy EMA passes
    hp = {"consistency": 0.1, "consistency_rampup": 40.0, "ramp_unit_iterations": 150, "ema_decay": 0.99,
          "max_iterations": 6000, "T": T, "noise_std": 0.1, "noise_clip": 0.2, "entropy_eps": 1e-6,
          "threshold": "(0.75 + 0.25 * sigmoid_rampup(t, max_iterations)) * ln 2", "mask_denominator_eps": 1e-16,
          "base_lr": 0.01, "labeled_bs": BL, "batch_size": BL + BU}
    w = Writer("ua_mt", hp, ["yulequan/UA-MT code/train_LA_meanteacher_certainty_unlabel.py lines 144-182",
                             "HiLab-git/SSL4MIS code/train_uncertainty_aware_mean_teacher_3D.py lines 139-185"])
    p = torch.softmax(s, 1)
    ce = F.cross_entropy(s[:BL], y)
    dice_fg = dice_sq(p[:BL, 1], y == 1)
    sup = 0.5 * (ce + dice_fg)
    # The code fills preds[stride*T, C, ...] in T/2 chunks of the 2x-repeated unlabeled batch and reshapes to
    # (T, stride, C, ...): row t*stride + b is pass t of item b. in.logits_teacher_mc is that (T, B_u, C, ...) view.
    mean_p = torch.softmax(mc, 2).mean(0)
    unc = -torch.sum(mean_p * torch.log(mean_p + 1e-6), dim=1, keepdim=True)
    thr = (0.75 + 0.25 * sigmoid_rampup(T_EVAL, 6000)) * math.log(2)
    gap = float((unc - thr).abs().min())
    assert gap > 1e-4, f"uncertainty too close to the threshold for a float32 test: {gap}"
    mask = (unc < thr).double()
    dist = (p[BL:] - torch.softmax(tch, 1)) ** 2
    cons = torch.sum(mask * dist) / (2 * torch.sum(mask) + 1e-16)
    wt = hp["consistency"] * sigmoid_rampup(T_EVAL // 150, 40.0)
    total = sup + wt * cons
    total.backward()
    w.add("in.logits_student", s, "student logits [4,2,8,8,8] (labeled 0-1, unlabeled 2-3), clean input")
    w.add("in.logits_teacher", tch, "EMA logits on unlabeled + one noise draw [2,2,8,8,8]: the consistency target")
    w.add("in.logits_teacher_mc", mc, "[T=8, 2, 2, 8,8,8]: EMA logits of the T noisy passes (pass t, item b)")
    w.add("in.labels", y, "labels of the labeled items [2,8,8,8]")
    w.add("in.iterations", torch.tensor(ITERS), "0-based iteration indices t")
    w.add("out.mc_mean_prob", mean_p, "mean over the T passes of softmax(teacher_mc) [2,2,8,8,8]")
    w.add("out.uncertainty", unc, "-sum_c mean_p log(mean_p + 1e-6) [2,1,8,8,8] (natural log, not normalised)")
    w.add("out.threshold_at_t", scal(thr), "(0.75 + 0.25 * sigmoid_rampup(t_eval, 6000)) * ln 2")
    w.add("out.mask", mask, "(uncertainty < threshold_at_t) as 0/1 [2,1,8,8,8]; strict <")
    w.add("out.mask_count", scal(mask.sum()), "sum(mask)")
    w.add("out.consistency", scal(cons),
          "sum(mask * (softmax(student[2:]) - softmax(teacher))^2) / (2 * sum(mask) + 1e-16); mask broadcast over C")
    w.add("out.sup_ce", scal(ce), "F.cross_entropy over the labeled half")
    w.add("out.sup_dice_fg", scal(dice_fg), "squared-denominator Dice on softmax channel 1, smooth 1e-5")
    w.add("out.supervised", scal(sup), "0.5 * (sup_ce + sup_dice_fg)")
    w.add("out.weight_at_t", scal(wt), "0.1 * sigmoid_rampup(t_eval // 150, 40)")
    w.add("out.total", scal(total), "supervised + weight_at_t * consistency")
    w.add("out.ramp_weight", vec(0.1 * sigmoid_rampup(t // 150, 40.0) for t in ITERS), "consistency weight at each t")
    w.add("out.threshold", vec((0.75 + 0.25 * sigmoid_rampup(t, 6000)) * math.log(2) for t in ITERS),
          "uncertainty threshold at each t (per-iteration ramp over max_iterations = 6000)")
    w.add("out.ema_alpha", vec(ema_alpha(t, 0.99) for t in ITERS), "min(1 - 1/(t + 1), 0.99)")
    w.add("out.lr", vec(lr_step(t) for t in ITERS), "0.01 * 0.1^(t // 2500)")
    w.add("grad.logits_student", s.grad, "d out.total / d in.logits_student (teacher tensors are constants)")
    w.write()


# ------------------------------------------------------------------------------------------ SDF heads
def sdf_head_values(g, b):
    """tanh-head outputs: half the voxels near 0 (so sigmoid(-1500 x) is not saturated), half spread in (-1, 1)."""
    small = torch.randn(b, 1, S, S, S, generator=g, dtype=torch.float64) * 0.003
    big = torch.tanh(torch.randn(b, 1, S, S, S, generator=g, dtype=torch.float64) * 0.6)
    pick = torch.rand(b, 1, S, S, S, generator=g, dtype=torch.float64) < 0.5
    return f32(torch.where(pick, small, big))


def sdf_cases():
    """Three masks: an ellipsoid, a slab touching the array border, an empty mask."""
    idx = torch.stack(torch.meshgrid(*[torch.arange(S, dtype=torch.float64)] * 3, indexing="ij"))
    ell = ((((idx - torch.tensor([3.6, 4.1, 3.2]).view(3, 1, 1, 1)) / torch.tensor([2.6, 2.1, 3.1]).view(3, 1, 1, 1))
            ** 2).sum(0) <= 1).long()
    slab = torch.zeros(S, S, S, dtype=torch.long)
    slab[0:4, 2:7, :] = 1
    return torch.stack([ell, slab, torch.zeros_like(slab)])


class Disc(nn.Module):
    """SASSNet networks/discriminator.py FC3DDiscriminator with width ndf; pooling = mean over the conv4 map."""

    def __init__(self, num_classes=1, ndf=2, n_channel=1):
        super().__init__()
        self.conv0 = nn.Conv3d(num_classes, ndf, 4, 2, 1)
        self.conv1 = nn.Conv3d(n_channel, ndf, 4, 2, 1)
        self.conv2 = nn.Conv3d(ndf, ndf * 2, 4, 2, 1)
        self.conv3 = nn.Conv3d(ndf * 2, ndf * 4, 4, 2, 1)
        self.conv4 = nn.Conv3d(ndf * 4, ndf * 8, 4, 2, 1)
        self.classifier = nn.Linear(ndf * 8, 2)

    def forward(self, m, image):                      # eval mode: Dropout3d(0.5) after each LeakyReLU is identity
        x = F.leaky_relu(self.conv0(m) + self.conv1(image), 0.2)
        x = F.leaky_relu(self.conv2(x), 0.2)
        x = F.leaky_relu(self.conv3(x), 0.2)
        x = F.leaky_relu(self.conv4(x), 0.2)
        x = F.avg_pool3d(x, x.shape[2:])               # == AvgPool3d((7,7,5)) at the LA patch 112x112x80
        return self.classifier(x.flatten(1))


def sassnet():
    g = gen(303)
    y = blobs(g, BL)
    seg = leaf(f32(torch.randn(BL + BU, 1, S, S, S, generator=g, dtype=torch.float64) * 1.5
                   + torch.cat([2.0 * y[:, None].double() - 1.0, torch.zeros(BU, 1, S, S, S, dtype=torch.float64)])))
    tanh = leaf(sdf_head_values(g, BL + BU))
    d_u = leaf(randn(g, BU, 2))
    d_all = leaf(randn(g, BL + BU, 2))
    hp = {"beta": 0.3, "consistency": 0.01, "consistency_8_labels": 0.015, "consistency_rampup": 40.0,
          "ramp_unit_iterations": 150, "max_iterations": 6000, "base_lr": 0.01, "D_lr": 1e-4,
          "D_betas": [0.9, 0.99], "Dtarget": [1, 1, 0, 0], "labeled_bs": BL, "batch_size": BL + BU,
          "n_classes_head": 1, "discriminator_fixture": {"ndf": 2, "input": [2, 1, 32, 16, 16], "mode": "eval"}}
    w = Writer("sassnet", hp, ["kleinzcy/SASSnet code/train_gan_sdfloss.py lines 152-200",
                               "kleinzcy/SASSnet code/utils/util.py lines 123-150 (compute_sdf)",
                               "kleinzcy/SASSnet code/networks/discriminator.py lines 54-98 (FC3DDiscriminator)"])
    sdf_t = torch.from_numpy(compute_sdf(y.numpy(), (BL, S, S, S)))
    prob = torch.sigmoid(seg)
    loss_sdf = F.mse_loss(tanh[:BL, 0], sdf_t)
    bce = F.binary_cross_entropy_with_logits(seg[:BL, 0], y.double())
    dice = dice_sq(prob[:BL, 0], y == 1)
    sup = dice + hp["beta"] * loss_sdf
    adv = F.cross_entropy(d_u, torch.tensor([1, 1]))
    wt = hp["consistency"] * sigmoid_rampup(T_EVAL // 150, 40.0)
    total = sup + wt * adv
    total.backward()
    d_loss = F.cross_entropy(d_all, torch.tensor([1, 1, 0, 0]))
    d_loss.backward()
    # discriminator network fixture
    torch.manual_seed(304)
    disc = Disc().double()
    with torch.no_grad():
        for prm in disc.parameters():
            prm.copy_(f32(prm))
    dm = leaf(f32(torch.tanh(torch.randn(2, 1, 32, 16, 16, generator=g, dtype=torch.float64))))
    di = f32(torch.randn(2, 1, 32, 16, 16, generator=g, dtype=torch.float64))
    dl = disc(dm, di)
    F.cross_entropy(dl, torch.tensor([1, 1])).backward()
    w.add("in.seg_logits", seg, "segmentation head out_conv2 [4,1,8,8,8] (one channel, sigmoid)")
    w.add("in.sdf_pred", tanh, "SDF head tanh(out_conv(x9)) [4,1,8,8,8] (the post-tanh values)")
    w.add("in.labels", y, "labels of the labeled items [2,8,8,8]")
    w.add("in.d_logits_unlabeled", d_u, "[2,2] D(sdf_pred[2:], image[2:]) in the segmentation step (D in eval)")
    w.add("in.d_logits_all", d_all, "[4,2] D(sdf_pred, image) of all four items in the discriminator step")
    w.add("in.iterations", torch.tensor(ITERS), "0-based iteration indices t")
    w.add("out.sdf_target", sdf_t, "compute_sdf(labels) [2,8,8,8]: negdis/max(negdis) - posdis/max(posdis), "
                                   "inner boundary 0")
    w.add("out.loss_sdf", scal(loss_sdf), "mean over 2*512 of (sdf_pred[:2,0] - sdf_target)^2 (MSELoss)")
    w.add("out.sup_dice", scal(dice), "1 - (2 sum s y + 1e-5)/(sum s^2 + sum y^2 + 1e-5), s = sigmoid(seg[:2,0])")
    w.add("out.sup_bce_unused", scal(bce), "BCEWithLogits(seg[:2,0], y): computed and logged, NOT in the loss")
    w.add("out.supervised", scal(sup), "sup_dice + 0.3 * loss_sdf")
    w.add("out.loss_adv", scal(adv), "F.cross_entropy(d_logits_unlabeled, [1, 1]): G wants 'labeled' (class 1)")
    w.add("out.weight_at_t", scal(wt), "0.01 * sigmoid_rampup(t_eval // 150, 40)")
    w.add("out.total", scal(total), "supervised + weight_at_t * loss_adv (segmentation network's loss)")
    w.add("out.loss_d", scal(d_loss), "F.cross_entropy(d_logits_all, [1, 1, 0, 0]) (discriminator's loss)")
    w.add("out.ramp_weight", vec(0.01 * sigmoid_rampup(t // 150, 40.0) for t in ITERS), "adversarial weight at each t")
    w.add("out.lr", vec(lr_step(t) for t in ITERS), "segmentation SGD lr at each t (D: Adam 1e-4, constant)")
    w.add("grad.seg_logits", seg.grad, "d out.total / d in.seg_logits")
    w.add("grad.sdf_pred", tanh.grad, "d out.total / d in.sdf_pred (only the SDF MSE: D logits are inputs here)")
    w.add("grad.d_logits_unlabeled", d_u.grad, "d out.total / d in.d_logits_unlabeled")
    w.add("grad.d_logits_all", d_all.grad, "d out.loss_d / d in.d_logits_all")
    for k, v in disc.state_dict().items():
        w.add(f"d.{k}", v, f"discriminator parameter {k} (ndf = 2; PyTorch layout)")
    w.add("d.in_map", dm, "[2,1,32,16,16] SDF map fed to conv0")
    w.add("d.in_image", di, "[2,1,32,16,16] image fed to conv1")
    w.add("d.out_logits", dl, "[2,2] discriminator logits (eval: no dropout)")
    w.add("d.grad_map", dm.grad, "d CE(d.out_logits, [1,1]) / d d.in_map (the adversarial gradient path)")
    w.write()


# ------------------------------------------------------------------------------------------ DTC
def dtc():
    g = gen(404)
    y = blobs(g, BL)
    seg = leaf(f32(torch.randn(BL + BU, 1, S, S, S, generator=g, dtype=torch.float64) * 1.5
                   + torch.cat([2.0 * y[:, None].double() - 1.0, torch.zeros(BU, 1, S, S, S, dtype=torch.float64)])))
    tanh = leaf(sdf_head_values(g, BL + BU))
    cases = sdf_cases()
    hp = {"beta": 0.3, "k": 1500.0, "consistency": 1.0, "consistency_rampup": 40.0, "ramp_unit_iterations": 150,
          "max_iterations": 6000, "base_lr": 0.01, "labeled_bs": BL, "batch_size": BL + BU, "n_classes_head": 1}
    w = Writer("dtc", hp, ["HiLab-git/DTC code/train_la_dtc.py lines 169-191",
                           "HiLab-git/DTC code/utils/util.py lines 123-150 (compute_sdf)",
                           "HiLab-git/DTC code/networks/vnet_sdf.py lines 181-238 (heads)"])
    sdf_t = torch.from_numpy(compute_sdf(y.numpy(), (BL, S, S, S)))
    sdf_c = torch.from_numpy(compute_sdf(cases.numpy(), (3, S, S, S)))
    prob = torch.sigmoid(seg)
    loss_sdf = F.mse_loss(tanh[:BL, 0], sdf_t)
    bce = F.binary_cross_entropy_with_logits(seg[:BL, 0], y.double())
    dice = dice_sq(prob[:BL, 0], y == 1)
    dis_to_mask = torch.sigmoid(-1500 * tanh)
    cons = torch.mean((dis_to_mask - prob) ** 2)
    sup = dice + hp["beta"] * loss_sdf
    wt = hp["consistency"] * sigmoid_rampup(T_EVAL // 150, 40.0)
    total = sup + wt * cons
    total.backward()
    w.add("in.seg_logits", seg, "segmentation head out_conv2 [4,1,8,8,8] (one channel, sigmoid)")
    w.add("in.sdf_pred", tanh, "level-set head tanh(out_conv(x9)) [4,1,8,8,8] (post-tanh values)")
    w.add("in.labels", y, "labels of the labeled items [2,8,8,8]")
    w.add("in.sdf_case_labels", cases, "[3,8,8,8] extra masks for compute_sdf: ellipsoid, slab [0:4,2:7,:] touching "
                                       "the border, empty")
    w.add("in.iterations", torch.tensor(ITERS), "0-based iteration indices t")
    w.add("out.sdf_target", sdf_t, "compute_sdf(labels) [2,8,8,8]")
    w.add("out.sdf_cases", sdf_c, "compute_sdf(sdf_case_labels) [3,8,8,8] (empty mask -> all 0)")
    w.add("out.loss_sdf", scal(loss_sdf), "mean over 2*512 of (sdf_pred[:2,0] - sdf_target)^2")
    w.add("out.sup_dice", scal(dice), "squared-denominator Dice of sigmoid(seg[:2,0]) vs y, smooth 1e-5")
    w.add("out.sup_bce_unused", scal(bce), "BCEWithLogits(seg[:2,0], y): logged, NOT in the loss")
    w.add("out.supervised", scal(sup), "sup_dice + 0.3 * loss_sdf")
    w.add("out.dis_to_mask", dis_to_mask, "sigmoid(-1500 * sdf_pred) [4,1,8,8,8]")
    w.add("out.consistency", scal(cons), "mean over all 4 items and 512 voxels of (dis_to_mask - sigmoid(seg))^2")
    w.add("out.weight_at_t", scal(wt), "1.0 * sigmoid_rampup(t_eval // 150, 40)")
    w.add("out.total", scal(total), "supervised + weight_at_t * consistency")
    w.add("out.ramp_weight", vec(sigmoid_rampup(t // 150, 40.0) for t in ITERS), "consistency weight at each t")
    w.add("out.lr", vec(lr_step(t) for t in ITERS), "0.01 * 0.1^(t // 2500)")
    w.add("grad.seg_logits", seg.grad, "d out.total / d in.seg_logits (both sides of the consistency get gradient)")
    w.add("grad.sdf_pred", tanh.grad, "d out.total / d in.sdf_pred")
    w.write()


# ------------------------------------------------------------------------------------------ MC-Net / MC-Net+
def sharpening(p, temperature=0.1):
    t = 1 / temperature
    return p ** t / (p ** t + (1 - p) ** t)


def mc_net_terms(outputs, y, t):
    """train_mcnet_3d.py lines 135-163 for a list of decoder logits; y_ori / y_pseudo_label are built as in the code
    (zeros buffers filled by slice assignment), so gradients flow into BOTH the prediction and the sharpened target."""
    n = len(outputs)
    y_ori = torch.zeros((n,) + outputs[0].shape, dtype=torch.float64)
    y_pl = torch.zeros((n,) + outputs[0].shape, dtype=torch.float64)
    ce, dice = 0, 0
    for i in range(n):
        pl = F.softmax(outputs[i][:BL], 1)
        ce = ce + F.cross_entropy(outputs[i][:BL], y)
        dice = dice + binary_dice_linear(pl[:, 1], y == 1)
        pa = F.softmax(outputs[i], 1)
        y_ori[i] = pa
        y_pl[i] = sharpening(pa)
    cons = 0
    for i in range(n):
        for j in range(n):
            if i != j:
                cons = cons + torch.mean((y_ori[i] - y_pl[j]) ** 2)
    wt = 1.0 * sigmoid_rampup((t + 1) // 150, 40.0)   # iter_num is incremented before the weight is read
    return {"sup_ce_unused": ce, "sup_dice": dice, "consistency": cons, "weight_at_t": wt,
            "total": 0.5 * dice + wt * cons}


def mc_net():
    g = gen(505)
    y = blobs(g, BL)
    logits = [logits_for(g, y, BU, scale=1.5, signal=0.8 + 0.4 * k) for k in range(3)]
    hp = {"temperature": 0.1, "lamda": 0.5, "consistency": 1.0, "consistency_rampup": 40.0,
          "ramp_unit_iterations": 150, "ramp_iteration": "(t + 1) // 150 (iter_num incremented first)",
          "max_iteration": 15000, "base_lr": 0.01, "lr_schedule": "constant", "labeled_bs": BL, "batch_size": BL + BU,
          "dice_ep": 1e-8, "v1_decoders": 2, "v2_decoders": 3}
    w = Writer("mc_net", hp, ["ycwu1997/MC-Net code/train_mcnet_3d.py lines 23-30 and 134-166",
                              "ycwu1997/MC-Net code/utils/losses.py lines 4-20",
                              "ycwu1997/MC-Net code/networks/VNet.py lines 94-259"])
    for k in range(3):
        w.add(f"in.logits_dec{k + 1}", logits[k], f"decoder{k + 1} logits [4,2,8,8,8] "
              f"(up-sampling {['ConvTranspose3d', 'trilinear+conv', 'nearest+conv'][k]})")
    w.add("in.labels", y, "labels of the labeled items [2,8,8,8]")
    w.add("in.iterations", torch.tensor(ITERS), "0-based iteration indices t")
    w.add("out.sharpened_dec1", sharpening(F.softmax(logits[0], 1)),
          "[4,2,8,8,8] p^(1/0.1) / (p^(1/0.1) + (1-p)^(1/0.1)) of softmax(dec1), per channel")
    for name, n in (("v1", 2), ("v2", 3)):
        xs = [leaf(logits[k]) for k in range(n)]
        terms = mc_net_terms(xs, y, T_EVAL)
        terms["total"].backward()
        pairs = n * (n - 1)
        desc = {"sup_ce_unused": f"sum over {n} decoders of F.cross_entropy(dec[:2], y): logged, NOT in the loss",
                "sup_dice": f"sum over {n} decoders of 1 - (2 sum p1 y + 1e-8)/(sum p1 + sum y + 1e-8), p1 = softmax ch 1",
                "consistency": f"sum over the {pairs} ordered pairs i != j of mean over 4*2*512 of "
                               "(softmax(dec_i) - sharpen(softmax(dec_j)))^2",
                "weight_at_t": "1.0 * sigmoid_rampup((t_eval + 1) // 150, 40)",
                "total": "0.5 * sup_dice + weight_at_t * consistency"}
        for k, v in terms.items():
            w.add(f"out.{name}.{k}", scal(v), desc[k])
        for k in range(n):
            w.add(f"grad.{name}.logits_dec{k + 1}", xs[k].grad,
                  f"d out.{name}.total / d in.logits_dec{k + 1} (the sharpened targets are NOT detached)")
    w.add("out.ramp_weight", vec(sigmoid_rampup((t + 1) // 150, 40.0) for t in ITERS),
          "consistency weight at each 0-based t: sigmoid_rampup((t + 1) // 150, 40)")
    w.write()


# ------------------------------------------------------------------------------------------ MCF
def mcf_terms(v_out, r_out, y, t, temperature=0.1):
    """train_MCF.py lines 165-226: both nets see the same crop; returns both nets' losses and the intermediates."""
    v_ce = F.cross_entropy(v_out[:BL], y)
    v_soft = F.softmax(v_out, 1)
    v_dice = dice_sq(v_soft[:BL, 1], y == 1)
    r_ce = F.cross_entropy(r_out[:BL], y)
    r_soft = F.softmax(r_out, 1)
    r_dice = dice_sq(r_soft[:BL, 1], y == 1)
    good = 0 if v_dice < r_dice else 1
    v_pred = torch.max(v_soft[:BL], 1)[1]
    r_pred = torch.max(r_soft[:BL], 1)[1]
    diff = ((v_pred == 1) ^ (r_pred == 1)).to(torch.int32)
    v_mse = torch.sum(diff * (v_soft[:BL, 1] - y) ** 2) / (torch.sum(diff) + 1e-16)
    r_mse = torch.sum(diff * (r_soft[:BL, 1] - y) ** 2) / (torch.sum(diff) + 1e-16)
    v_sup = (v_ce + v_dice) + 0.5 * v_mse
    r_sup = (r_ce + r_dice) + 0.5 * r_mse

    def plabel(soft):
        c = soft[BL:].clone().detach()
        c1 = torch.pow(c, 1 / temperature)
        return c1 / torch.sum(c1, dim=1, keepdim=True)

    pl = plabel(v_soft) if good == 0 else plabel(r_soft)
    wt = 0.1 * sigmoid_rampup(t // 150, 40.0)
    student = r_soft if good == 0 else v_soft
    cons = torch.sum((student[BL:] - pl) ** 2) / student[BL:].numel()
    v_loss = v_sup + (wt * cons if good == 1 else 0)
    r_loss = r_sup + (wt * cons if good == 0 else 0)
    return {"v_ce": v_ce, "v_dice": v_dice, "r_ce": r_ce, "r_dice": r_dice, "good_student": good, "diff_mask": diff,
            "v_mse": v_mse, "r_mse": r_mse, "v_supervised": v_sup, "r_supervised": r_sup, "pseudo_label": pl,
            "consistency": cons, "weight_at_t": wt, "v_loss": v_loss, "r_loss": r_loss}


def mcf():
    g = gen(606)
    y = blobs(g, BL)
    hp = {"temperature": 0.1, "consistency": 0.1, "consistency_rampup": 40.0, "ramp_unit_iterations": 150,
          "cdr_weight": 0.5, "max_iterations": 6000, "base_lr": 0.01, "labeled_bs": BL, "batch_size": BL + BU,
          "ema_decay_unused": 0.999}
    w = Writer("mcf", hp, ["WYC-321/MCF code/train_MCF.py lines 155-234",
                           "WYC-321/MCF code/utils/losses.py lines 5-13 (dice_loss) and 56-69 (softmax_mse_loss: no softmax)"])
    w.add("in.labels", y, "labels of the labeled items [2,8,8,8] (the same crop feeds both nets)")
    w.add("in.iterations", torch.tensor(ITERS), "0-based iteration indices t")
    desc = {"v_ce": "F.cross_entropy(v_logits[:2], y)", "v_dice": "squared Dice on softmax(v)[:2,1], smooth 1e-5",
            "r_ce": "F.cross_entropy(r_logits[:2], y)", "r_dice": "squared Dice on softmax(r)[:2,1], smooth 1e-5",
            "good_student": "0 if v_dice < r_dice else 1 (0 = V-Net teaches, 1 = ResNet teaches)",
            "diff_mask": "[2,8,8,8] (argmax_v == 1) XOR (argmax_r == 1) on the labeled half (CDR region)",
            "v_mse": "sum(diff * (softmax(v)[:2,1] - y)^2) / (sum(diff) + 1e-16)",
            "r_mse": "sum(diff * (softmax(r)[:2,1] - y)^2) / (sum(diff) + 1e-16)",
            "v_supervised": "v_ce + v_dice + 0.5 * v_mse", "r_supervised": "r_ce + r_dice + 0.5 * r_mse",
            "pseudo_label": "[2,2,8,8,8] detached p^(1/0.1) / sum_c p^(1/0.1) of the good student's softmax on 2-3",
            "consistency": "sum over 2*2*512 of (softmax(other)[2:] - pseudo_label)^2 / (2*2*512)",
            "weight_at_t": "0.1 * sigmoid_rampup(t_eval // 150, 40)",
            "v_loss": "v_supervised (+ weight_at_t * consistency when good_student == 1)",
            "r_loss": "r_supervised (+ weight_at_t * consistency when good_student == 0)"}
    for case, (sv, sr) in enumerate(((2.0, 0.6), (0.6, 2.0))):     # case 0: V-Net better; case 1: ResNet better
        v = leaf(logits_for(g, y, BU, scale=1.5, signal=sv))
        r = leaf(logits_for(g, y, BU, scale=1.5, signal=sr))
        terms = mcf_terms(v, r, y, T_EVAL)
        assert terms["good_student"] == case
        (terms["v_loss"] + terms["r_loss"]).backward()
        w.add(f"in.case{case}.logits_vnet", v, "V-Net logits [4,2,8,8,8]")
        w.add(f"in.case{case}.logits_resnet", r, "ResNet-34 V-Net logits [4,2,8,8,8]")
        for k, val in terms.items():
            t = val if torch.is_tensor(val) and val.dim() > 0 else scal(val)
            w.add(f"out.case{case}.{k}", t, desc[k])
        w.add(f"grad.case{case}.logits_vnet", v.grad, "d out.v_loss / d logits_vnet (r_loss does not reach it)")
        w.add(f"grad.case{case}.logits_resnet", r.grad, "d out.r_loss / d logits_resnet")
    w.add("out.ramp_weight", vec(0.1 * sigmoid_rampup(t // 150, 40.0) for t in ITERS), "consistency weight at each t")
    w.add("out.lr", vec(lr_mcf(t) for t in ITERS), "lr of step t: 0.01 * 0.1^(max(t - 1, 0) // 2500)")
    w.write()


def main():
    torch.use_deterministic_algorithms(True)
    for f in (mean_teacher, ua_mt, sassnet, dtc, mc_net, mcf):
        f()
    total = sum(os.path.getsize(os.path.join(ROOT, n)) for n in os.listdir(ROOT))
    print(f"{total / 1024:.0f} KiB in {ROOT}")
    assert total < 1024 * 1024


if __name__ == "__main__":
    main()
