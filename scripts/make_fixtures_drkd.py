"""Golden fixtures for DRKD (src/distill/drkd.rs), from PyTorch, for tests/distill_drkd.rs.

What it makes: ``tests/fixtures/methods/drkd_<case>.safetensors``, each a ``detkd parity`` input file for
the op ``drkd`` (see src/parity/drkd.rs for the keys) plus PyTorch's results under ``expected.<name>``: the
total ``loss``, every ``term.<name>``, ``grad.student.fpn.<l>``, ``grad.param.<name>`` (autograd) and
``buffer.<name>`` (the BatchNorm buffers after the training-mode forward). ``check.filter.<level>.<image>.
<side>.weight`` / ``.bias`` hold the relation filters this script drew, for the Rust test to compare with
its own generator.

The peer computation follows the official code (nizhenliang/Dual-Relation-Knowledge-Distillation,
``mmdet/models/detectors/two_stage.py`` and ``GloRe.py``), written here in PyTorch, float64 on the CPU,
with the modules under the names the Rust store uses (``distill.drkd.`` + the official attribute names):

- pixel term: per FPN level a GloRe unit on each side (1x1 ``conv_state`` / ``conv_proj``,
  ``V @ Bp^T`` without 1/L unless ``glore_normalize``, ``gcn.conv1`` Conv1d over the nodes plus the
  residual, ReLU, ``gcn.conv2`` Conv1d without bias, ``V' @ Bp``, ``conv_extend`` without bias,
  ``BatchNorm2d(eps=1e-4)`` in training mode, residual), a 1x1 adapter on the student side, and
  ``torch.dist(a, b, p=2)`` summed over levels;
- instance terms, on the ``relation_levels`` finest levels, per image with boxes:
  ``torchvision.ops.roi_align(F, [gt], output_size=3, spatial_scale=W_l / (W_0 * s_0))`` (sampling -1,
  aligned False), the relation module (theta/phi/g ``Linear(d, d/2)``, ``W`` ``Linear(d/2, d)``,
  ``K = softmax(x Q^T + q)`` from a fresh ``Linear(d, n)``, ``P = softmax(F * K)``, ``z = x + W(P g)``),
  ``torch.dist`` of the adapted student side to the teacher side;
- weights 1e-3, 0.004, 0.0024; the ``rms`` / ``mean_square`` variants divide by sqrt(numel) / use MSE;
  ``instance_source = first`` pools every image's boxes from image 0, as the official
  ``roi_align(x, boxes=[gt_bboxes[i]], ...)`` does with a batch ``x``.

The relation filters are PyTorch's default ``nn.Linear(d, n)`` initialisation, U(-1/sqrt(d), 1/sqrt(d)),
drawn from SplitMix64 as src/distill/drkd.rs documents (``relation_filter_seed``, weight row-major then
bias, each value rounded to float32) so that both sides use the same filter.

How to run, from the repository root, with the pinned peer environment::

    .venv-peer/bin/python scripts/make_fixtures_drkd.py

Inputs and module weights come from a torch.Generator with a fixed seed per case; files are written with
sorted metadata and tensor names, so a rerun rewrites byte-identical files.
"""

import json
import math
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from torchvision.ops import roi_align

OUT_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "methods"
DTYPE = torch.float64
MAX_TOTAL_BYTES = 256 * 1024
MASK = (1 << 64) - 1


def write_safetensors(path, tensors, metadata):
    """Write a safetensors file deterministically: metadata first, then tensors by name."""
    header = {"__metadata__": {k: metadata[k] for k in sorted(metadata)}}
    chunks, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous()
        if t.dtype == torch.float64:
            code, data = "F64", t.numpy().astype("<f8", copy=False).tobytes()
        elif t.dtype == torch.int64:
            code, data = "I64", t.numpy().astype("<i8", copy=False).tobytes()
        else:
            raise TypeError(f"{name}: {t.dtype}")
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(chunks))
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == metadata and sorted(f.keys()) == sorted(tensors), path


# ----------------------------------------------------------------------------------------------
# The relation filter's generator (detkd::testing::Rng = SplitMix64)


class SplitMix64:
    def __init__(self, seed):
        self.state = seed & MASK

    def next_u64(self):
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def uniform(self, lo, hi):
        unit = (self.next_u64() >> 11) / float(1 << 53)
        return lo + (hi - lo) * unit


def filter_seed(step_seed, level, image, side):
    return (step_seed * 0x9E3779B97F4A7C15 + (level << 32) + 2 * image + side) & MASK


def relation_filter(seed, rows, dim):
    rng = SplitMix64(seed)
    bound = 1.0 / math.sqrt(dim)
    values = np.array([rng.uniform(-bound, bound) for _ in range(rows * dim + rows)], dtype=np.float32)
    values = torch.from_numpy(values.astype(np.float64))
    return values[: rows * dim].reshape(rows, dim), values[rows * dim:]


# ----------------------------------------------------------------------------------------------
# The modules (names as in the official code)


class Graph(nn.Module):
    def __init__(self, states, nodes):
        super().__init__()
        self.conv1 = nn.Conv1d(nodes, nodes, kernel_size=1)
        self.conv2 = nn.Conv1d(states, states, kernel_size=1, bias=False)

    def forward(self, z):  # z: [B, S, N]
        h = self.conv1(z.transpose(1, 2)).transpose(1, 2) + z
        return self.conv2(F.relu(h))


class Glore(nn.Module):
    def __init__(self, channels, mid, eps, momentum, normalize):
        super().__init__()
        self.states, self.nodes, self.normalize = 2 * mid, mid, normalize
        self.conv_state = nn.Conv2d(channels, self.states, 1)
        self.conv_proj = nn.Conv2d(channels, self.nodes, 1)
        self.gcn = Graph(self.states, self.nodes)
        self.conv_extend = nn.Conv2d(self.states, channels, 1, bias=False)
        self.blocker = nn.BatchNorm2d(channels, eps=eps, momentum=momentum)

    def forward(self, x):
        b, _, h, w = x.shape
        v = self.conv_state(x).reshape(b, self.states, h * w)
        bp = self.conv_proj(x).reshape(b, self.nodes, h * w)
        z = v @ bp.transpose(1, 2)
        if self.normalize:
            z = z / (h * w)
        y = self.gcn(z) @ bp
        return x + self.blocker(self.conv_extend(y.reshape(b, self.states, h, w)))


class Relation(nn.Module):
    def __init__(self, dim):
        super().__init__()
        inner = dim // 2
        self.theta = nn.Sequential(nn.Linear(dim, inner))
        self.phi = nn.Sequential(nn.Linear(dim, inner))
        self.g = nn.Sequential(nn.Linear(dim, inner))
        self.W = nn.Linear(inner, dim)

    def forward(self, x, filt):
        n = x.shape[0]
        flat = x.reshape(n, -1)
        f = self.theta(flat) @ self.phi(flat).T
        if filt is not None:
            f = f * torch.softmax(flat @ filt[0].T + filt[1], dim=-1)
        y = torch.softmax(f, dim=-1) @ self.g(flat)
        return (self.W(y) + flat).reshape(x.shape)


def conv1x1(cin, cout):
    return nn.Conv2d(cin, cout, 1)


class Drkd(nn.Module):
    def __init__(self, cs, ct, levels, cfg):
        super().__init__()
        eps, mom, norm = cfg["bn_eps"], cfg["bn_momentum"], cfg["glore_normalize"]
        div = cfg["glore_mid_divisors"]
        r = cfg["relation_levels"]
        if cfg["pixel_weight"]:
            self.student_non_local = nn.ModuleList(
                [Glore(cs, max(cs // div[l], 1), eps, mom, norm) for l in range(levels)])
            self.teacher_non_local = nn.ModuleList(
                [Glore(ct, max(ct // div[l], 1), eps, mom, norm) for l in range(levels)])
            self.non_local_adaptation = nn.ModuleList([conv1x1(cs, ct) for _ in range(levels)])
        if cfg["relation_weight"]:
            self.student_relation = nn.ModuleList([Relation(cs * 9) for _ in range(r)])
            self.teacher_relation = nn.ModuleList([Relation(ct * 9) for _ in range(r)])
            self.relation_adaptation = nn.ModuleList([conv1x1(cs, ct) for _ in range(r)])
        if cfg["foreground_weight"]:
            self.for_adaptation = nn.ModuleList([conv1x1(cs, ct) for _ in range(r)])


def distance(a, b, kind):
    d = a - b
    if kind == "frobenius":
        return torch.dist(a, b, p=2)
    if kind == "rms":
        return torch.dist(a, b, p=2) / math.sqrt(d.numel())
    return (d * d).mean()


def drkd_terms(model, student, teacher, boxes, strides, step_seed, cfg, filters_out):
    kind = cfg["distance"]
    terms = {}
    if cfg["pixel_weight"]:
        total = 0.0
        for l, (s, t) in enumerate(zip(student, teacher)):
            gs = model.student_non_local[l](s)
            gt = model.teacher_non_local[l](t)
            total = total + distance(model.non_local_adaptation[l](gs), gt, kind)
        terms["loss_drkd_pixel"] = cfg["pixel_weight"] * total
    rel = fore = torch.zeros((), dtype=DTYPE)
    for r in range(cfg["relation_levels"]):
        scale = student[r].shape[-1] / (student[0].shape[-1] * strides[0])
        for image, gt_boxes in enumerate(boxes):
            if not gt_boxes:
                continue
            rois = [torch.tensor(gt_boxes, dtype=DTYPE)]
            # "first": the official call roi_align(x, boxes=[gt_i]) reads every image's boxes on image 0.
            src = 0 if cfg["instance_source"] == "first" else image
            rs = roi_align(student[r][src:src + 1], rois, output_size=3, spatial_scale=scale)
            rt = roi_align(teacher[r][src:src + 1], rois, output_size=3, spatial_scale=scale)
            if cfg["foreground_weight"]:
                fore = fore + distance(model.for_adaptation[r](rs), rt, kind)
            if cfg["relation_weight"]:
                n = len(gt_boxes)
                filters = []
                for side, x in [(0, rs), (1, rt)]:
                    if cfg["relation_filter"] == "disabled":
                        filters.append(None)
                        continue
                    q, qb = relation_filter(filter_seed(step_seed, r, image, side), n, x[0].numel())
                    filters_out[f"check.filter.{r}.{image}.{side}.weight"] = q
                    filters_out[f"check.filter.{r}.{image}.{side}.bias"] = qb
                    filters.append((q, qb))
                zs = model.student_relation[r](rs, filters[0])
                zt = model.teacher_relation[r](rt, filters[1])
                rel = rel + distance(model.relation_adaptation[r](zs), zt, kind)
    if cfg["relation_weight"]:
        terms["loss_drkd_relation"] = cfg["relation_weight"] * rel
    if cfg["foreground_weight"]:
        terms["loss_drkd_foreground"] = cfg["foreground_weight"] * fore
    return terms


def make_case(name, seed, sizes, strides, cs, ct, boxes, step_seed, cfg):
    g = torch.Generator().manual_seed(seed)
    batch = len(boxes)
    student = [torch.randn(batch, cs, h, w, generator=g, dtype=DTYPE).requires_grad_() for h, w in sizes]
    teacher = [torch.randn(batch, ct, h, w, generator=g, dtype=DTYPE) for h, w in sizes]
    model = Drkd(cs, ct, len(sizes), cfg).to(DTYPE)
    params = {}
    with torch.no_grad():
        for pname, p in model.named_parameters():
            bound = 1.0 / math.sqrt(max(p.shape[1:].numel(), 1)) if p.dim() > 1 else 0.5
            p.copy_((torch.rand(p.shape, generator=g, dtype=DTYPE) * 2 - 1) * bound)
            if pname.endswith("blocker.weight"):
                p.add_(1.0)  # BatchNorm γ around 1
        for bname, buf in model.named_buffers():
            if bname.endswith("running_mean"):
                buf.copy_(torch.randn(buf.shape, generator=g, dtype=DTYPE) * 0.1)
            elif bname.endswith("running_var"):
                buf.copy_(1.0 + torch.rand(buf.shape, generator=g, dtype=DTYPE))
        state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    filters = {}
    terms = drkd_terms(model, student, teacher, boxes, strides, step_seed, cfg, filters)
    loss = sum(terms.values())
    named = list(model.named_parameters())
    grads = torch.autograd.grad(loss, student + [p for _, p in named], allow_unused=True)

    tensors = dict(filters)
    for l, (s, t) in enumerate(zip(student, teacher)):
        tensors[f"student.fpn.{l}"] = s.detach()
        tensors[f"teacher.fpn.{l}"] = t
    rows = [[float(i), *b] for i, bs in enumerate(boxes) for b in bs]
    if rows:
        tensors["boxes"] = torch.tensor(rows, dtype=DTYPE)
    for k, v in state.items():
        tensors[f"param.distill.drkd.{k}"] = v
    tensors["expected.loss"] = loss.detach()
    for k, v in terms.items():
        tensors[f"expected.term.{k}"] = v.detach()
    for l, s in enumerate(student):
        # A level no term reads gets a zero gradient (the Rust runner returns zeros for it).
        tensors[f"expected.grad.student.fpn.{l}"] = grads[l] if grads[l] is not None else torch.zeros_like(s)
    for (pname, _), gr in zip(named, grads[len(student):]):
        if gr is not None:
            tensors[f"expected.grad.param.distill.drkd.{pname}"] = gr
    if cfg["pixel_weight"]:
        for bname, buf in model.named_buffers():
            tensors[f"expected.buffer.distill.drkd.{bname}"] = buf.detach().clone()
    metadata = {"op": "drkd", "fpn_strides": ",".join(str(s) for s in strides), "step_seed": str(step_seed)}
    for k, v in cfg.items():
        if isinstance(v, bool):
            metadata[k] = str(v).lower()
        elif isinstance(v, list):
            metadata[k] = ",".join(str(x) for x in v)
        else:
            metadata[k] = str(v)
    path = OUT_DIR / f"drkd_{name}.safetensors"
    write_safetensors(path, tensors, metadata)
    print(f"{path.name}: loss {loss.item():.6g}, terms {[(k, round(v.item(), 6)) for k, v in terms.items()]}")
    return path.stat().st_size


DEFAULT = {
    "pixel_weight": 1e-3, "relation_weight": 0.004, "foreground_weight": 0.0024, "distance": "frobenius",
    "glore_mid_divisors": [2, 2, 1], "glore_normalize": False, "bn_eps": 1e-4, "bn_momentum": 0.1,
    "relation_levels": 2, "relation_filter": "random", "instance_source": "own",
}
SIZES = [(8, 8), (4, 4), (2, 2)]
STRIDES = [8.0, 16.0, 32.0]


def main():
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    total = 0
    # Official composition on 64x64 images, P3-P5, student width 2, teacher width 3.
    total += make_case(
        "default", 1, SIZES, STRIDES, 2, 3,
        [[[3.3, 5.1, 21.7, 30.2], [30.4, 12.6, 62.1, 50.3], [8.2, 40.6, 19.9, 57.3]],
         [[10.3, 9.8, 50.2, 41.1]]],
        12345, DEFAULT)
    # Normalised variants, one image without boxes, a step seed above 2^63, one relation level, and the
    # official code's pooling of every image's boxes from the first image.
    total += make_case(
        "rms_normalize", 2, SIZES, STRIDES, 2, 3,
        [[[3.3, 5.1, 21.7, 30.2], [30.4, 12.6, 62.1, 50.3]], [], [[0.5, 1.5, 63.2, 62.7], [20.1, 22.2, 30.3, 44.4]]],
        2**63 + 17, dict(DEFAULT, distance="rms", glore_normalize=True, relation_levels=1, instance_source="first"))
    # Instance terms only (no GloRe modules), MSE distance, no relation filter, one relation level.
    total += make_case(
        "instance_mse", 3, SIZES, STRIDES, 2, 3,
        [[[3.3, 5.1, 21.7, 30.2], [30.4, 12.6, 62.1, 50.3], [8.2, 40.6, 19.9, 57.3]]],
        7, dict(DEFAULT, pixel_weight=0.0, distance="mean_square", relation_filter="disabled", relation_levels=1))
    print(f"total {total} bytes")
    assert total <= MAX_TOTAL_BYTES, total


if __name__ == "__main__":
    main()
