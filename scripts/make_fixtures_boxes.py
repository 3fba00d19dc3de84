"""Golden box-op fixtures for the Rust peer-fixture tests (tests/boxes.rs).

What it makes: one file per case, ``tests/fixtures/boxes/<case>.safetensors``, holding the float64
inputs and the peer's results as ``expected.<result>`` (``expected.output``, ``expected.grad_pred``,
``expected.grad_distances``). The op and its parameters are in the safetensors ``__metadata__`` map, with
the keys documented in src/parity/boxes.rs (op, mode, diou_overlap, eps, max_shape, max_dist,
reduction, avg_factor, loss_weight).

The peer. mmdet is NOT installed (it pulls mmcv's compiled ops); the functions detkd reproduces are
pure PyTorch, so their semantics are written out below with the same PyTorch primitives, so that
autograd routes gradients exactly as it does through mmdet's code:

* ``bbox_overlaps(bboxes1, bboxes2, mode, is_aligned, eps)`` (mmdet ``iou2d_calculator.py``; the LD
  repository's copy adds ``mode='diou'``). Per pair, with ``A1, A2`` the signed areas:
  ``lt = torch.max(b1[:2], b2[:2])``, ``rb = torch.min(b1[2:], b2[2:])``,
  ``I = prod((rb - lt).clamp(min=0))``, ``U = torch.max(A1 + A2 - I, eps)``, ``IoU = I / U``;
  GIoU: ``C = torch.max(prod((max(b1[2:], b2[2:]) - min(b1[:2], b2[:2])).clamp(min=0)), eps)``,
  ``GIoU = IoU - (C - U) / C``; DIoU: ``rho2 = ((x1' + x2') - (x1 + x2))**2 / 4 + (same in y)``,
  ``c2 = torch.max(cw**2 + ch**2, eps)``, ``DIoU = IoU - rho2 / c2``. The LD repository's diou mode
  takes ``U = A1`` (its ``union = area1`` branch): ``diou_overlap='first_area'``.
* ``GIoULoss(eps=1e-6, reduction, loss_weight)`` = ``loss_weight * weight_reduce_loss(1 - GIoU,
  weight, reduction, avg_factor)`` with mmdet's ``weight_reduce_loss``: ``loss * weight``, then
  none / ``mean()`` / ``sum()``, or ``sum() / (avg_factor + float32 eps)`` for mean with an
  avg_factor (sum with an avg_factor raises). The shortcut of ``GIoULoss.forward`` for weights that are
  all <= 0 is not part of this peer (detkd documents that it does not reproduce it).
* ``distance2bbox(points, distance, max_shape)``: ``(px - l, py - t, px + r, py + b)``, then for a
  2-D input the in-place ``bboxes[:, 0::2].clamp_(0, W)``, ``bboxes[:, 1::2].clamp_(0, H)``.
* ``bbox2distance(points, bbox, max_dis, eps=0.1)``: ``(px - x1, py - y1, x2 - px, y2 - py)``, each
  ``clamp(min=0, max=max_dis - eps)`` when ``max_dis`` is given.

Gradients (GIoU loss w.r.t. pred, distance2bbox w.r.t. the distances) come from autograd with the
fixture's ``grad_out``. The tie conventions detkd documents are PyTorch's; the script asserts them
(``torch.max``/``torch.min`` of two tensors split the gradient in half at a tie; ``clamp`` passes no
gradient at its bounds), so a peer version that changed them would stop here instead of writing
different fixtures. It also cross-checks its IoU/GIoU/DIoU against torchvision.ops on non-degenerate
pairs.

Every coordinate, distance, weight and upstream gradient is a multiple of 1/4 below 64, so the inputs
are exact in f16 and bf16 as well: the half-precision runs see the same ties as the float64 peer.

How to run, from the repository root, with the pinned peer environment::

    .venv-peer/bin/python scripts/make_fixtures_boxes.py

Inputs come from a torch.Generator with a fixed per-case seed and everything is computed in float64 on
the CPU, so a rerun rewrites byte-identical files.
"""

import json
import struct
from pathlib import Path

import torch
import torchvision
from safetensors import safe_open

OUT_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "boxes"
DTYPE = torch.float64
F32_EPS = torch.finfo(torch.float32).eps
MAX_FILE_BYTES = 32 * 1024
MAX_TOTAL_BYTES = 300 * 1024


# ----------------------------------------------------------------------------------------------
# Serialisation


def write_safetensors(path, tensors, metadata):
    """Write a safetensors file deterministically: metadata first, then tensors by name."""
    header = {"__metadata__": {k: metadata[k] for k in sorted(metadata)}}
    chunks, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous()
        assert t.dtype == DTYPE, (name, t.dtype)
        data = t.numpy().astype("<f8", copy=False).tobytes()
        header[name] = {"dtype": "F64", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
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
            assert torch.equal(got.nan_to_num(), t.nan_to_num()) and torch.equal(got.isnan(), t.isnan()), (path, name)


# ----------------------------------------------------------------------------------------------
# The peer: mmdet's box functions written with the same PyTorch primitives


def bbox_overlaps(b1, b2, mode="iou", is_aligned=False, eps=1e-6, diou_overlap="union"):
    if not is_aligned:
        b1, b2 = b1[:, None, :], b2[None, :, :]
    area1 = (b1[..., 2] - b1[..., 0]) * (b1[..., 3] - b1[..., 1])
    area2 = (b2[..., 2] - b2[..., 0]) * (b2[..., 3] - b2[..., 1])
    lt = torch.max(b1[..., :2], b2[..., :2])
    rb = torch.min(b1[..., 2:], b2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    if mode == "diou" and diou_overlap == "first_area":
        union = area1
    else:
        union = area1 + area2 - overlap
    eps_t = union.new_tensor([eps])
    union = torch.max(union, eps_t)
    ious = overlap / union
    if mode == "iou":
        return ious
    enclose_wh = (torch.max(b1[..., 2:], b2[..., 2:]) - torch.min(b1[..., :2], b2[..., :2])).clamp(min=0)
    if mode == "giou":
        enclose = torch.max(enclose_wh[..., 0] * enclose_wh[..., 1], eps_t)
        return ious - (enclose - union) / enclose
    assert mode == "diou", mode
    rho2 = ((b2[..., 0] + b2[..., 2]) - (b1[..., 0] + b1[..., 2])) ** 2 / 4 + (
        (b2[..., 1] + b2[..., 3]) - (b1[..., 1] + b1[..., 3])) ** 2 / 4
    c2 = torch.max(enclose_wh[..., 0] ** 2 + enclose_wh[..., 1] ** 2, eps_t)
    return ious - rho2 / c2


def weight_reduce_loss(loss, weight, reduction, avg_factor):
    if weight is not None:
        loss = loss * weight
    if avg_factor is None:
        return {"none": lambda l: l, "mean": torch.mean, "sum": torch.sum}[reduction](loss)
    if reduction == "mean":
        return loss.sum() / (avg_factor + F32_EPS)
    assert reduction == "none", "avg_factor can not be used with reduction='sum'"
    return loss


def giou_loss(pred, target, weight, reduction, avg_factor, loss_weight, eps):
    loss = 1 - bbox_overlaps(pred, target, mode="giou", is_aligned=True, eps=eps)
    return loss_weight * weight_reduce_loss(loss, weight, reduction, avg_factor)


def distance2bbox(points, distance, max_shape=None):
    x1 = points[..., 0] - distance[..., 0]
    y1 = points[..., 1] - distance[..., 1]
    x2 = points[..., 0] + distance[..., 2]
    y2 = points[..., 1] + distance[..., 3]
    bboxes = torch.stack([x1, y1, x2, y2], -1)
    if max_shape is not None:
        bboxes[:, 0::2].clamp_(min=0, max=max_shape[1])
        bboxes[:, 1::2].clamp_(min=0, max=max_shape[0])
    return bboxes


def bbox2distance(points, bbox, max_dis=None, eps=0.1):
    sides = [points[:, 0] - bbox[:, 0], points[:, 1] - bbox[:, 1], bbox[:, 2] - points[:, 0],
             bbox[:, 3] - points[:, 1]]
    if max_dis is not None:
        sides = [s.clamp(min=0, max=max_dis - eps) for s in sides]
    return torch.stack(sides, -1)


def grad_of(output, x, grad_out):
    if x.numel() == 0:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad((output * grad_out).sum(), x)
    return g


# ----------------------------------------------------------------------------------------------
# Self-checks of the conventions the fixtures encode


def check_conventions():
    a = torch.tensor([1.0, 2.0, 3.0], dtype=DTYPE, requires_grad=True)
    b = torch.tensor([1.0, 1.0, 4.0], dtype=DTYPE, requires_grad=True)
    ga, gb = torch.autograd.grad(torch.max(a, b).sum(), (a, b))
    assert ga.tolist() == [0.5, 1.0, 0.0] and gb.tolist() == [0.5, 0.0, 1.0], "torch.max tie split"
    ga, gb = torch.autograd.grad(torch.min(a, b).sum(), (a, b))
    assert ga.tolist() == [0.5, 0.0, 1.0] and gb.tolist() == [0.5, 1.0, 0.0], "torch.min tie split"
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0, 3.0], dtype=DTYPE, requires_grad=True)
    (g,) = torch.autograd.grad(x.clamp(min=0, max=2).sum(), x)
    assert g.tolist() == [0.0, 0.0, 1.0, 0.0, 0.0], f"clamp passes the gradient only strictly inside: {g}"
    (g,) = torch.autograd.grad(x.clamp(min=0).sum(), x)
    assert g.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0], f"clamp(min=0) at 0: {g}"


def check_against_torchvision(a, b):
    """IoU/GIoU/DIoU agree with torchvision.ops where no eps clamp is active (proper, non-empty boxes)."""
    proper = lambda t: ((t[:, 2] > t[:, 0]) & (t[:, 3] > t[:, 1])).all()
    assert proper(a) and proper(b)
    ops = torchvision.ops
    assert torch.allclose(bbox_overlaps(a, b, "iou"), ops.box_iou(a, b), rtol=1e-12, atol=1e-12)
    assert torch.allclose(bbox_overlaps(a, b, "giou"), ops.generalized_box_iou(a, b), rtol=1e-12, atol=1e-12)
    # torchvision adds eps = 1e-7 to the diagonal instead of clamping: close, not equal.
    assert torch.allclose(bbox_overlaps(a, b, "diou"), ops.distance_box_iou(a, b), rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Inputs: multiples of 1/4 below 64 (exact in f16 and bf16)


def quarters(gen, shape, lo, hi):
    """Uniform multiples of 1/4 in [lo, hi)."""
    steps = int((hi - lo) * 4)
    return lo + torch.randint(0, steps, shape, generator=gen).to(DTYPE) / 4


def random_boxes(gen, n, lo=0.0, hi=48.0, min_side=0.25, max_side=16.0):
    x1y1 = quarters(gen, (n, 2), lo, hi)
    wh = quarters(gen, (n, 2), min_side, max_side)
    return torch.cat([x1y1, x1y1 + wh], 1)


def t(rows):
    return torch.tensor(rows, dtype=DTYPE).reshape(-1, 4)


# (pred, target) pairs covering every branch: identical, nested both ways, disjoint, touching at an edge
# and at a corner, shared sides, zero-width / zero-area predictions, identical points (U = C = 0 ->
# eps), collinear zero-width boxes, a reversed prediction (negative area, U -> eps).
SPECIAL_PRED = t([
    [4, 4, 20, 16], [8, 6, 14, 12], [2, 2, 30, 30], [0, 0, 4, 4], [0, 0, 8, 8], [0, 0, 4, 4],
    [2, 3, 10, 9.5], [5, 5, 5, 15], [6, 6, 6, 6], [7, 7, 7, 7], [3, 0, 3, 10], [1.25, 2.5, 17.75, 9],
    [10, 2, 4, 8], [0, 0, 10, 10],
])
SPECIAL_TARGET = t([
    [4, 4, 20, 16], [4, 4, 20, 16], [6, 8, 12, 20], [10, 12, 18, 20], [8, 2, 16, 6], [4, 4, 8, 8],
    [2, 5, 12, 11], [2, 2, 12, 12], [2, 2, 12, 12], [7, 7, 7, 7], [3, 5, 3, 15], [5.5, 0.75, 21, 13.25],
    [3, 3, 9, 9], [0, 0, 5, 10],
])


def pair_set(gen, n_random):
    pred = torch.cat([SPECIAL_PRED, random_boxes(gen, n_random)])
    target = torch.cat([SPECIAL_TARGET, random_boxes(gen, n_random)])
    return pred, target


# ----------------------------------------------------------------------------------------------
# Cases


def meta(op, **kw):
    m = {"op": op}
    m.update({k: str(v) for k, v in kw.items() if v is not None})
    return m


def giou_case(seed, n_random, reduction, weighted=False, avg_factor=None, loss_weight=1.0, eps=1e-6,
              empty=False, small=False):
    gen = torch.Generator().manual_seed(seed)
    if empty:
        pred, target = torch.zeros(0, 4, dtype=DTYPE), torch.zeros(0, 4, dtype=DTYPE)
    elif small:
        # Boxes of 1/4 .. 1 px with eps = 0.25: the eps clamps of U and C are active in many rows.
        pred = random_boxes(gen, n_random, 0.0, 4.0, 0.25, 1.0)
        target = random_boxes(gen, n_random, 0.0, 4.0, 0.25, 1.0)
    else:
        pred, target = pair_set(gen, n_random)
    n = pred.shape[0]
    weight = quarters(gen, (n,), 0.0, 3.0) if weighted else None
    if reduction == "none":
        grad_out = quarters(gen, (n,), -2.0, 2.0)
    else:
        grad_out = torch.tensor(0.75, dtype=DTYPE)
    x = pred.clone().requires_grad_(True)
    out = giou_loss(x, target, weight, reduction, avg_factor, loss_weight, eps)
    tensors = {"pred": pred, "target": target, "grad_out": grad_out, "expected.output": out.detach(),
               "expected.grad_pred": grad_of(out, x, grad_out)}
    if weight is not None:
        tensors["weight"] = weight
    return tensors, meta("giou_loss", reduction=reduction, avg_factor=avg_factor, loss_weight=loss_weight, eps=eps)


def overlap_case(seed, op, mode, diou_overlap="union", shape=None, eps=1e-6):
    gen = torch.Generator().manual_seed(seed)
    if op == "overlaps_aligned":
        a, b = pair_set(gen, 18)
    elif shape is not None:
        a, b = random_boxes(gen, shape[0]), random_boxes(gen, shape[1])
    else:
        # ATSS-like: a grid of square anchors (stride 8, side 16 at image scale 4..60) against GT boxes,
        # one GT identical to an anchor, one inside an anchor, one degenerate (zero width).
        cx, cy = torch.meshgrid(torch.arange(4.0, 60.0, 8.0, dtype=DTYPE), torch.arange(4.0, 44.0, 8.0, dtype=DTYPE),
                                indexing="xy")
        centres = torch.stack([cx.reshape(-1), cy.reshape(-1)], 1)
        a = torch.cat([centres - 8, centres + 8], 1).clamp(min=0, max=63.75)
        b = torch.cat([t([[-4 + 8, -4 + 8, 12 + 8, 12 + 8], [10, 14, 13.5, 17.25], [30, 5, 30, 25]]),
                       random_boxes(gen, 4)])
    out = bbox_overlaps(a, b, mode, is_aligned=(op == "overlaps_aligned"), eps=eps, diou_overlap=diou_overlap)
    return {"a": a, "b": b, "expected.output": out}, meta(op, mode=mode, diou_overlap=diou_overlap, eps=eps)


def distance2bbox_case(seed, n, max_shape=None, empty=False):
    gen = torch.Generator().manual_seed(seed)
    if empty:
        points, dist = torch.zeros(0, 2, dtype=DTYPE), torch.zeros(0, 4, dtype=DTYPE)
    else:
        points = quarters(gen, (n, 2), 0.0, 48.0)
        dist = quarters(gen, (n, 4), 0.0, 16.0)
        if max_shape is not None:
            # Coordinates landing exactly on 0, W and H, and some just inside.
            points = torch.cat([points, torch.tensor([[4.0, 3.0], [20.0, 10.0]], dtype=DTYPE)])
            dist = torch.cat([dist, torch.tensor([[4.0, 3.0, 44.0, 37.0], [19.75, 9.75, 27.75, 29.75]], dtype=DTYPE)])
    grad_out = quarters(gen, tuple(dist.shape), -2.0, 2.0)
    x = dist.clone().requires_grad_(True)
    out = distance2bbox(points, x, max_shape)
    if max_shape is not None and not empty:
        h, w = max_shape
        on_edge = (out == 0).any() and (out[:, 0::2] == w).any() and (out[:, 1::2] == h).any()
        assert on_edge and ((out > 0) & (out < min(h, w))).any()
    tensors = {"points": points, "distances": dist, "grad_out": grad_out, "expected.output": out.detach(),
               "expected.grad_distances": grad_of(out, x, grad_out)}
    shape = None if max_shape is None else f"{max_shape[0]},{max_shape[1]}"
    return tensors, meta("distance2bbox", max_shape=shape)


def bbox2distance_case(seed, n, max_dist=None, eps=0.1, empty=False):
    gen = torch.Generator().manual_seed(seed)
    if empty:
        points, boxes = torch.zeros(0, 2, dtype=DTYPE), torch.zeros(0, 4, dtype=DTYPE)
    else:
        boxes = random_boxes(gen, n, 0.0, 40.0, 1.0, 23.0)
        # Mostly inside the box, some outside it (negative distances, clamped to 0 with max_dist).
        points = quarters(gen, (n, 2), 0.0, 60.0)
    out = bbox2distance(points, boxes, max_dist, eps)
    if max_dist is not None and not empty:
        assert (out == 0).any() and (out == max_dist - eps).any()
    return {"points": points, "boxes": boxes, "expected.output": out}, meta(
        "bbox2distance", max_dist=max_dist, eps=eps)


CASES = {
    "giou_mixed_mean": lambda: giou_case(1, 22, "mean"),
    "giou_gfl_weighted_avg_factor": lambda: giou_case(2, 22, "mean", weighted=True, avg_factor=5.5, loss_weight=2.0),
    "giou_weighted_none": lambda: giou_case(3, 22, "none", weighted=True, avg_factor=5.5),
    "giou_weighted_sum": lambda: giou_case(4, 22, "sum", weighted=True, loss_weight=0.5),
    "giou_small_boxes_eps": lambda: giou_case(5, 40, "none", eps=0.25, small=True),
    "giou_empty_mean": lambda: giou_case(6, 0, "mean", empty=True),
    "giou_empty_avg_factor": lambda: giou_case(7, 0, "mean", avg_factor=2.0, empty=True),
    "iou_aligned": lambda: overlap_case(10, "overlaps_aligned", "iou"),
    "giou_aligned": lambda: overlap_case(11, "overlaps_aligned", "giou"),
    "diou_aligned": lambda: overlap_case(12, "overlaps_aligned", "diou"),
    "diou_aligned_first_area": lambda: overlap_case(13, "overlaps_aligned", "diou", "first_area"),
    "box_iou_atss": lambda: overlap_case(14, "box_overlaps", "iou"),
    "box_giou_atss": lambda: overlap_case(15, "box_overlaps", "giou"),
    "box_diou_atss": lambda: overlap_case(16, "box_overlaps", "diou"),
    "box_diou_first_area": lambda: overlap_case(17, "box_overlaps", "diou", "first_area"),
    "box_iou_random": lambda: overlap_case(18, "box_overlaps", "iou", shape=(37, 41)),
    "box_iou_empty_rows": lambda: overlap_case(19, "box_overlaps", "iou", shape=(0, 3)),
    "box_diou_empty_cols": lambda: overlap_case(20, "box_overlaps", "diou", shape=(3, 0)),
    "distance2bbox_plain": lambda: distance2bbox_case(30, 30),
    "distance2bbox_max_shape": lambda: distance2bbox_case(31, 30, max_shape=(40.0, 48.0)),
    "distance2bbox_empty": lambda: distance2bbox_case(32, 0, empty=True),
    "bbox2distance_gfl": lambda: bbox2distance_case(40, 40, max_dist=16.0),
    "bbox2distance_plain": lambda: bbox2distance_case(41, 20),
    "bbox2distance_empty": lambda: bbox2distance_case(42, 0, max_dist=16.0, empty=True),
}


def main():
    torch.use_deterministic_algorithms(True)
    check_conventions()
    gen = torch.Generator().manual_seed(99)
    check_against_torchvision(random_boxes(gen, 25), random_boxes(gen, 31))
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for old in OUT_DIR.glob("*.safetensors"):
        if old.stem not in CASES:
            old.unlink()
    total = 0
    for name, make in CASES.items():
        tensors, metadata = make()
        path = OUT_DIR / f"{name}.safetensors"
        write_safetensors(path, tensors, metadata)
        check_roundtrip(path, tensors, metadata)
        size = path.stat().st_size
        assert size <= MAX_FILE_BYTES, (name, size)
        total += size
        print(f"{name}: {size} bytes, {metadata}")
    assert total <= MAX_TOTAL_BYTES, total
    print(f"{len(CASES)} files, {total} bytes; torch {torch.__version__}, torchvision {torchvision.__version__}")


if __name__ == "__main__":
    main()
