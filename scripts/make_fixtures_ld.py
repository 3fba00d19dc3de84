"""Reference values for LD (src/distill/ld.rs) and for the GFL loss LD distils on top of
(src/distill/gfl.rs), for tests/distill_ld.rs.

The peers are the LD repository (HikariTJU/LD: ``mmdet/models/dense_heads/ld_head.py``,
``mmdet/core/bbox/assigners/atss_assigner.py``, ``mmdet/core/bbox/iou_calculators/iou2d_calculator.py``,
``mmdet/models/losses/kd_loss.py``) and mmdetection 2.x (``GFLHead``, ``LDHead``, ``ATSSAssigner``,
``bbox_overlaps``, ``QualityFocalLoss``, ``DistributionFocalLoss``, ``GIoULoss``, ``weight_reduce_loss``).
Neither is installed here (they pin old torch/mmcv versions), so their formulas are written out below in
plain PyTorch, level by level as the heads' ``loss_single`` run them:

- ATSS (``ATSSAssigner.assign``): per level the ``topk`` anchors nearest to the box centre, threshold
  ``mean + std`` (Bessel) of their IoUs, positive if ``IoU >= threshold`` and the anchor centre is inside the
  box by more than 0.01, the box of largest IoU on conflicts;
- the valuable localisation region (LD repository, ``get_vlr_region``): every anchor of the image with
  ``0.25 * threshold <= DIoU < threshold`` for some box, weighted by its largest IoU over those boxes;
  ``DIoU`` is the repository's ``bbox_overlaps(mode='diou')`` (whose overlap term is ``I / area(anchor)``,
  the ``union = area1`` branch) or, for the ``union`` option, the DIoU over the union;
- LD's terms (LD repository ``LDHead.loss_single``): main LD ``KnowledgeDistillationKLDivLoss`` on the box
  logits of the positives weighted by the detached ``max sigmoid`` score with ``avg_factor=4``, VLR LD on
  the region with ``avg_factor=16``, main KD on the class logits of the positives with ``avg_factor`` = the
  level's number of positives;
- GFL's terms (mmdet ``GFLHead.loss_single`` / ``loss``): QFL over all anchors with
  ``avg_factor = max(sum_i max(P_i, 1), 1)`` (``num_total_pos`` counts every image as at least one),
  GIoU (weight 2) and DFL (weight 0.25) at the positives weighted by the detached score, each divided by
  ``max(sum w, 1)`` (``avg_factor.clamp_(min=1)``).

Gradients come from torch.autograd through those compositions (teacher logits, scores, IoU targets and the
region detached as in the official code), so they check detkd's closed-form backward passes independently.

What it makes: ``tests/fixtures/methods/ld_<case>.safetensors`` (op ``ld``) and
``tests/fixtures/methods/ld_gfl_<case>.safetensors`` (op ``gfl_loss``), float64 inputs and the expected
results under ``expected.``; the metadata keys are documented in src/parity/ld.rs. Anchors are square
``anchor_scale * stride`` boxes centred on ``(x * s, y * s)`` (mmdet's ``center_offset=0``); the fixtures use
``anchor_scale = 4`` (GFL's is 8) so that their tiny grids get positives on several levels.

How to run, from the repository root, with the pinned peer environment::

    python -m venv .venv-peer
    .venv-peer/bin/pip install -r scripts/requirements-fixtures.txt
    .venv-peer/bin/python scripts/make_fixtures_ld.py

Every input comes from a torch.Generator with a fixed per-case seed and everything is computed in float64
on the CPU, so a rerun rewrites byte-identical files; each file is read back and compared.
"""

import json
import struct
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open

OUT_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "methods"
DTYPE = torch.float64
EPS32 = torch.finfo(torch.float32).eps
INF = 100000000
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
            assert got.dtype == DTYPE and got.shape == t.shape, (path, name)
            assert torch.equal(got, t) or (t.numel() == 0), (path, name)


# ----------------------------------------------------------------------------------------------
# Geometry: anchors, bbox_overlaps, ATSS, the valuable region


def make_anchors(levels, anchor_scale):
    """AnchorGenerator(ratios=[1], scales_per_octave=1, center_offset=0), flattened level by level."""
    boxes, counts, strides = [], [], []
    for h, w, s in levels:
        half = anchor_scale * s / 2.0
        ys, xs = torch.meshgrid(torch.arange(h, dtype=DTYPE) * s, torch.arange(w, dtype=DTYPE) * s, indexing="ij")
        cx, cy = xs.reshape(-1), ys.reshape(-1)
        boxes.append(torch.stack([cx - half, cy - half, cx + half, cy + half], dim=1))
        counts.append(h * w)
        strides.append(torch.full((h * w,), float(s), dtype=DTYPE))
    return torch.cat(boxes), counts, torch.cat(strides)


def centres(b):
    return torch.stack([(b[:, 0] + b[:, 2]) / 2.0, (b[:, 1] + b[:, 3]) / 2.0], dim=1)


def bbox_overlaps(b1, b2, mode="iou", eps=1e-6, diou_over_union=False):
    """Pairwise ``bbox_overlaps`` of the LD repository (mmdet's plus its ``diou`` mode).

    The repository's ``diou`` takes the ``union = area1`` branch; ``diou_over_union=True`` uses the union
    instead (DIoU as defined), detkd's ``DiouOverlap::Union``.
    """
    area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
    area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
    lt = torch.max(b1[:, None, :2], b2[None, :, :2])
    rb = torch.min(b1[:, None, 2:], b2[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    if mode in ("iou", "giou") or diou_over_union:
        union = area1[:, None] + area2[None, :] - overlap
    else:
        union = area1[:, None]
    union = torch.max(union, union.new_tensor([eps]))
    ious = overlap / union
    if mode == "iou":
        return ious
    assert mode == "diou"
    enclosed_lt = torch.min(b1[:, None, :2], b2[None, :, :2])
    enclosed_rb = torch.max(b1[:, None, 2:], b2[None, :, 2:])
    left = ((b2[None, :, 0] + b2[None, :, 2]) - (b1[:, None, 0] + b1[:, None, 2])) ** 2 / 4
    right = ((b2[None, :, 1] + b2[None, :, 3]) - (b1[:, None, 1] + b1[:, None, 3])) ** 2 / 4
    rho2 = left + right
    enclose_wh = (enclosed_rb - enclosed_lt).clamp(min=0)
    enclose_c = enclose_wh[..., 0] ** 2 + enclose_wh[..., 1] ** 2
    enclose_c = torch.max(enclose_c, enclose_c.new_tensor([eps]))
    return ious - rho2 / enclose_c


def nearest_candidates(anchors, counts, gts, k):
    """Per level, the ``min(k, count)`` anchors whose centres are nearest to each box centre: ``[K, G]``."""
    distances = (centres(anchors)[:, None, :] - centres(gts)[None, :, :]).pow(2).sum(-1).sqrt()
    out, start = [], 0
    for count in counts:
        end = start + count
        _, idx = distances[start:end].topk(min(k, count), dim=0, largest=False)
        out.append(idx + start)
        start = end
    return torch.cat(out, dim=0)


def atss_assign(anchors, counts, gts, topk=9):
    """mmdet ``ATSSAssigner.assign`` (no ignored boxes): 1-based box index per anchor (0 = background) and
    each box's threshold."""
    n, g = anchors.shape[0], gts.shape[0]
    assigned = torch.zeros(n, dtype=torch.long)
    if g == 0:
        return assigned, torch.zeros(0, dtype=DTYPE)
    overlaps = bbox_overlaps(anchors, gts)
    candidates = nearest_candidates(anchors, counts, gts, topk)
    candidate_overlaps = overlaps[candidates, torch.arange(g)]
    thresholds = candidate_overlaps.mean(0) + candidate_overlaps.std(0)
    is_pos = candidate_overlaps >= thresholds[None, :]
    for gt_idx in range(g):
        candidates[:, gt_idx] += gt_idx * n
    cx = centres(anchors)[:, 0].view(1, -1).expand(g, n).contiguous().view(-1)
    cy = centres(anchors)[:, 1].view(1, -1).expand(g, n).contiguous().view(-1)
    flat = candidates.view(-1)
    l_ = cx[flat].view(-1, g) - gts[:, 0]
    t_ = cy[flat].view(-1, g) - gts[:, 1]
    r_ = gts[:, 2] - cx[flat].view(-1, g)
    b_ = gts[:, 3] - cy[flat].view(-1, g)
    is_in = torch.stack([l_, t_, r_, b_], dim=1).min(dim=1)[0] > 0.01
    is_pos = is_pos & is_in
    overlaps_inf = torch.full_like(overlaps, -INF).t().contiguous().view(-1)
    index = flat[is_pos.view(-1)]
    overlaps_inf[index] = overlaps.t().contiguous().view(-1)[index]
    overlaps_inf = overlaps_inf.view(g, -1).t()
    max_overlaps, argmax_overlaps = overlaps_inf.max(dim=1)
    assigned[max_overlaps != -INF] = argmax_overlaps[max_overlaps != -INF] + 1
    return assigned, thresholds


def vlr_region(anchors, counts, gts, topk=9, lower=0.25, diou_over_union=False):
    """The LD repository's ``get_vlr_region``: per anchor its weight (0 outside the region)."""
    n, g = anchors.shape[0], gts.shape[0]
    region = torch.zeros(n, dtype=DTYPE)
    if g == 0:
        return region
    overlaps = bbox_overlaps(anchors, gts)
    diou = bbox_overlaps(anchors, gts, mode="diou", diou_over_union=diou_over_union)
    every = nearest_candidates(anchors, counts, gts, n)  # all anchors of every level
    nearest = nearest_candidates(anchors, counts, gts, topk)
    candidate_overlaps_t = overlaps[nearest, torch.arange(g)]
    thresholds = candidate_overlaps_t.mean(0) + candidate_overlaps_t.std(0)
    t_diou = diou[every, torch.arange(g)]
    is_pos = (t_diou < thresholds[None, :]) & (t_diou >= lower * thresholds[None, :])
    for gt_idx in range(g):
        every[:, gt_idx] += gt_idx * n
    overlaps_inf = torch.full_like(overlaps, -INF).t().contiguous().view(-1)
    index = every.view(-1)[is_pos.view(-1)]
    overlaps_inf[index] = overlaps.t().contiguous().view(-1)[index]
    overlaps_inf = overlaps_inf.view(g, -1).t()
    max_overlaps, _ = overlaps_inf.max(dim=1)
    region[max_overlaps != -INF] = max_overlaps[max_overlaps != -INF] + 0
    return region


# ----------------------------------------------------------------------------------------------
# The losses, written in torch


def weight_reduce_loss(loss, weight, avg_factor):
    """mmdet's ``weight_reduce_loss(reduction='mean', avg_factor=...)``."""
    if weight is not None:
        loss = loss * weight
    return loss.sum() / (avg_factor + EPS32)


def kd_kl_div(pred, soft_label, T):
    """``knowledge_distillation_kl_div_loss`` (kd_loss.py), before weighting and reduction."""
    target = F.softmax(soft_label / T, dim=1).detach()
    return F.kl_div(F.log_softmax(pred / T, dim=1), target, reduction="none").mean(1) * (T * T)


def integral(x, reg_max):
    project = torch.linspace(0, reg_max, reg_max + 1, dtype=x.dtype)
    x = F.softmax(x.reshape(-1, reg_max + 1), dim=1)
    return F.linear(x, project).reshape(-1, 4)


def distance2bbox(points, distance):
    return torch.stack(
        [points[:, 0] - distance[:, 0], points[:, 1] - distance[:, 1],
         points[:, 0] + distance[:, 2], points[:, 1] + distance[:, 3]], dim=-1)


def bbox2distance(points, bbox, max_dis, eps=0.1):
    d = torch.stack([points[:, 0] - bbox[:, 0], points[:, 1] - bbox[:, 1],
                     bbox[:, 2] - points[:, 0], bbox[:, 3] - points[:, 1]], dim=-1)
    return d.clamp(min=0, max=max_dis - eps)


def aligned_overlaps(b1, b2, mode, eps=1e-6):
    """``bbox_overlaps(..., is_aligned=True)``, modes ``iou`` and ``giou``."""
    area1 = (b1[:, 2] - b1[:, 0]) * (b1[:, 3] - b1[:, 1])
    area2 = (b2[:, 2] - b2[:, 0]) * (b2[:, 3] - b2[:, 1])
    lt = torch.max(b1[:, :2], b2[:, :2])
    rb = torch.min(b1[:, 2:], b2[:, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[:, 0] * wh[:, 1]
    union = torch.max(area1 + area2 - overlap, overlap.new_tensor([eps]))
    ious = overlap / union
    if mode == "iou":
        return ious
    enclosed_lt = torch.min(b1[:, :2], b2[:, :2])
    enclosed_rb = torch.max(b1[:, 2:], b2[:, 2:])
    enclose_wh = (enclosed_rb - enclosed_lt).clamp(min=0)
    enclose_area = torch.max(enclose_wh[:, 0] * enclose_wh[:, 1], overlap.new_tensor([eps]))
    return ious - (enclose_area - union) / enclose_area


def quality_focal_loss(pred, label, score, beta=2.0):
    """mmdet's ``quality_focal_loss``, before weighting and reduction."""
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
    return loss.sum(dim=1, keepdim=False)


def distribution_focal_loss(pred, label):
    dis_left = label.long()
    dis_right = dis_left + 1
    weight_left = dis_right.to(DTYPE) - label
    weight_right = label - dis_left.to(DTYPE)
    return (F.cross_entropy(pred, dis_left, reduction="none") * weight_left
            + F.cross_entropy(pred, dis_right, reduction="none") * weight_right)


def gfl_level(anchors, cls_score, bbox_pred, labels, bbox_targets, stride, num_total_samples, reg_max):
    """mmdet ``GFLHead.loss_single`` (QFL weight 1 / beta 2, GIoU weight 2, DFL weight 0.25)."""
    num_classes = cls_score.shape[1]
    cls_score = cls_score.permute(0, 2, 3, 1).reshape(-1, num_classes)
    bbox_pred = bbox_pred.permute(0, 2, 3, 1).reshape(-1, 4 * (reg_max + 1))
    pos_inds = ((labels >= 0) & (labels < num_classes)).nonzero().squeeze(1)
    score = torch.zeros(labels.shape, dtype=DTYPE)
    if len(pos_inds) > 0:
        pos_bbox_targets = bbox_targets[pos_inds]
        pos_bbox_pred = bbox_pred[pos_inds]
        pos_anchor_centers = centres(anchors[pos_inds]) / stride
        weight_targets = cls_score.detach().sigmoid().max(dim=1)[0][pos_inds]
        pos_decode_bbox_pred = distance2bbox(pos_anchor_centers, integral(pos_bbox_pred, reg_max))
        pos_decode_bbox_targets = pos_bbox_targets / stride
        score[pos_inds] = aligned_overlaps(pos_decode_bbox_pred.detach(), pos_decode_bbox_targets, "iou")
        pred_corners = pos_bbox_pred.reshape(-1, reg_max + 1)
        target_corners = bbox2distance(pos_anchor_centers, pos_decode_bbox_targets, reg_max).reshape(-1)
        loss_bbox = 2.0 * weight_reduce_loss(
            1 - aligned_overlaps(pos_decode_bbox_pred, pos_decode_bbox_targets, "giou"), weight_targets, 1.0)
        loss_dfl = 0.25 * weight_reduce_loss(
            distribution_focal_loss(pred_corners, target_corners),
            weight_targets[:, None].expand(-1, 4).reshape(-1), 4.0)
    else:
        loss_bbox = bbox_pred.sum() * 0
        loss_dfl = bbox_pred.sum() * 0
        weight_targets = bbox_pred.new_tensor(0)
    label_weights = torch.ones(labels.shape, dtype=DTYPE)
    loss_cls = 1.0 * weight_reduce_loss(
        quality_focal_loss(cls_score, labels, score), label_weights, num_total_samples)
    return loss_cls, loss_bbox, loss_dfl, weight_targets.sum()


def ld_level(cls_score, bbox_pred, soft_label, soft_targets, labels, vlr, reg_max, cfg):
    """The LD terms of the LD repository's ``LDHead.loss_single``."""
    num_classes = cls_score.shape[1]
    cls_score = cls_score.permute(0, 2, 3, 1).reshape(-1, num_classes)
    bbox_pred = bbox_pred.permute(0, 2, 3, 1).reshape(-1, 4 * (reg_max + 1))
    soft_targets = soft_targets.permute(0, 2, 3, 1).reshape(-1, 4 * (reg_max + 1))
    soft_label = soft_label.permute(0, 2, 3, 1).reshape(-1, num_classes)
    pos_inds = ((labels >= 0) & (labels < num_classes)).nonzero().squeeze(1)
    remain_inds = (vlr > 0).nonzero().squeeze(1)
    zero = bbox_pred.sum() * 0
    loss_ld, loss_kd, loss_ld_vlr = zero, zero, zero
    if len(pos_inds) > 0:
        weight_targets = cls_score.detach().sigmoid().max(dim=1)[0][pos_inds]
        pred_corners = bbox_pred[pos_inds].reshape(-1, reg_max + 1)
        soft_corners = soft_targets[pos_inds].reshape(-1, reg_max + 1)
        loss_ld = cfg["ld_weight"] * weight_reduce_loss(
            kd_kl_div(pred_corners, soft_corners, cfg["ld_temperature"]),
            weight_targets[:, None].expand(-1, 4).reshape(-1), 4.0)
        label_weights = torch.ones(len(pos_inds), dtype=DTYPE)  # train_cfg.pos_weight = -1
        loss_kd = cfg["kd_weight"] * weight_reduce_loss(
            kd_kl_div(cls_score[pos_inds], soft_label[pos_inds], cfg["kd_temperature"]),
            label_weights, pos_inds.shape[0])
    if len(remain_inds) > 0:
        neg_pred_corners = bbox_pred[remain_inds].reshape(-1, reg_max + 1)
        neg_soft_corners = soft_targets[remain_inds].reshape(-1, reg_max + 1)
        remain_targets = vlr[remain_inds]
        loss_ld_vlr = cfg["vlr_weight"] * weight_reduce_loss(
            kd_kl_div(neg_pred_corners, neg_soft_corners, cfg["vlr_temperature"]),
            remain_targets[:, None].expand(-1, 4).reshape(-1), 16.0)
    return loss_ld, loss_ld_vlr, loss_kd


# ----------------------------------------------------------------------------------------------
# Cases


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(g, *shape, scale=1.0):
    return torch.randn(shape, generator=g, dtype=DTYPE) * scale


PRESETS = {
    "ld_repo": dict(ld_weight=0.25, ld_temperature=10.0, vlr_weight=0.25, vlr_temperature=10.0,
                    kd_weight=10.0, kd_temperature=2.0, vlr_lower_ratio=0.25, vlr_overlap="first_area"),
    "mmdet": dict(ld_weight=0.25, ld_temperature=10.0, vlr_weight=0.0, vlr_temperature=10.0,
                  kd_weight=0.0, kd_temperature=2.0, vlr_lower_ratio=0.25, vlr_overlap="first_area"),
}


class Scene:
    """Anchors, ground truth and the ATSS assignment of a batch, flattened as detkd's DenseAssignment."""

    def __init__(self, levels, images, anchor_scale=4.0):
        self.levels = levels
        self.anchors, self.counts, self.strides = make_anchors(levels, anchor_scale)
        self.batch = len(images)
        a = self.anchors.shape[0]
        self.images = [(torch.tensor(b, dtype=DTYPE).reshape(-1, 4), torch.tensor(l, dtype=torch.long))
                       for b, l in images]
        self.assigned, self.thresholds = [], []
        for gts, _ in self.images:
            assigned, thr = atss_assign(self.anchors, self.counts, gts)
            self.assigned.append(assigned)
            self.thresholds.append(thr)
        self.positives = torch.cat([(assigned > 0).nonzero().squeeze(1) + i * a
                                    for i, assigned in enumerate(self.assigned)])
        self.positive_boxes = torch.cat([gts[assigned[assigned > 0] - 1]
                                         for (gts, _), assigned in zip(self.images, self.assigned)]).reshape(-1, 4)
        self.positive_labels = torch.cat([labels[assigned[assigned > 0] - 1]
                                          for (_, labels), assigned in zip(self.images, self.assigned)])

    def per_level(self, per_image):
        """``images_to_levels``: per-image anchor vectors ``[A, ...]`` to per-level batch vectors."""
        out, start = [], 0
        for count in self.counts:
            out.append(torch.cat([v[start:start + count] for v in per_image], dim=0))
            start += count
        return out

    def labels(self, num_classes):
        per_image = []
        for (gts, labels), assigned in zip(self.images, self.assigned):
            lab = torch.full((self.anchors.shape[0],), num_classes, dtype=torch.long)
            lab[assigned > 0] = labels[assigned[assigned > 0] - 1]
            per_image.append(lab)
        return self.per_level(per_image)

    def bbox_targets(self):
        per_image = []
        for (gts, _), assigned in zip(self.images, self.assigned):
            t = torch.zeros_like(self.anchors)
            t[assigned > 0] = gts[assigned[assigned > 0] - 1]
            per_image.append(t)
        return self.per_level(per_image)

    def level_anchors(self):
        return self.per_level([self.anchors] * self.batch)

    def tensors(self):
        t = {
            "anchor_boxes": self.anchors,
            "points": centres(self.anchors),
            "strides": self.strides,
            "positives": self.positives.to(DTYPE),
            "positive_boxes": self.positive_boxes.to(DTYPE),
            "positive_labels": self.positive_labels.to(DTYPE),
        }
        for i, ((gts, labels), thr) in enumerate(zip(self.images, self.thresholds)):
            t[f"gt_boxes.{i}"] = gts
            t[f"gt_labels.{i}"] = labels.to(DTYPE)
            t[f"thresholds.{i}"] = thr
        return t

    def summary(self, num_classes):
        labels = self.labels(num_classes)
        return [int((l < num_classes).sum()) for l in labels]


def head(g, scene, channels, scale, shift=0.0):
    return [randn(g, scene.batch, channels, h, w, scale=scale) + shift for h, w, _ in scene.levels]


def ld_case(name, seed, scene, num_classes, reg_max, preset, overrides=None):
    g = gen(seed)
    cfg = dict(PRESETS[preset], **(overrides or {}))
    bins = reg_max + 1
    s_cls = head(g, scene, num_classes, 2.0)
    s_reg = head(g, scene, 4 * bins, 3.0)
    # The teacher: related to the student but not equal, as a trained teacher would be.
    t_cls = [0.5 * c + randn(g, *c.shape, scale=1.5) for c in s_cls]
    t_reg = [0.5 * r + randn(g, *r.shape, scale=3.0) for r in s_reg]

    leaves = [t.clone().requires_grad_(True) for t in s_cls + s_reg]
    levels = len(scene.levels)
    per_image_vlr = [vlr_region(scene.anchors, scene.counts, gts, lower=cfg["vlr_lower_ratio"],
                                diou_over_union=cfg["vlr_overlap"] == "union")
                     for gts, _ in scene.images]
    vlr = scene.per_level(per_image_vlr)
    labels = scene.labels(num_classes)
    totals = {"loss_ld": 0.0, "loss_ld_vlr": 0.0, "loss_kd": 0.0}
    for l in range(levels):
        ld, vlr_l, kd = ld_level(leaves[l], leaves[levels + l], t_cls[l], t_reg[l], labels[l], vlr[l], reg_max, cfg)
        totals["loss_ld"] = totals["loss_ld"] + ld
        totals["loss_ld_vlr"] = totals["loss_ld_vlr"] + vlr_l
        totals["loss_kd"] = totals["loss_kd"] + kd
    weights = {"loss_ld": cfg["ld_weight"], "loss_ld_vlr": cfg["vlr_weight"], "loss_kd": cfg["kd_weight"]}
    active = [k for k in totals if weights[k] != 0]
    loss = sum(totals[k] for k in active)
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    tensors = scene.tensors()
    for l in range(levels):
        tensors[f"student.cls.{l}"] = s_cls[l]
        tensors[f"student.reg.{l}"] = s_reg[l]
        tensors[f"teacher.cls.{l}"] = t_cls[l]
        tensors[f"teacher.reg.{l}"] = t_reg[l]
    names = [f"cls.{l}" for l in range(levels)] + [f"reg.{l}" for l in range(levels)]
    for leaf, grad, leaf_name in zip(leaves, grads, names):
        tensors[f"expected.grad.student.{leaf_name}"] = torch.zeros_like(leaf) if grad is None else grad
    tensors["expected.loss"] = loss.detach().reshape(())
    for k in active:
        tensors[f"expected.{k}"] = torch.as_tensor(totals[k], dtype=DTYPE).detach().reshape(())
    meta = {"op": "ld", "preset": preset, "reg_max": str(reg_max)}
    for k, v in (overrides or {}).items():
        meta[k] = str(v)
    region = sum(int((v > 0).sum()) for v in per_image_vlr)
    stats = f"positives per level {scene.summary(num_classes)}, region {region}, " + ", ".join(
        f"{k} {float(totals[k].detach() if torch.is_tensor(totals[k]) else totals[k]):.4g}" for k in active)
    return "ld_" + name, tensors, meta, stats


def gfl_case(name, seed, scene, num_classes, reg_max, cls_shift=0.0):
    g = gen(seed)
    bins = reg_max + 1
    cls = head(g, scene, num_classes, 2.0, shift=cls_shift)
    reg = head(g, scene, 4 * bins, 3.0)
    leaves = [t.clone().requires_grad_(True) for t in cls + reg]
    levels = len(scene.levels)
    labels = scene.labels(num_classes)
    targets = scene.bbox_targets()
    anchors = scene.level_anchors()
    num_total_pos = sum(max(int((a > 0).sum()), 1) for a in scene.assigned)
    num_total_samples = max(float(num_total_pos), 1.0)
    qfl, bbox, dfl, avg = 0.0, 0.0, 0.0, 0.0
    for l in range(levels):
        c, b, d, w = gfl_level(anchors[l], leaves[l], leaves[levels + l], labels[l], targets[l],
                               scene.levels[l][2], num_total_samples, reg_max)
        qfl, bbox, dfl, avg = qfl + c, bbox + b, dfl + d, avg + w
    weight_sum = float(avg)
    avg_factor = torch.as_tensor(avg).clamp_(min=1).item()
    terms = {"loss_qfl": qfl, "loss_bbox": bbox / avg_factor, "loss_dfl": dfl / avg_factor}
    tensors = scene.tensors()
    names = [f"cls.{l}" for l in range(levels)] + [f"reg.{l}" for l in range(levels)]
    for l in range(levels):
        tensors[f"cls.{l}"] = cls[l]
        tensors[f"reg.{l}"] = reg[l]
    for term, value in terms.items():
        tensors[f"expected.{term}"] = value.detach().reshape(())
        grads = torch.autograd.grad(value, leaves, retain_graph=True, allow_unused=True)
        for leaf, grad, n in zip(leaves, grads, names):
            tensors[f"expected.grad.{term}.{n}"] = torch.zeros_like(leaf) if grad is None else grad
    meta = {"op": "gfl_loss", "reg_max": str(reg_max)}
    stats = (f"positives per level {scene.summary(num_classes)}, num_total_samples {num_total_samples:g}, "
             f"sum w {weight_sum:.4g}, " + ", ".join(f"{k} {float(v.detach()):.4g}" for k, v in terms.items()))
    return "ld_gfl_" + name, tensors, meta, stats


def cases():
    # 32×32 px inputs, strides 8 / 16 / 32: 16 + 4 + 1 anchors per image.
    levels3 = [(4, 4, 8), (2, 2, 16), (1, 1, 32)]
    two_images = Scene(levels3, [
        ([[3.0, 4.5, 19.0, 22.0], [14.5, 10.0, 31.0, 29.5]], [2, 0]),
        ([[6.0, 2.5, 26.5, 20.0], [-18.0, -20.0, 50.0, 49.0]], [1, 2]),
    ])
    one_image = Scene(levels3, [([[2.5, 6.0, 21.0, 27.5], [-21.0, -17.0, 47.0, 52.0]], [0, 2])])
    second_empty = Scene(levels3, [([[3.0, 4.5, 19.0, 22.0], [-18.0, -20.0, 50.0, 49.0]], [2, 1]), ([], [])])
    no_boxes = Scene(levels3, [([], [])])
    yield ld_case("repo_default", 10, two_images, 3, 4, "ld_repo")
    yield ld_case("mmdet_reg_max_16", 11, one_image, 3, 16, "mmdet")
    yield ld_case("union_custom", 12, two_images, 3, 4, "ld_repo", dict(
        ld_weight=0.5, ld_temperature=4.0, vlr_weight=1.0, vlr_temperature=3.0, kd_weight=2.0,
        kd_temperature=1.0, vlr_lower_ratio=0.5, vlr_overlap="union"))
    yield ld_case("second_image_empty", 13, second_empty, 3, 4, "ld_repo")
    yield ld_case("no_boxes", 14, no_boxes, 3, 4, "ld_repo")
    yield gfl_case("two_images", 20, two_images, 3, 4)
    yield gfl_case("reg_max_16", 21, one_image, 3, 16)
    yield gfl_case("low_scores", 22, two_images, 3, 4, cls_shift=-8.0)
    yield gfl_case("second_image_empty", 23, second_empty, 3, 4)
    yield gfl_case("no_boxes", 24, no_boxes, 3, 4)


def main():
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    total = 0
    for name, tensors, meta, stats in cases():
        path = OUT_DIR / f"{name}.safetensors"
        write_safetensors(path, tensors, meta)
        check_roundtrip(path, tensors, meta)
        size = path.stat().st_size
        assert size <= MAX_FILE_BYTES, (name, size)
        total += size
        print(f"{name}: {size} bytes; {stats}")
    assert total <= MAX_TOTAL_BYTES, total
    print(f"total {total} bytes")


if __name__ == "__main__":
    sys.exit(main())
