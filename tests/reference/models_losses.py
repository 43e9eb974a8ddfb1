"""PyTorch reference for duoseg-models and duoseg-losses: writes the fixtures the Rust tests compare against.

Run from the repository root (CPU is enough):
    pip install torch numpy safetensors
    python tests/reference/models_losses.py
    python tests/reference/models_losses.py --conditioning   # how closely float32 can match (see below)
Writes tests/fixtures/models/{vnet,resnet34}.safetensors, keys_default.json and
tests/fixtures/losses/{paper,reference_code}.safetensors (< 3 MB in all).

The networks are written here from SPEC.md section 1 with the module names of the project's PyTorch
reference (b1, d1, ..., u5, ..., out; stem, layers.i.j.{c1,n1,c2,n2,down}); the losses follow SPEC.md
section 2 term by term, with the decisions the Rust crate documents (reliable = entropy <= the largest
value kept, so ties stay reliable; counts normalised by max(1, n); prototypes constant in the pull term).
Model fixtures use base width 2 and 16x16x32 inputs to stay small; dropout is off for determinism;
reference outputs and gradients are computed in float64 from the stored float32 weights.
"""
import json
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")


# ----------------------------------------------------------------------------------------- networks
def conv_block(n_stages, cin, cout):
    ops = []
    for i in range(n_stages):
        ops += [nn.Conv3d(cin if i == 0 else cout, cout, 3, padding=1), nn.BatchNorm3d(cout), nn.ReLU()]
    return nn.Sequential(*ops)


def down(cin, cout):
    return nn.Sequential(nn.Conv3d(cin, cout, 2, stride=2), nn.BatchNorm3d(cout), nn.ReLU())


def up(cin, cout):
    return nn.Sequential(nn.ConvTranspose3d(cin, cout, 2, stride=2), nn.BatchNorm3d(cout), nn.ReLU())


class Decoder(nn.Module):
    """Mixin holding the shared decoder names u5 b6 u6 b7 u7 b8 u8 b9 out."""

    def make_decoder(self, n, n_classes, dropout):
        self.u5 = up(16 * n, 8 * n); self.b6 = conv_block(3, 8 * n, 8 * n)
        self.u6 = up(8 * n, 4 * n); self.b7 = conv_block(3, 4 * n, 4 * n)
        self.u7 = up(4 * n, 2 * n); self.b8 = conv_block(2, 2 * n, 2 * n)
        self.u8 = up(2 * n, n); self.b9 = conv_block(1, n, n)
        self.out = nn.Conv3d(n, n_classes, 1)
        self.drop = nn.Dropout3d(0.5) if dropout else nn.Identity()

    def decode(self, x1, x2, x3, x4, x5):
        x = self.b6(self.u5(x5) + x4); x = self.b7(self.u6(x) + x3); x = self.b8(self.u7(x) + x2)
        x9 = self.drop(self.b9(self.u8(x) + x1))
        return self.out(x9), x9


class VNet(Decoder):
    def __init__(self, cin=1, n_classes=2, n=16, dropout=True):
        super().__init__()
        self.b1 = conv_block(1, cin, n); self.d1 = down(n, 2 * n)
        self.b2 = conv_block(2, 2 * n, 2 * n); self.d2 = down(2 * n, 4 * n)
        self.b3 = conv_block(3, 4 * n, 4 * n); self.d3 = down(4 * n, 8 * n)
        self.b4 = conv_block(3, 8 * n, 8 * n); self.d4 = down(8 * n, 16 * n)
        self.b5 = conv_block(3, 16 * n, 16 * n)
        self.make_decoder(n, n_classes, dropout)

    def forward(self, x):
        x1 = self.b1(x); x2 = self.b2(self.d1(x1)); x3 = self.b3(self.d2(x2)); x4 = self.b4(self.d3(x3))
        x5 = self.drop(self.b5(self.d4(x4)))
        return self.decode(x1, x2, x3, x4, x5)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv3d(cin, cout, 3, stride, 1, bias=False); self.n1 = nn.BatchNorm3d(cout)
        self.c2 = nn.Conv3d(cout, cout, 3, 1, 1, bias=False); self.n2 = nn.BatchNorm3d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv3d(cin, cout, 1, stride, bias=False), nn.BatchNorm3d(cout))

    def forward(self, x):
        y = F.relu(self.n1(self.c1(x)))
        y = self.n2(self.c2(y))
        return F.relu(y + (x if self.down is None else self.down(x)))


class ResNet34VNet(Decoder):
    def __init__(self, cin=1, n_classes=2, n=16, dropout=True):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv3d(cin, n, 7, 1, 3, bias=False), nn.BatchNorm3d(n), nn.ReLU())
        layers, c = [], n
        for blocks, cout in zip([3, 4, 6, 3], [2 * n, 4 * n, 8 * n, 16 * n]):
            layers.append(nn.Sequential(*[BasicBlock(c if i == 0 else cout, cout, 2 if i == 0 else 1) for i in range(blocks)]))
            c = cout
        self.layers = nn.ModuleList(layers)
        self.make_decoder(n, n_classes, dropout)

    def forward(self, x):
        x1 = self.stem(x)
        x2 = self.layers[0](x1); x3 = self.layers[1](x2); x4 = self.layers[2](x3); x5 = self.layers[3](x4)
        return self.decode(x1, x2, x3, x4, x5)


def init(net):
    """SPEC init: kaiming-normal (fan_in, gain sqrt 2), zero bias; BN gamma/beta randomised here so the test
    also checks that they are applied."""
    for m in net.modules():
        if isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.uniform_(m.bias, -0.1, 0.1)
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.uniform_(m.weight, 0.5, 1.5); nn.init.uniform_(m.bias, -0.1, 0.1)
            m.running_mean.uniform_(-0.1, 0.1); m.running_var.uniform_(0.5, 1.5)


# ------------------------------------------------------------------------------------------- losses
def dice_fg(p, y, mask=None, eps=1e-5):
    k = p.shape[1]
    oh = F.one_hot(y, k).permute(0, 4, 1, 2, 3).float()[:, 1:]
    p = p[:, 1:]
    if mask is not None:
        p, oh = p * mask[:, None], oh * mask[:, None]
    dims = (0, 2, 3, 4)
    ratio = (2 * (p * oh).sum(dims) + eps) / ((p * p).sum(dims) + (oh * oh).sum(dims) + eps)
    return (1 - ratio).mean()


def ce(logits, y, mask=None):
    if mask is None:
        return F.cross_entropy(logits, y)
    return (F.cross_entropy(logits, y, reduction="none") * mask).sum() / mask.sum().clamp(min=1)


def entropy(p):
    return -(p * torch.log(p + 1e-10)).sum(1)


def select_reliable(h, alpha):
    v = h.flatten()
    n = v.numel(); nu = min(int(math.floor(alpha * n)), n)
    if nu == 0:
        return torch.ones_like(h)
    if nu == n:
        return torch.zeros_like(h)
    q = torch.sort(v.double()).values[n - nu - 1]
    return (h.double() <= q).float()


def contrastive(fu, rel, yh, fl, yl, k, tau=0.1, m=1.0):
    C = fu.shape[1]
    fu = F.normalize(fu, dim=1).permute(0, 2, 3, 4, 1).reshape(-1, C)
    fl = F.normalize(fl, dim=1).permute(0, 2, 3, 4, 1).reshape(-1, C)
    r, yh, yl = rel.flatten() > 0, yh.flatten(), yl.flatten()
    protos, present = [], []
    for c in range(k):
        sel = torch.cat([fu[r & (yh == c)], fl[yl == c]])
        if len(sel):
            protos.append(sel.mean(0)); present.append(c)
    zero = fu.sum() * 0
    if len(present) < 2:
        return zero, zero
    P = torch.stack(protos)
    slot = {c: i for i, c in enumerate(present)}
    idx = [i for i in (~r).nonzero().flatten().tolist() if int(yh[i]) in slot]
    pull = zero
    if idx:
        fs = fu[idx]
        d = ((fs[:, None, :] - P.detach()[None]) ** 2).sum(-1)
        tgt = torch.tensor([slot[int(yh[i])] for i in idx])
        pull = F.cross_entropy(-d / tau, tgt)
    terms = []
    for i in range(len(present)):
        for j in range(i + 1, len(present)):
            terms.append(F.relu(m - (P[i] - P[j]).norm()) ** 2)
    return pull, torch.stack(terms).mean()


def assemble(la, fa, lb, fb, y, t, tmax, preset):
    nl = y.shape[0]
    k = la.shape[1]
    pa, pb = la.softmax(1), lb.softmax(1)
    ce_a, dice_a = ce(la[:nl], y), dice_fg(pa[:nl], y)
    ce_b, dice_b = ce(lb[:nl], y), dice_fg(pb[:nl], y)
    ramp = math.exp(-5 * (1 - t / tmax) ** 2)
    lam_u, lam_c = ramp, 0.1 * ramp
    pa_u, pb_u = pa[nl:], pb[nl:]
    out = {"ce_a": ce_a, "dice_a": dice_a, "ce_b": ce_b, "dice_b": dice_b}
    if preset == "paper":
        teacher_a = (ce_a + dice_a).item() <= (ce_b + dice_b).item()
        pt = (pa_u if teacher_a else pb_u).detach()
        yh = pt.argmax(1)
        rel = select_reliable(entropy(pt), 0.2 * (1 - t / tmax))
        s_logits, s_p = (lb[nl:], pb_u) if teacher_a else (la[nl:], pa_u)
        unsup = ce(s_logits, yh, rel) + dice_fg(s_p, yh, rel)
        conf = 0.5 * (pa_u.detach().max(1).values.mean().item() + pb_u.detach().max(1).values.mean().item())
        T = min(max(0.999 * (1 / k) + 0.001 * conf, 0.5), 0.95)
        ca, cb = pa_u.detach().max(1), pb_u.detach().max(1)
        md = ((ca.values > T) & (cb.values > T) & (ca.indices != cb.indices)).float()[:, None]
        reg = (md * (pa_u - pb_u)).abs().sum() / md.sum().clamp(min=1)
        pull_a, push_a = contrastive(fa[nl:], rel, yh, fa[:nl], y, k)
        pull_b, push_b = contrastive(fb[nl:], rel, yh, fb[:nl], y, k)
        total = ce_a + dice_a + ce_b + dice_b + lam_u * (unsup + reg) + lam_c * (pull_a + push_a + pull_b + push_b)
        out.update(teacher_is_a=torch.tensor(float(teacher_a)), threshold=torch.tensor(T), n_disagree=md.sum())
    else:
        yh = torch.maximum(pa_u.argmax(1), pb_u.argmax(1)).detach()
        rel = torch.maximum(select_reliable(entropy(pa_u.detach()), 0.8), select_reliable(entropy(pb_u.detach()), 0.8))
        unsup = sum(ce(l[nl:].detach(), yh, rel) + dice_fg(p.detach(), yh, rel) for l, p in ((la, pa_u), (lb, pb_u)))
        fga, fgb = pa[:nl, 1], pb[:nl, 1]
        m = ((fga.detach() > 0.6) != (fgb.detach() > 0.6)).float()
        yf = y.float()
        reg = sum(((fg - yf) ** 2 * m).sum() / m.sum().clamp(min=1) for fg in (fga, fgb))
        pull_a, push_a = contrastive(fa[nl:].detach(), rel, yh, fa[:nl].detach(), y, k)
        pull_b, push_b = contrastive(fb[nl:].detach(), rel, yh, fb[:nl].detach(), y, k)
        total = ce_a + dice_a + ce_b + dice_b + 0.5 * reg + lam_u * unsup + lam_c * (pull_a + push_a + pull_b + push_b)
        out.update(n_disagree=m.sum())
    out.update(unsup=unsup, reg=reg, pull_a=pull_a, push_a=push_a, pull_b=pull_b, push_b=push_b, total=total,
               n_reliable=rel.sum())
    return out


# ------------------------------------------------------------------------------------------ writers
# a few parameters from the first, deepest and last layers of each net, conv / conv-transpose / BN / bias
GRAD_KEYS = {
    "vnet": ["b1.0.weight", "b1.1.weight", "d4.0.weight", "b5.7.weight", "u5.0.weight", "u8.1.bias", "b9.0.weight", "out.weight", "out.bias"],
    "resnet34": ["stem.0.weight", "stem.1.bias", "layers.0.0.c1.weight", "layers.3.0.down.0.weight", "layers.2.5.n2.weight",
                 "layers.3.2.n2.weight", "layers.1.2.c2.weight", "u5.1.weight", "b9.1.weight", "out.weight"],
}


def fixture_setup(cls):
    """The fixture's net (float32, initialised), input and labels, from seed 7."""
    torch.manual_seed(7)
    net = cls(1, 2, 2, dropout=False)
    init(net)
    # 16x16x32: the bottleneck BatchNorm sees 4 values per channel in training (with 2 its gradient is 0 up
    # to rounding, which would make the comparison meaningless)
    x = torch.randn(2, 1, 16, 16, 32)
    y = (torch.rand(2, 16, 16, 32) > 0.6).long()
    return net, x, y


def fixture_loss(lt, ft, y):
    """The loss whose gradients the fixtures record."""
    return ce(lt, y) + dice_fg(lt.softmax(1), y) + (ft ** 2).mean()


def net_fixture(name, cls):
    net, x, y = fixture_setup(cls)
    t = {"input": x, "labels": y.to(torch.int64)}
    for k, v in net.state_dict().items():
        t[f"param.{k}"] = v.clone()
    # the reference values are computed in float64 from the float32 weights and input: PyTorch's own
    # float32 gradients differ from float64 by up to 3e-4 (relative) in the ResNet encoder, more than the
    # 1e-4 we want to test at
    net = net.double()
    x64 = x.double()
    net.eval()
    with torch.no_grad():
        le, fe = net(x64)
    t["eval.logits"], t["eval.features"] = le, fe[:, :, :8]
    net.train()
    lt, ft = net(x64)
    loss = fixture_loss(lt, ft, y)
    loss.backward()
    t["train.logits"], t["train.features"], t["train.loss"] = lt.detach(), ft.detach()[:, :, :8], loss.detach()
    sd = net.state_dict()
    for k, p in net.named_parameters():
        if k in GRAD_KEYS[name]:
            t[f"grad.{k}"] = p.grad.clone()
    for k in sd:
        if k.endswith("running_mean") or k.endswith("running_var"):
            t[f"after.{k}"] = sd[k].clone()
    t = {k: (v.float() if v.is_floating_point() else v) for k, v in t.items()}
    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(ROOT, "models", f"{name}.safetensors"))
    return net


def loss_fixture(preset):
    torch.manual_seed(11)
    shape = (4, 2, 8, 8, 8)
    la = (torch.randn(shape) * 2).requires_grad_()
    lb = (torch.randn(shape) * 2).requires_grad_()
    fa = torch.randn(4, 4, 8, 8, 8).requires_grad_()
    fb = torch.randn(4, 4, 8, 8, 8).requires_grad_()
    y = (torch.rand(2, 8, 8, 8) > 0.5).long()
    out = assemble(la, fa, lb, fb, y, 1000, 6000, preset)
    out["total"].backward()
    t = {"logits_a": la.detach(), "logits_b": lb.detach(), "features_a": fa.detach(), "features_b": fb.detach(),
         "labels": y, "grad.logits_a": la.grad, "grad.logits_b": lb.grad}
    for n, v in (("features_a", fa), ("features_b", fb)):
        t[f"grad.{n}"] = v.grad if v.grad is not None else torch.zeros_like(v)
    for k, v in out.items():
        t[f"term.{k}"] = torch.as_tensor(v).detach().float().reshape(())
    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(ROOT, "losses", f"{preset}.safetensors"))
    print(preset, {k: round(float(v.detach()), 5) for k, v in out.items()})


def conditioning(noise=1e-5, draws=3):
    """How much the fixtures' float64 training-mode gradients move when the input moves by `noise`
    (relative, element-wise): the largest relative change over GRAD_KEYS, per net. It bounds how
    closely any float32 implementation can match them (float32 rounds each op by ~6e-8)."""
    for name, cls in (("vnet", VNet), ("resnet34", ResNet34VNet)):
        net, x, y = fixture_setup(cls)
        net, x = net.double().train(), x.double()

        def grads(xin):
            net.zero_grad()
            fixture_loss(*net(xin), y).backward()
            return {k: p.grad.clone() for k, p in net.named_parameters() if k in GRAD_KEYS[name]}

        g0, worst = grads(x), 0.0
        for d in range(draws):
            gen = torch.Generator().manual_seed(100 + d)
            g1 = grads(x * (1 + noise * torch.randn(x.shape, generator=gen, dtype=torch.float64)))
            worst = max(worst, max(((g1[k] - g0[k]).abs().max() / g0[k].abs().max()).item() for k in g0))
        print(f"{name}: input noise {noise:.0e} moves the gradients by up to {worst:.2e} (amplification {worst / noise:.0f}x)")


def main():
    if sys.argv[1:] == ["--conditioning"]:
        conditioning()
        return
    torch.use_deterministic_algorithms(True)
    for name, cls in (("vnet", VNet), ("resnet34", ResNet34VNet)):
        net_fixture(name, cls)
    keys = {}
    for name, cls in (("vnet", VNet), ("resnet34", ResNet34VNet)):
        net = cls()
        keys[name] = {"keys": sorted(net.state_dict().keys()),
                      "parameters": sum(p.numel() for p in net.parameters())}
    with open(os.path.join(ROOT, "models", "keys_default.json"), "w") as f:
        json.dump(keys, f, indent=0)
    for preset in ("paper", "reference_code"):
        loss_fixture(preset)


if __name__ == "__main__":
    main()
