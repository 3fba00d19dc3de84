"""Golden fixtures for Dsig (src/distill/dsig.rs), from PyTorch, for tests/distill_dsig.rs.

What it makes: ``tests/fixtures/methods/dsig_<case>.safetensors``, each a ``detkd parity`` input file for the
op ``dsig`` (see src/parity/dsig.rs for the keys) plus PyTorch's results under ``expected.<name>``: the
total ``loss``, every ``term.<name>``, ``grad.student.fpn.<l>`` and ``grad.param.<name>`` (autograd).

The peer computation is Dsig's official composition (dvlab-research/Dsig, projects/Distillation:
``rcnn_kd.py`` and ``utils/matrix_utils.py``), written here in plain PyTorch, float64 on the CPU, on a
one-stage detector's FPN as the Rust module documents it:

- the student's FPN maps pass a 1x1 ``F.conv2d`` adapter to the teacher's width (when the widths differ);
- node features: ``torchvision.ops.roi_align(..., output_size=7, sampling_ratio=0, aligned=True)`` (=
  detectron2's ROIAlignV2) of each box on the level its rule picks (mmdet ``floor(log2(sqrt(wh)/56 +
  1e-6))``, detectron2 ``floor(4 + log2(sqrt(wh)/224 + 1e-8)) - log2(stride_0)`` or a custom canonical
  size), flattened;
- ``L_feat = sum_l F.mse_loss(A_l(S_l), T_l)``; per image ``L_nfg = F.mse_loss(v_s_fg, v_t_fg)``,
  ``L_nbg = alpha * n_f / n_b * F.mse_loss(v_s_bg, v_t_bg)`` (all sampled bg);
- mining: ``softplus(max_c z_t)`` at the anchor ``(floor(cx/s + 1/2), floor(cy/s + 1/2))`` (clamped) of
  the node's level, kept when ``>= theta``; ``L_edge = 0.5 * F.mse_loss(A_t, A_s)`` with
  ``A = F.normalize(V) @ F.normalize(V).T`` over ``V = cat(fg, bg[mined])``;
- terms summed over images and weighted; images without nodes add nothing.

How to run, from the repository root, with the pinned peer environment::

    .venv-peer/bin/python scripts/make_fixtures_dsig.py

Inputs come from a torch.Generator with a fixed seed per case and files are written with sorted
metadata and tensor names, so a rerun rewrites byte-identical files. Teacher logits are kept at least
0.25 away from the mining threshold, so the mined set cannot flip on rounding.
"""

import json
import math
import struct
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torchvision.ops import roi_align

OUT_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "methods"
DTYPE = torch.float64
MAX_TOTAL_BYTES = 200 * 1024


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


def level_of(box, rule, strides):
    size = math.sqrt(max((box[2] - box[0]) * (box[3] - box[1]), 0.0))
    if rule == "mmdet":
        level = math.floor(math.log2(size / 56.0 + 1e-6))
    elif rule == "detectron2":
        level = math.floor(4.0 + math.log2(size / 224.0 + 1e-8)) - round(math.log2(strides[0]))
    else:
        level = math.floor(math.log2(size / float(rule.split(":")[1]) + 1e-6))
    return min(max(level, 0), len(strides) - 1)


def pool(maps, boxes, rule, strides):
    """[K, C*49] node features, each box pooled from its level (rows in box order)."""
    rows = []
    for image, box in boxes:
        level = level_of(box, rule, strides)
        roi = torch.tensor([[float(image), *box]], dtype=DTYPE)
        rows.append(roi_align(maps[level], roi, output_size=7, spatial_scale=1.0 / strides[level],
                              sampling_ratio=0, aligned=True).flatten(1))
    return torch.cat(rows, 0)


def mined(cls, boxes, rule, strides, threshold):
    keep = []
    for j, (image, box) in enumerate(boxes):
        level = level_of(box, rule, strides)
        s, (h, w) = strides[level], cls[level].shape[2:]
        x = min(max(math.floor(0.5 * (box[0] + box[2]) / s + 0.5), 0), w - 1)
        y = min(max(math.floor(0.5 * (box[1] + box[3]) / s + 0.5), 0), h - 1)
        z = cls[level][image, :, y, x].max()
        if F.softplus(z).item() >= threshold:
            keep.append(j)
    return keep


def edge_loss(vs, vt):
    a_s = F.normalize(vs) @ F.normalize(vs).T
    a_t = F.normalize(vt) @ F.normalize(vt).T
    return 0.5 * F.mse_loss(a_t, a_s)


def dsig(student, teacher, cls, adapters, nodes, cfg, strides):
    """The weighted terms, in the Rust module's order; zero-weight terms are left out."""
    adapted = [F.conv2d(s, *adapters[l]) if adapters else s for l, s in enumerate(student)]
    terms = {}
    if cfg["feat_weight"]:
        terms["loss_dsig_feat"] = cfg["feat_weight"] * sum(
            F.mse_loss(a, t) for a, t in zip(adapted, teacher))
    fg_sum = bg_sum = edge_sum = torch.zeros((), dtype=DTYPE)
    for image, (fg, bg) in enumerate(nodes):
        nf, nb = len(fg), len(bg)
        if nf + nb == 0:
            continue
        boxes = [(image, b) for b in fg + bg]
        vs, vt = pool(adapted, boxes, cfg["levels"], strides), pool(teacher, boxes, cfg["levels"], strides)
        if nf:
            fg_sum = fg_sum + F.mse_loss(vs[:nf], vt[:nf])
        if nb and nf:
            bg_sum = bg_sum + cfg["bg_weight_alpha"] * nf / nb * F.mse_loss(vs[nf:], vt[nf:])
        keep = list(range(nf))
        if cfg["bg_mining"]:
            keep += [nf + j for j in mined(cls, [(image, b) for b in bg], cfg["levels"], strides,
                                           cfg["bg_mining_threshold"])]
        if keep:
            edge_sum = edge_sum + edge_loss(vs[keep], vt[keep])
    for name, key, value in [("loss_dsig_node_fg", "node_fg_weight", fg_sum),
                             ("loss_dsig_node_bg", "node_bg_weight", bg_sum),
                             ("loss_dsig_edge", "edge_weight", edge_sum)]:
        if cfg[key]:
            terms[name] = cfg[key] * value
    return terms


def away_from_threshold(z, threshold):
    """Moves logits at least 0.25 away from the one whose softplus is the mining threshold."""
    z_thr = math.log(math.expm1(threshold))
    d = z - z_thr
    return torch.where(d >= 0, z_thr + d + 0.25, z_thr + d - 0.25)


def make_case(name, seed, sizes, strides, cs, ct, classes, nodes, cfg):
    g = torch.Generator().manual_seed(seed)
    batch = len(nodes)
    student = [torch.randn(batch, cs, h, w, generator=g, dtype=DTYPE).requires_grad_() for h, w in sizes]
    teacher = [torch.randn(batch, ct, h, w, generator=g, dtype=DTYPE) for h, w in sizes]
    cls = [away_from_threshold(1.5 * torch.randn(batch, classes, h, w, generator=g, dtype=DTYPE) - 1.5,
                               cfg["bg_mining_threshold"]) for h, w in sizes]
    adapters = []
    if cs != ct:
        bound = 1.0 / math.sqrt(cs)
        for _ in sizes:
            w = ((torch.rand(ct, cs, 1, 1, generator=g, dtype=DTYPE) * 2 - 1) * bound).requires_grad_()
            b = ((torch.rand(ct, generator=g, dtype=DTYPE) * 2 - 1) * bound).requires_grad_()
            adapters.append((w, b))
    terms = dsig(student, teacher, cls, adapters, nodes, cfg, strides)
    loss = sum(terms.values())
    params = [p for pair in adapters for p in pair]
    grads = torch.autograd.grad(loss, student + params, allow_unused=True)

    tensors = {}
    for l, (s, t, c) in enumerate(zip(student, teacher, cls)):
        tensors[f"student.fpn.{l}"] = s.detach()
        tensors[f"teacher.fpn.{l}"] = t
        if cfg["bg_mining"]:
            tensors[f"teacher.cls.{l}"] = c
    for key, which in [("nodes.fg", 0), ("nodes.bg", 1)]:
        rows = [[float(i), *b] for i, n in enumerate(nodes) for b in n[which]]
        if rows:
            tensors[key] = torch.tensor(rows, dtype=DTYPE)
    param_names = []
    for l, (w, b) in enumerate(adapters):
        param_names += [f"distill.dsig.adapter.{l}.weight", f"distill.dsig.adapter.{l}.bias"]
        tensors[f"param.distill.dsig.adapter.{l}.weight"] = w.detach()
        tensors[f"param.distill.dsig.adapter.{l}.bias"] = b.detach()
    tensors["expected.loss"] = loss.detach()
    for k, v in terms.items():
        tensors[f"expected.term.{k}"] = v.detach()
    for l in range(len(student)):
        tensors[f"expected.grad.student.fpn.{l}"] = grads[l]
    for n, gr in zip(param_names, grads[len(student):]):
        if gr is not None:
            tensors[f"expected.grad.param.{n}"] = gr
    metadata = {"op": "dsig", "fpn_strides": ",".join(str(s) for s in strides)}
    for k, v in cfg.items():
        metadata[k] = str(v).lower() if isinstance(v, bool) else str(v)
    path = OUT_DIR / f"dsig_{name}.safetensors"
    write_safetensors(path, tensors, metadata)
    print(f"{path.name}: loss {loss.item():.6g}, terms {[(k, round(v.item(), 6)) for k, v in terms.items()]}")
    return path.stat().st_size


DEFAULT = {
    "feat_weight": 0.5, "node_fg_weight": 0.5, "node_bg_weight": 0.5, "edge_weight": 2.0,
    "bg_weight_alpha": 7.5, "adaptive_bg_weight": True, "bg_mining": True, "bg_mining_threshold": 0.6,
    "levels": "mmdet",
}


def main():
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    total = 0
    # TinyGFL-like: 64x64 images, P3-P5, student 4 channels, teacher 8 (adapter), mmdet's rule (all on P3).
    total += make_case(
        "default", 1, [(8, 8), (4, 4), (2, 2)], [8.0, 16.0, 32.0], 4, 8, 3,
        [([[3.3, 5.1, 21.7, 30.2], [30.4, 12.6, 62.1, 50.3], [8.2, 40.6, 19.9, 57.3]],
          [[40.2, 1.7, 47.9, 9.4], [1.1, 40.3, 13.6, 60.8], [20.5, 33.3, 55.2, 63.1],
           [50.6, 50.2, 58.3, 61.7], [2.4, 2.2, 9.1, 11.8], [44.4, 30.1, 60.2, 44.9]]),
         ([[10.3, 9.8, 50.2, 41.1], [41.7, 44.2, 59.5, 61.3]],
          [[2.2, 44.1, 18.9, 60.3], [45.7, 3.2, 61.4, 27.6], [5.5, 5.1, 14.3, 19.8], [25.3, 47.7, 38.1, 58.9]])],
        DEFAULT)
    # Canonical size 12 spreads the boxes over P3-P5; an image with fg and no bg, and one without nodes.
    total += make_case(
        "canonical", 2, [(8, 8), (4, 4), (2, 2)], [8.0, 16.0, 32.0], 4, 8, 2,
        [([[3.3, 5.1, 21.7, 30.2], [30.4, 12.6, 62.1, 50.3], [8.2, 40.6, 19.9, 57.3]],
          [[40.2, 1.7, 47.9, 9.4], [1.1, 20.3, 40.6, 60.8], [20.5, 33.3, 55.2, 63.1],
           [50.6, 50.2, 58.3, 61.7], [2.4, 2.2, 9.1, 11.8]]),
         ([[10.3, 9.8, 50.2, 41.1], [0.5, 1.5, 63.2, 62.7]], []),
         ([], [])],
        dict(DEFAULT, levels="canonical:12", bg_weight_alpha=2.5, edge_weight=1.0))
    # RetinaNet variant: equal widths (no adapter), caller's boxes as nodes, no bg, detectron2's rule.
    total += make_case(
        "retinanet", 3, [(16, 16), (8, 8), (4, 4)], [8.0, 16.0, 32.0], 3, 3, 2,
        [([[3.3, 5.1, 41.7, 30.2], [30.4, 12.6, 122.1, 100.3], [8.2, 40.6, 19.9, 57.3], [60.1, 70.2, 90.3, 120.4]], []),
         ([[10.3, 9.8, 50.2, 41.1], [2.0, 3.0, 126.0, 125.0]], [])],
        {"feat_weight": 0.5, "node_fg_weight": 0.5, "node_bg_weight": 0.0, "edge_weight": 1.0,
         "bg_weight_alpha": 7.5, "adaptive_bg_weight": True, "bg_mining": False, "bg_mining_threshold": 0.6,
         "levels": "detectron2"})
    print(f"total {total} bytes")
    assert total <= MAX_TOTAL_BYTES, total


if __name__ == "__main__":
    main()
