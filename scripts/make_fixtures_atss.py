"""Golden fixtures for detkd's ATSS assignment (src/engine/assign.rs).

mmdetection is not installed here (it pins old torch/mmcv versions), so its ``ATSSAssigner.assign``
(mmdet/core/bbox/assigners/atss_assigner.py, v2.x) and the GFL anchor layout (``AnchorGenerator`` with
``octave_base_scale=8, scales_per_octave=1, ratios=[1.0], center_offset=0``) are written out below in
PyTorch, step for step: per-level top-k nearest anchor centres, IoU threshold ``mean + std`` of the
candidates (``torch.std``, unbiased), centre-inside test with margin 0.01, and the max-IoU tie-break via
``torch.max``. IoU is ``bbox_overlaps(mode='iou')`` with the union clamped at 1e-6.

Output: ``tests/fixtures/atss/<case>.json`` with the levels, the ground-truth boxes and the expected
assigned ground-truth index per anchor (-1 = background). Float64 throughout; seeded.

    .venv-peer/bin/python scripts/make_fixtures_atss.py
"""

import json
from pathlib import Path

import torch

OUT_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "atss"
INF = 100000000


def gfl_anchors(levels, scale):
    boxes = []
    for h, w, s in levels:
        ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
        cx, cy = xs.reshape(-1) * s, ys.reshape(-1) * s
        half = scale * s / 2
        boxes.append(torch.stack([cx - half, cy - half, cx + half, cy + half], dim=1))
    return torch.cat(boxes), [h * w for h, w, _ in levels]


def bbox_overlaps(a, b, eps=1e-6):
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = (area_a[:, None] + area_b[None, :] - overlap).clamp(min=eps)
    return overlap / union


def atss_assign(bboxes, num_level_bboxes, gt_bboxes, topk=9):
    num_gt, num_bboxes = gt_bboxes.size(0), bboxes.size(0)
    overlaps = bbox_overlaps(bboxes, gt_bboxes)
    assigned = torch.full((num_bboxes,), 0, dtype=torch.long)
    if num_gt == 0 or num_bboxes == 0:
        return assigned - 1
    gt_points = torch.stack([(gt_bboxes[:, 0] + gt_bboxes[:, 2]) / 2.0, (gt_bboxes[:, 1] + gt_bboxes[:, 3]) / 2.0], dim=1)
    bboxes_cx = (bboxes[:, 0] + bboxes[:, 2]) / 2.0
    bboxes_cy = (bboxes[:, 1] + bboxes[:, 3]) / 2.0
    bboxes_points = torch.stack((bboxes_cx, bboxes_cy), dim=1)
    distances = (bboxes_points[:, None, :] - gt_points[None, :, :]).pow(2).sum(-1).sqrt()
    candidate_idxs, start = [], 0
    for count in num_level_bboxes:
        end = start + count
        k = min(topk, count)
        _, idx = distances[start:end, :].topk(k, dim=0, largest=False)
        candidate_idxs.append(idx + start)
        start = end
    candidate_idxs = torch.cat(candidate_idxs, dim=0)
    candidate_overlaps = overlaps[candidate_idxs, torch.arange(num_gt)]
    thr = candidate_overlaps.mean(0) + candidate_overlaps.std(0)
    is_pos = candidate_overlaps >= thr[None, :]
    for g in range(num_gt):
        candidate_idxs[:, g] += g * num_bboxes
    ep_cx = bboxes_cx.view(1, -1).expand(num_gt, num_bboxes).contiguous().view(-1)
    ep_cy = bboxes_cy.view(1, -1).expand(num_gt, num_bboxes).contiguous().view(-1)
    flat = candidate_idxs.view(-1)
    l_ = ep_cx[flat].view(-1, num_gt) - gt_bboxes[:, 0]
    t_ = ep_cy[flat].view(-1, num_gt) - gt_bboxes[:, 1]
    r_ = gt_bboxes[:, 2] - ep_cx[flat].view(-1, num_gt)
    b_ = gt_bboxes[:, 3] - ep_cy[flat].view(-1, num_gt)
    is_in = torch.stack([l_, t_, r_, b_], dim=1).min(dim=1)[0] > 0.01
    is_pos = is_pos & is_in
    overlaps_inf = torch.full_like(overlaps, -INF).t().contiguous().view(-1)
    index = flat[is_pos.view(-1)]
    overlaps_inf[index] = overlaps.t().contiguous().view(-1)[index]
    overlaps_inf = overlaps_inf.view(num_gt, -1).t()
    max_overlaps, argmax = overlaps_inf.max(dim=1)
    assigned[max_overlaps != -INF] = argmax[max_overlaps != -INF] + 1
    return assigned - 1


def main():
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    cases = {
        # 128x128 image, strides 8..128 as TinyGFL: levels 16², 8², 4², 2², 1².
        "tiny_gfl_128": dict(size=128, strides=[8, 16, 32, 64, 128], num_gt=6, seed=0),
        "crowded_96": dict(size=96, strides=[8, 16, 32], num_gt=12, seed=1),
        "single_small_box": dict(size=64, strides=[8, 16], num_gt=1, seed=2),
        "no_boxes": dict(size=64, strides=[8, 16], num_gt=0, seed=3),
    }
    for name, c in cases.items():
        g = torch.Generator().manual_seed(c["seed"])
        levels = [((c["size"] + s - 1) // s, (c["size"] + s - 1) // s, s) for s in c["strides"]]
        anchors, counts = gfl_anchors(levels, 8.0)
        gts = []
        for _ in range(c["num_gt"]):
            w, h = (torch.rand(2, generator=g, dtype=torch.float64) * 0.5 + 0.05) * c["size"]
            x1 = torch.rand(1, generator=g, dtype=torch.float64).item() * (c["size"] - w.item())
            y1 = torch.rand(1, generator=g, dtype=torch.float64).item() * (c["size"] - h.item())
            gts.append([x1, y1, x1 + w.item(), y1 + h.item()])
        gt = torch.tensor(gts, dtype=torch.float64).reshape(-1, 4)
        assigned = atss_assign(anchors, counts, gt)
        out = {
            "levels": [{"height": h, "width": w, "stride": s} for h, w, s in levels],
            "anchor_scale": 8.0,
            "topk": 9,
            "gt_boxes": gts,
            "assigned": assigned.tolist(),
        }
        path = OUT_DIR / f"{name}.json"
        path.write_text(json.dumps(out, indent=None, sort_keys=True) + "\n")
        print(f"wrote {path} ({int((assigned >= 0).sum())} positives)")


if __name__ == "__main__":
    main()
