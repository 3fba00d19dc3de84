"""Golden fixtures for the distribution losses (KD KL, DFL, Integral), for the Rust peer-fixture tests.

The peer is mmdetection's code, but mmdetection is NOT installed here (it pins old torch/mmcv versions).
Its formulas are therefore written out below in plain PyTorch, following shared/spec/methods.md §4, §6.6,
§6.8 and kernels.md B4 line by line:

- ``knowledge_distillation_kl_div_loss`` (mmdet/models/losses/kd_loss.py):
  ``F.kl_div(F.log_softmax(pred / T, dim=1), softmax(soft_label / T).detach(), reduction='none')
  .mean(1) * (T * T)``, wrapped by ``KnowledgeDistillationKLDivLoss`` as
  ``loss_weight * weight_reduce_loss(loss, weight, reduction, avg_factor)``;
- ``distribution_focal_loss`` (mmdet/models/losses/gfocal_loss.py): cross-entropy at ``label.long()``
  and ``label.long() + 1`` with linear weights;
- ``Integral`` (mmdet/models/dense_heads/gfl_head.py): ``softmax(x) @ linspace(0, reg_max, reg_max + 1)``;
- ``weight_reduce_loss`` (mmdet/models/losses/utils.py), with the ``avg_factor + eps`` of mmdet >= 2.x.

The gradients come from torch.autograd through those compositions (teacher logits detached, DFL
targets constant), so they check our closed-form backward passes independently.

What it makes: one file per case, ``tests/fixtures/dist_kl/<case>.safetensors``, holding float64
inputs and the expected results ``expected.output`` and ``expected.grad_<input>``. The op and its
configuration are in the safetensors ``__metadata__`` (keys documented in src/parity/dist_kl.rs):
op (kd_kl_div | distribution_focal_loss | integral), temperature, normalizer, reduction, avg_factor,
loss_weight, reg_max.

How to run, from the repository root, with the pinned peer environment::

    python -m venv .venv-peer
    .venv-peer/bin/pip install -r scripts/requirements-fixtures.txt
    .venv-peer/bin/python scripts/make_fixtures_dist_kl.py

Every input comes from a torch.Generator with a fixed per-case seed and everything is computed in
float64 on the CPU, so a rerun rewrites byte-identical files (sorted metadata and tensor names, see
``write_safetensors``); each written file is read back with the safetensors library and compared.
"""

import json
import struct
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open

OUT_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "dist_kl"
DTYPE = torch.float64
MAX_FILE_BYTES = 64 * 1024
MAX_TOTAL_BYTES = 400 * 1024


# ----------------------------------------------------------------------------------------------
# Serialisation (same format as scripts/make_fixtures.py)


def write_safetensors(path, tensors, metadata):
    """Write a safetensors file deterministically: metadata first, then tensors by name."""
    header = {"__metadata__": {k: metadata[k] for k in sorted(metadata)}}
    chunks = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name]
        assert t.dtype == DTYPE, (name, t.dtype)
        data = t.detach().contiguous().numpy().astype("<f8", copy=False).tobytes()
        header[name] = {
            "dtype": "F64",
            "shape": list(t.shape),
            "data_offsets": [offset, offset + len(data)],
        }
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
            assert got.dtype == DTYPE and got.shape == t.shape, (path, name)
            assert torch.equal(got, t) or (t.numel() == 0), (path, name)


# ----------------------------------------------------------------------------------------------
# mmdet's formulas, written in torch


def weight_reduce_loss(loss, weight=None, reduction="mean", avg_factor=None):
    """mmdet.models.losses.utils.weight_reduce_loss."""
    if weight is not None:
        loss = loss * weight
    if avg_factor is None:
        if reduction == "mean":
            loss = loss.mean()
        elif reduction == "sum":
            loss = loss.sum()
    else:
        if reduction == "mean":
            eps = torch.finfo(torch.float32).eps
            loss = loss.sum() / (avg_factor + eps)
        elif reduction != "none":
            raise ValueError('avg_factor can not be used with reduction="sum"')
    return loss


def knowledge_distillation_kl_div_loss(pred, soft_label, T, normalizer="bins_mean", detach_target=True):
    """mmdet.models.losses.kd_loss.knowledge_distillation_kl_div_loss (before weighting/reduction).

    ``normalizer='bins_sum'`` replaces mmdet's ``.mean(1)`` by ``.sum(1)`` (the textbook KL, detkd's
    ``KlNormalizer::SumOverBins``); everything else is mmdet's text.
    """
    assert pred.size() == soft_label.size()
    target = F.softmax(soft_label / T, dim=1)
    if detach_target:
        target = target.detach()
    kl = F.kl_div(F.log_softmax(pred / T, dim=1), target, reduction="none")
    per_row = kl.mean(1) if normalizer == "bins_mean" else kl.sum(1)
    return per_row * (T * T)


def distribution_focal_loss(pred, label):
    """mmdet.models.losses.gfocal_loss.distribution_focal_loss (before weighting/reduction)."""
    dis_left = label.long()
    dis_right = dis_left + 1
    weight_left = dis_right.float() - label  # float32 integers, promoted to float64 by the f64 label
    weight_right = label - dis_left.float()
    loss = (
        F.cross_entropy(pred, dis_left, reduction="none") * weight_left
        + F.cross_entropy(pred, dis_right, reduction="none") * weight_right
    )
    return loss


def integral(x, reg_max):
    """mmdet's GFL ``Integral.forward``, reshaped back to the input's leading dimensions."""
    project = torch.linspace(0, reg_max, reg_max + 1, dtype=x.dtype)
    lead = x.shape[:-1]
    x = F.softmax(x.reshape(-1, reg_max + 1), dim=1)
    return F.linear(x, project.type_as(x)).reshape(lead)


# ----------------------------------------------------------------------------------------------
# Cases


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(g, *shape, scale=1.0):
    return torch.randn(shape, generator=g, dtype=DTYPE) * scale


def uniform(g, lo, hi, *shape):
    return lo + (hi - lo) * torch.rand(shape, generator=g, dtype=DTYPE)


def upstream(g, p, rows):
    """grad_out: one value per row for reduction none, else a scalar."""
    return randn(g, rows) if p.get("reduction", "mean") == "none" else randn(g)


def kl_case(name, seed, rows, bins, p, logits, weighted=False):
    g = gen(seed)
    p = dict(op="kd_kl_div", **p)
    if logits == "normal":
        student = randn(g, rows, bins, scale=1.5 * p["temperature"])
        teacher = randn(g, rows, bins, scale=1.5 * p["temperature"])
    else:  # large: uniform in [-50, 50]
        student = uniform(g, -50.0, 50.0, rows, bins)
        teacher = uniform(g, -50.0, 50.0, rows, bins)
    weight = uniform(g, 0.05, 1.0, rows) if weighted else None
    grad_out = upstream(g, p, rows)

    s = student.clone().requires_grad_(True)
    per_row = knowledge_distillation_kl_div_loss(s, teacher, p["temperature"], p.get("normalizer", "bins_mean"))
    out = p.get("loss_weight", 1.0) * weight_reduce_loss(per_row, weight, p.get("reduction", "mean"), p.get("avg_factor"))
    if rows > 0:
        (grad,) = torch.autograd.grad(out, s, grad_out)
    else:
        grad = torch.zeros_like(student)
    tensors = {"student": student, "teacher": teacher, "grad_out": grad_out,
               "expected.output": out.detach(), "expected.grad_student": grad}
    if weight is not None:
        tensors["weight"] = weight
    return name, tensors, p


def dfl_case(name, seed, rows, p, logits, labels=None, weighted=False):
    g = gen(seed)
    p = dict(op="distribution_focal_loss", **p)
    n = p["reg_max"]
    if logits == "normal":
        pred = randn(g, rows, n + 1, scale=3.0)
    else:
        pred = uniform(g, -50.0, 50.0, rows, n + 1)
    if labels is None:
        # GFL clamps targets to [0, reg_max - 0.1]
        label = uniform(g, 0.0, n - 0.1, rows)
    else:
        label = torch.tensor(labels, dtype=DTYPE)
        assert label.shape == (rows,)
    assert bool(((label >= 0) & (label < n)).all())
    # Every target must stay below n once rounded to f32 (the Rust f32 path checks that).
    assert bool((label.float() < n).all()), label
    weight = uniform(g, 0.05, 1.0, rows) if weighted else None
    grad_out = upstream(g, p, rows)

    z = pred.clone().requires_grad_(True)
    per_row = distribution_focal_loss(z, label)
    out = p.get("loss_weight", 1.0) * weight_reduce_loss(per_row, weight, p.get("reduction", "mean"), p.get("avg_factor"))
    if rows > 0:
        (grad,) = torch.autograd.grad(out, z, grad_out)
    else:
        grad = torch.zeros_like(pred)
    tensors = {"pred": pred, "label": label, "grad_out": grad_out,
               "expected.output": out.detach(), "expected.grad_pred": grad}
    if weight is not None:
        tensors["weight"] = weight
    return name, tensors, p


def integral_case(name, seed, shape, reg_max, logits):
    g = gen(seed)
    p = dict(op="integral", reg_max=reg_max)
    assert shape[-1] == reg_max + 1
    x = randn(g, *shape, scale=3.0) if logits == "normal" else uniform(g, -50.0, 50.0, *shape)
    grad_out = randn(g, *shape[:-1])
    z = x.clone().requires_grad_(True)
    out = integral(z, reg_max)
    if x.numel() > 0:
        (grad,) = torch.autograd.grad(out, z, grad_out)
    else:
        grad = torch.zeros_like(x)
    tensors = {"logits": x, "grad_out": grad_out, "expected.output": out.detach(), "expected.grad_logits": grad}
    return name, tensors, p


def build_cases():
    ld = dict(temperature=10.0)
    cases = [
        # mmdet's KnowledgeDistillationKLDivLoss defaults on 6 anchors x 4 sides x 17 bins.
        kl_case("kl_ld_mean", 201, 24, 17, dict(ld, reduction="mean"), "normal"),
        # LDHead: weight = max class score per positive (x4 sides), avg_factor = 4, loss_weight 0.25.
        kl_case("kl_ld_weighted_avg_factor", 202, 20, 17,
                dict(ld, reduction="mean", avg_factor=4.0, loss_weight=0.25), "normal", weighted=True),
        kl_case("kl_none_weighted", 203, 16, 17, dict(ld, reduction="none"), "normal", weighted=True),
        kl_case("kl_sum_bins_sum_t1", 204, 12, 17,
                dict(temperature=1.0, normalizer="bins_sum", reduction="sum"), "normal"),
        kl_case("kl_large_logits_t10", 205, 16, 17, dict(ld, reduction="mean"), "large"),
        kl_case("kl_large_logits_t1", 206, 16, 17, dict(temperature=1.0, reduction="sum"), "large", weighted=True),
        # LD repo's class-logit KD: 80 classes, T = 2.
        kl_case("kl_class_logits_t2", 207, 6, 80, dict(temperature=2.0, reduction="mean"), "normal"),
        kl_case("kl_empty", 208, 0, 17, dict(ld, reduction="mean", avg_factor=1.0), "normal"),
        kl_case("kl_empty_none", 209, 0, 17, dict(ld, reduction="none"), "normal"),

        dfl_case("dfl_gfl_mean", 301, 24, dict(reg_max=16, reduction="mean"), "normal"),
        # GFLHead: weight = max class score, avg_factor = 4 * sum(weight), loss_weight 0.25.
        dfl_case("dfl_weighted_avg_factor", 302, 20,
                 dict(reg_max=16, reduction="mean", avg_factor=7.25, loss_weight=0.25), "normal", weighted=True),
        dfl_case("dfl_near_last_bin", 303, 12, dict(reg_max=16, reduction="none"), "normal",
                 labels=[15.9, 15.99, 15.999, 15.9999, 15.99999, 0.0, 1.0, 7.0, 0.5, 8.25, 14.999, 15.5]),
        dfl_case("dfl_large_logits", 304, 16, dict(reg_max=16, reduction="sum"), "large", weighted=True),
        dfl_case("dfl_reg_max_7", 305, 10, dict(reg_max=7, reduction="mean"), "normal"),
        dfl_case("dfl_empty", 306, 0, dict(reg_max=16, reduction="mean", avg_factor=1.0), "normal"),

        integral_case("integral_gfl", 401, (6, 4, 17), 16, "normal"),
        integral_case("integral_large_logits", 402, (10, 17), 16, "large"),
        integral_case("integral_reg_max_7", 403, (5, 8), 7, "normal"),
        integral_case("integral_empty", 404, (0, 17), 16, "normal"),
    ]
    return cases


def metadata_of(p):
    m = {}
    for key, value in p.items():
        if isinstance(value, float):
            m[key] = repr(value)
        else:
            m[key] = str(value)
    return m


def main():
    print(f"torch {torch.__version__}")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    cases = build_cases()
    names = [case[0] for case in cases]
    assert len(set(names)) == len(names)
    for stale in OUT_DIR.glob("*.safetensors"):
        if stale.stem not in names:
            stale.unlink()
    total = 0
    for name, tensors, p in cases:
        for key, t in tensors.items():
            assert bool(torch.isfinite(t).all()), (name, key)
        tensors = {key: t.detach().contiguous() for key, t in tensors.items()}
        meta = metadata_of(p)
        path = OUT_DIR / f"{name}.safetensors"
        write_safetensors(path, tensors, meta)
        check_roundtrip(path, tensors, meta)
        size = path.stat().st_size
        total += size
        assert size < MAX_FILE_BYTES, f"{path} is {size} bytes"
        shape = tuple(tensors.get("student", tensors.get("pred", tensors.get("logits"))).shape)
        out = tensors["expected.output"]
        summary = f"{out.item():.6g}" if out.dim() == 0 else f"shape {tuple(out.shape)}"
        print(f"{name:28s} {str(shape):14s} {size:6d} B  output {summary}")
    assert total < MAX_TOTAL_BYTES, f"fixtures total {total} bytes"
    print(f"{len(cases)} files, {total} bytes in {OUT_DIR}")


if __name__ == "__main__":
    sys.exit(main())
