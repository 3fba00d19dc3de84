"""Golden focal-loss fixtures for the Rust peer-fixture tests (tests/focal.rs).

What it makes: one file per case, ``tests/fixtures/focal/<case>.safetensors``, holding the float64
inputs (``logits``, ``targets`` or ``scores``/``weight``, ``grad_out``), int64 ``labels``, and the
peer's loss and logits gradient (``expected.output``, ``expected.grad_logits``). The op and its
parameters are in the safetensors ``__metadata__`` map (keys documented in src/parity/focal.rs):
op, reduction, alpha/gamma (focal forms), beta and avg_factor (QFL).

The peers:

* ``sigmoid_focal_loss``: torchvision.ops.sigmoid_focal_loss itself; gradient by autograd.
* ``sigmoid_focal_loss_mmcv``: mmcv is NOT installed (its op is a compiled CUDA extension), so its
  formula is written here in PyTorch from mmcv's ``sigmoid_focal_loss_cuda_kernel.cuh`` and
  ``mmcv/ops/focal_loss.py`` (spec/kernels.md B4): label == C is background; positive column
  ``-alpha (1-p)^gamma log(max(p, FLT_MIN))``, every other column
  ``-(1-alpha) p^gamma log(max(1-p, FLT_MIN))``; every column of row n times ``weight[label[n]]``;
  ``mean`` divides by N. The gradient is mmcv's closed form (its backward kernel), not autograd: the
  two differ where a log is clamped. The logs are evaluated stably (``log(max(p, FLT_MIN)) =
  max(logsigmoid(x), ln FLT_MIN)``), i.e. mmcv's formula in exact arithmetic; the script checks that
  this equals the kernel's literal arithmetic (``p = 1/(1+exp(-x))``, ``1 - p`` by subtraction) in
  float64 wherever that literal form is still accurate (|x| <= 15), and that the closed-form gradient
  equals autograd wherever no clamp is active. mmcv reads ``weight[C]`` (one past the end) for
  background rows; detkd leaves background rows unweighted, and so does this composition.
* ``quality_focal_loss``: mmdet is NOT installed either; ``quality_focal_loss`` of
  ``mmdet/models/losses/gfocal_loss.py`` and ``weight_reduce_loss`` of ``mmdet/models/losses/utils.py``
  (current form: ``sum / (avg_factor + float32 eps)``) are pure PyTorch and are reproduced verbatim
  below; gradient by autograd.

How to run, from the repository root, with the pinned peer environment::

    .venv-peer/bin/python scripts/make_fixtures_focal.py

Every input comes from a torch.Generator with a fixed per-case seed and everything is computed in
float64 on the CPU, so a rerun rewrites byte-identical files. Files are serialised by
``write_safetensors`` (sorted keys, metadata first) and read back with the safetensors library.
Cases cover extreme logits (up to +-1e4, on both sides of mmcv's clamp at |x| = 87.34), background
rows, per-class and per-anchor weights, all-background batches and N = 0.
"""

import json
import math
import struct
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from safetensors import safe_open
from torchvision.ops import sigmoid_focal_loss

OUT_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "focal"
DTYPE = torch.float64
MAX_FILE_BYTES = 64 * 1024
MAX_TOTAL_BYTES = 400 * 1024
LOG_FLT_MIN = math.log(torch.finfo(torch.float32).tiny)
EXTREMES = [-1e4, -1e3, -100.0, -88.5, -86.0, -50.0, -30.0, -17.0, -5.0, 0.0, 5.0, 17.0, 30.0, 50.0,
            86.0, 88.5, 100.0, 1e3, 1e4]


# ----------------------------------------------------------------------------------------------
# Serialisation


def write_safetensors(path, tensors, metadata):
    """Write a safetensors file deterministically: metadata first, then tensors by name."""
    header = {"__metadata__": {k: metadata[k] for k in sorted(metadata)}}
    chunks = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous()
        if t.dtype == torch.float64:
            code, data = "F64", t.numpy().astype("<f8", copy=False).tobytes()
        elif t.dtype == torch.int64:
            code, data = "I64", t.numpy().astype("<i8", copy=False).tobytes()
        else:
            raise TypeError((name, t.dtype))
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(chunks))


def check_roundtrip(path, tensors, metadata):
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == metadata, (path, f.metadata())
        assert sorted(f.keys()) == sorted(tensors), (path, list(f.keys()))
        for name, t in tensors.items():
            got = f.get_tensor(name)
            assert got.dtype == t.dtype and got.shape == t.shape, (path, name)
            assert torch.equal(got.nan_to_num(), t.nan_to_num()), (path, name)
            assert torch.equal(got.isnan(), t.isnan()), (path, name)


# ----------------------------------------------------------------------------------------------
# Peers


def torchvision_peer(logits, targets, grad_out, p):
    x = logits.clone().requires_grad_(True)
    out = sigmoid_focal_loss(x, targets, alpha=p["alpha"], gamma=p["gamma"], reduction=p["reduction"])
    (grad,) = torch.autograd.grad((out * grad_out).sum(), x) if x.numel() else (torch.zeros_like(x),)
    return out.detach(), grad.detach()


def mmcv_row_weight(labels, weight, c):
    """weight[label] per row; background rows (label == C) get 1 (mmcv reads weight[C] out of bounds)."""
    if weight is None:
        return torch.ones(labels.shape[0], dtype=DTYPE)
    padded = torch.cat([weight, torch.ones(1, dtype=DTYPE)])
    return padded[labels]


def mmcv_terms(x, labels, p):
    """mmcv's element losses (unweighted) and its closed-form gradient, with stable clamped logs."""
    n, c = x.shape
    gamma, alpha = p["gamma"], p["alpha"]
    pos = F.one_hot(labels, c + 1)[:, :c].to(DTYPE)
    prob, one_minus = torch.sigmoid(x), torch.sigmoid(-x)
    log_p = torch.clamp(F.logsigmoid(x), min=LOG_FLT_MIN)          # log(max(p, FLT_MIN))
    log_one_minus = torch.clamp(F.logsigmoid(-x), min=LOG_FLT_MIN)  # log(max(1 - p, FLT_MIN))
    term_p = one_minus.pow(gamma) * log_p
    term_n = prob.pow(gamma) * log_one_minus
    loss = -alpha * term_p * pos - (1 - alpha) * term_n * (1 - pos)
    # mmcv's backward kernel: term_p = (1-p)^g (1 - p - g p log p), term_n = p^g (g (1-p) log(1-p) - p)
    grad_p = one_minus.pow(gamma) * (one_minus - gamma * prob * log_p)
    grad_n = prob.pow(gamma) * (gamma * one_minus * log_one_minus - prob)
    grad = -alpha * grad_p * pos - (1 - alpha) * grad_n * (1 - pos)
    return loss, grad


def mmcv_literal(x, labels, p):
    """mmcv's kernel arithmetic taken literally (naive 1 - p), in float64."""
    c = x.shape[1]
    gamma, alpha = p["gamma"], p["alpha"]
    pos = F.one_hot(labels, c + 1)[:, :c].to(DTYPE)
    prob = 1.0 / (1.0 + torch.exp(-x))
    tiny = torch.finfo(torch.float32).tiny
    term_p = (1 - prob).pow(gamma) * torch.log(torch.clamp(prob, min=tiny))
    term_n = prob.pow(gamma) * torch.log(torch.clamp(1 - prob, min=tiny))
    return -alpha * term_p * pos - (1 - alpha) * term_n * (1 - pos)


def mmcv_peer(logits, labels, weight, grad_out, p):
    n, c = logits.shape
    loss, grad = mmcv_terms(logits, labels, p)
    w = mmcv_row_weight(labels, weight, c)[:, None]
    loss, grad = loss * w, grad * w

    # Self-checks of the composition (see the module docstring).
    if logits.numel():
        small = logits.abs() <= 15
        literal = mmcv_literal(logits, labels, p) * w
        assert torch.allclose(loss[small], literal[small], rtol=1e-9, atol=1e-12), "stable != literal"
        unclamped = logits.abs() < 80
        x = logits.clone().requires_grad_(True)
        (auto,) = torch.autograd.grad((mmcv_terms(x, labels, p)[0] * w).sum(), x)
        assert torch.allclose(grad[unclamped], auto[unclamped], rtol=1e-9, atol=1e-12), "closed form != autograd"

    if p["reduction"] == "none":
        return loss, grad * grad_out
    total = loss.sum()
    if p["reduction"] == "mean":
        return total / n, grad * grad_out / n
    return total, grad * grad_out


def quality_focal_loss(pred, target, beta=2.0):
    """mmdet/models/losses/gfocal_loss.py, verbatim (without the @weighted_loss decorator)."""
    assert len(target) == 2
    label, score = target
    pred_sigmoid = pred.sigmoid()
    scale_factor = pred_sigmoid
    zerolabel = scale_factor.new_zeros(pred.shape)
    loss = F.binary_cross_entropy_with_logits(pred, zerolabel, reduction="none") * scale_factor.pow(beta)
    bg_class_ind = pred.size(1)
    pos = ((label >= 0) & (label < bg_class_ind)).nonzero().squeeze(1)
    pos_label = label[pos].long()
    scale_factor = score[pos] - pred_sigmoid[pos, pos_label]
    loss[pos, pos_label] = F.binary_cross_entropy_with_logits(
        pred[pos, pos_label], score[pos], reduction="none") * scale_factor.abs().pow(beta)
    loss = loss.sum(dim=1, keepdim=False)
    return loss


def reduce_loss(loss, reduction):
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    return loss.sum()


def weight_reduce_loss(loss, weight=None, reduction="mean", avg_factor=None):
    """mmdet/models/losses/utils.py (current form, with the float32 eps), verbatim."""
    if weight is not None:
        loss = loss * weight
    if avg_factor is None:
        loss = reduce_loss(loss, reduction)
    else:
        if reduction == "mean":
            eps = torch.finfo(torch.float32).eps
            loss = loss.sum() / (avg_factor + eps)
        elif reduction != "none":
            raise ValueError('avg_factor can not be used with reduction="sum"')
    return loss


def quality_peer(logits, labels, scores, weight, grad_out, p):
    x = logits.clone().requires_grad_(True)
    per_anchor = quality_focal_loss(x, (labels, scores), beta=p["beta"])
    out = weight_reduce_loss(per_anchor, weight, p["reduction"], p.get("avg_factor"))
    if x.numel():
        (grad,) = torch.autograd.grad((out * grad_out).sum(), x)
    else:
        grad = torch.zeros_like(x)
    return out.detach(), grad.detach()


# ----------------------------------------------------------------------------------------------
# Cases


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(g, *shape, scale=1.0):
    return scale * torch.randn(tuple(shape), generator=g, dtype=DTYPE)


def uniform(g, lo, hi, *shape):
    return lo + (hi - lo) * torch.rand(tuple(shape), generator=g, dtype=DTYPE)


def randint(g, hi, n):
    return torch.randint(0, hi, (n,), generator=g, dtype=torch.int64)


def upstream(g, out_shape):
    """A random upstream gradient of the loss's shape, away from zero."""
    return uniform(g, 0.3, 1.7, *out_shape)


def extreme_rows(c):
    """Logits: each extreme value once per column position, the rest of the row moderate."""
    rows = []
    for k, v in enumerate(EXTREMES):
        row = [((k + j) % 5 - 2) * 1.3 for j in range(c)]
        row[k % c] = v
        row[(k + 1) % c] = -v
        rows.append(row)
    return torch.tensor(rows, dtype=DTYPE)


def torchvision_cases():
    cases = []

    def case(name, seed, shape, p, soft=False, logits=None, targets=None):
        g = gen(seed)
        x = randn(g, *shape, scale=2.5) if logits is None else logits
        if targets is None:
            targets = uniform(g, 0.0, 1.0, *x.shape) if soft else torch.randint(
                0, 2, x.shape, generator=g).to(DTYPE)
        p = dict(op="sigmoid_focal_loss", **p)
        out_shape = list(x.shape) if p["reduction"] == "none" else []
        grad_out = upstream(g, out_shape)
        out, grad = torchvision_peer(x, targets, grad_out, p)
        tensors = {"logits": x, "targets": targets, "grad_out": grad_out}
        cases.append((name, p, tensors, out, grad))

    default = dict(alpha=0.25, gamma=2.0)
    case("tv_default_none", 1, (6, 5), dict(default, reduction="none"))
    case("tv_soft_mean_rank3", 2, (2, 3, 4), dict(default, reduction="mean"), soft=True)
    case("tv_no_alpha_gamma1.5_sum", 3, (17,), dict(alpha=-1.0, gamma=1.5, reduction="sum"))
    case("tv_gamma0_mean", 4, (4, 6), dict(alpha=0.5, gamma=0.0, reduction="mean"))
    case("tv_gamma3_soft_none", 5, (3, 7), dict(alpha=0.75, gamma=3.0, reduction="none"), soft=True)
    x = extreme_rows(4)
    t = torch.zeros_like(x)
    t[:, 0] = 1.0
    t[::3, 2] = 0.3  # a few soft targets at extreme logits too
    case("tv_extreme_none", 6, None, dict(default, reduction="none"), logits=x, targets=t)
    case("tv_extreme_sum", 7, None, dict(alpha=-1.0, gamma=1.5, reduction="sum"), logits=x, targets=t)
    empty = torch.zeros(0, 5, dtype=DTYPE)
    case("tv_empty_mean", 8, None, dict(default, reduction="mean"), logits=empty, targets=empty)
    case("tv_empty_sum", 9, None, dict(default, reduction="sum"), logits=empty, targets=empty)
    return cases


def mmcv_cases():
    cases = []

    def case(name, seed, n, c, p, weighted=False, logits=None, labels=None):
        g = gen(seed)
        x = randn(g, n, c, scale=3.0) if logits is None else logits
        n, c = x.shape
        if labels is None:
            labels = randint(g, c + 1, n)  # C = background
        weight = uniform(g, 0.5, 2.0, c) if weighted else None
        p = dict(op="sigmoid_focal_loss_mmcv", **p)
        out_shape = [n, c] if p["reduction"] == "none" else []
        grad_out = upstream(g, out_shape)
        out, grad = mmcv_peer(x, labels, weight, grad_out, p)
        tensors = {"logits": x, "labels": labels, "grad_out": grad_out}
        if weight is not None:
            tensors["weight"] = weight
        cases.append((name, p, tensors, out, grad))

    default = dict(alpha=0.25, gamma=2.0)
    case("mmcv_default_mean", 11, 9, 5, dict(default, reduction="mean"),
         labels=torch.tensor([0, 5, 4, 2, 5, 1, 3, 5, 0]))
    case("mmcv_weight_none", 12, 8, 4, dict(default, reduction="none"), weighted=True,
         labels=torch.tensor([4, 0, 3, 4, 1, 2, 4, 3]))
    case("mmcv_weight_gamma1.5_sum", 13, 10, 6, dict(alpha=0.4, gamma=1.5, reduction="sum"), weighted=True)
    case("mmcv_all_background_mean", 14, 7, 4, dict(default, reduction="mean"), weighted=True,
         labels=torch.full((7,), 4))
    x = extreme_rows(4)
    labels = torch.tensor([k % 5 for k in range(x.shape[0])])  # 4 = background
    case("mmcv_extreme_none", 15, None, None, dict(default, reduction="none"), weighted=True,
         logits=x, labels=labels)
    case("mmcv_extreme_mean", 16, None, None, dict(alpha=0.6, gamma=0.5, reduction="mean"), logits=x,
         labels=labels)
    case("mmcv_empty_mean", 17, None, None, dict(default, reduction="mean"),
         logits=torch.zeros(0, 4, dtype=DTYPE), labels=torch.zeros(0, dtype=torch.int64))
    return cases


def quality_cases():
    cases = []

    def case(name, seed, n, c, p, weighted=False, logits=None, labels=None, scores=None):
        g = gen(seed)
        x = randn(g, n, c, scale=2.5) if logits is None else logits
        n, c = x.shape
        if labels is None:
            labels = randint(g, c + 1, n)
        if scores is None:
            # IoU targets of positives; background rows carry 0 as in GFL's assigner output.
            scores = torch.where(labels < c, uniform(g, 0.05, 0.95, n), torch.zeros(n, dtype=DTYPE))
        weight = uniform(g, 0.5, 2.0, n) if weighted else None
        p = dict(op="quality_focal_loss", **p)
        out_shape = [n] if p["reduction"] == "none" else []
        grad_out = upstream(g, out_shape)
        out, grad = quality_peer(x, labels, scores, weight, grad_out, p)
        tensors = {"logits": x, "labels": labels, "scores": scores, "grad_out": grad_out}
        if weight is not None:
            tensors["weight"] = weight
        cases.append((name, p, tensors, out, grad))

    case("qfl_default_mean", 21, 10, 6, dict(beta=2.0, reduction="mean"),
         labels=torch.tensor([0, 6, 5, 2, 6, 1, 3, 6, 0, 4]))
    case("qfl_weight_none", 22, 8, 5, dict(beta=2.0, reduction="none"), weighted=True)
    case("qfl_avg_factor_mean", 23, 9, 4, dict(beta=2.0, reduction="mean", avg_factor=3.7), weighted=True)
    case("qfl_beta1.5_sum", 24, 7, 5, dict(beta=1.5, reduction="sum"))
    case("qfl_all_background_mean", 25, 6, 3, dict(beta=2.0, reduction="mean"), labels=torch.full((6,), 3))
    x = extreme_rows(4)
    m = x.shape[0]
    labels = torch.tensor([k % 5 for k in range(m)])
    scores = torch.tensor([[1.0, 0.0, 0.6, 0.25, 0.9][k % 5] for k in range(m)], dtype=DTYPE)
    scores = torch.where(labels < 4, scores, torch.zeros(m, dtype=DTYPE))
    case("qfl_extreme_none", 26, None, None, dict(beta=2.0, reduction="none"), weighted=True,
         logits=x, labels=labels, scores=scores)
    case("qfl_extreme_beta1.5_mean", 27, None, None, dict(beta=1.5, reduction="mean", avg_factor=5.0),
         logits=x, labels=labels, scores=scores)
    empty = dict(logits=torch.zeros(0, 4, dtype=DTYPE), labels=torch.zeros(0, dtype=torch.int64),
                 scores=torch.zeros(0, dtype=DTYPE))
    case("qfl_empty_mean", 28, None, None, dict(beta=2.0, reduction="mean"), **empty)
    case("qfl_empty_avg_factor", 29, None, None, dict(beta=2.0, reduction="mean", avg_factor=0.0), **empty)
    return cases


# ----------------------------------------------------------------------------------------------


def metadata_of(p):
    m = {"op": p["op"], "reduction": p["reduction"]}
    for key in ("alpha", "gamma", "beta", "avg_factor"):
        if key in p:
            m[key] = repr(float(p[key]))
    return m


def main():
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    cases = torchvision_cases() + mmcv_cases() + quality_cases()
    names = [case[0] for case in cases]
    assert len(set(names)) == len(names)
    for stale in OUT_DIR.glob("*.safetensors"):
        if stale.stem not in names:
            stale.unlink()
    total = 0
    for name, p, tensors, out, grad in cases:
        empty_mean = tensors["logits"].numel() == 0 and p["reduction"] == "mean" and "avg_factor" not in p
        assert bool(torch.isnan(out).all()) if empty_mean else bool(torch.isfinite(out).all()), (name, out)
        assert bool(torch.isfinite(grad).all()), name
        tensors = dict(tensors)
        tensors["expected.output"] = out
        tensors["expected.grad_logits"] = grad
        tensors = {k: t.contiguous() for k, t in tensors.items()}
        meta = metadata_of(p)
        path = OUT_DIR / f"{name}.safetensors"
        write_safetensors(path, tensors, meta)
        check_roundtrip(path, tensors, meta)
        size = path.stat().st_size
        total += size
        assert size < MAX_FILE_BYTES, f"{path} is {size} bytes"
        print(f"{name:28s} logits={list(tensors['logits'].shape)} {size:6d} B")
    assert total < MAX_TOTAL_BYTES, f"fixtures total {total} bytes"
    print(f"{len(cases)} files, {total} bytes in {OUT_DIR}")


if __name__ == "__main__":
    sys.exit(main())
