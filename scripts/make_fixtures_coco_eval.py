"""Golden fixtures for detkd's evaluation layer (src/engine/eval): COCO box metrics from pycocotools,
class-wise NMS from torchvision, and GFL post-processing from a PyTorch transcription of mmdetection's
GFLHead.get_bboxes.

What it makes, under ``tests/fixtures/coco_eval/``:

- ``<scenario>.gt.json``: a COCO annotation file (images, categories, annotations);
  ``<scenario>.dt.json``: a COCO results file (list of detections);
  ``<scenario>.expected.json``: pycocotools' 12 ``COCOeval.stats`` (``stats``, plus ``stats_bits``, the
  IEEE-754 bit patterns as unsigned integers, so the Rust side can compare exactly), and the
  per-category AP at IoU .50:.95 / all areas / 100 detections as mmdetection's ``classwise`` table
  computes it from ``eval['precision']`` (``category_ids``, ``category_ap`` and
  ``category_ap_bits``; -1 for a category without ground truth).
- ``nms.json``: cases for ``torchvision.ops.batched_nms`` (boxes ``[x1, y1, x2, y2]``, scores,
  classes, dtype, IoU threshold and the kept indices).
- ``gfl.json``: one image's head outputs on three FPN levels and the detections of several
  post-processing settings.

Scenarios are seeded (numpy ``default_rng``) and cover: image and category ids that are neither
contiguous nor in sorted order in the file, images without ground truth and images without
detections, a category with ground truth but no detections, one with detections but no ground truth
and one with neither, crowd regions (with detections inside them, crowds overlapping regular objects),
tiny, medium and large boxes including areas exactly on the 32² and 96² bounds, annotated areas that
differ from width·height (as COCO's segmentation areas do), duplicate detections, score ties within and
across images, IoUs exactly on the 0.5, 0.75, 0.9 and 0.95 thresholds, and more than 100 detections
of one category in one image. Numbers are written with few decimals, so JSON readers on both sides
parse them to the same doubles.

The NMS cases use integer coordinates where several classes meet (torchvision offsets boxes per class
for small inputs, which is exact on integers, so both of its code paths agree with plain per-class NMS),
a single class with fractional coordinates, a case large enough for torchvision's per-class loop (distinct scores there: that path re-sorts
without stability), and
degenerate boxes (zero area, identical, nested) at thresholds 0 and 0.3.

The GFL peer follows mmdetection 2.x's GFLHead.get_bboxes: anchor points ``(x·stride, y·stride)``
(AnchorGenerator's default center_offset=0), ``sigmoid`` scores, ``softmax`` over the ``reg_max + 1``
bins integrated against ``0..reg_max`` and scaled by the stride, ``distance2bbox`` clipped to
``img_shape``, then either the pre-2.18 rule (top ``nms_pre`` locations by max class score, then pairs
above ``score_thr``; GFL's and LD's code) or the 2.18+ ``filter_scores_and_topk`` rule (pairs above
``score_thr``, then the top ``nms_pre`` pairs), optional rescale, ``batched_nms`` and ``max_per_img``.
mmdetection itself is not installed (it needs mmcv's compiled ops); mmcv's ``batched_nms`` and
torchvision's agree on these inputs (per-class greedy NMS, IoU without +1).

How to run, from the repository root, with the pinned peer environment::

    .venv-peer/bin/python scripts/make_fixtures_coco_eval.py

Reruns rewrite byte-identical files (fixed seeds, sorted keys).
"""

import contextlib
import copy
import io
import json
import math
import struct
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

OUT_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "coco_eval"
MAX_TOTAL_BYTES = 300 * 1024
IMAGE_W, IMAGE_H = 640.0, 480.0


def f64_bits(x):
    return struct.unpack("<Q", struct.pack("<d", float(x)))[0]


def write_json(path, obj):
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    path.write_text(text + "\n")
    # Every number must come back as the same double.
    assert json.loads(text) == obj
    return len(text) + 1


# ----------------------------------------------------------------------------------------------
# COCO scenarios


class Scenario:
    """Accumulates images, categories, annotations and detections of one fixture."""

    def __init__(self, seed, num_images, category_ids):
        self.rng = np.random.default_rng(seed)
        ids = self.rng.choice(np.arange(1, 600_000), size=num_images, replace=False)
        self.image_ids = [int(i) for i in ids]
        self.category_ids = list(category_ids)
        self.annotations = []
        self.detections = []

    # -- boxes

    def random_box(self, min_side=3.0, max_side=400.0):
        w = math.exp(self.rng.uniform(math.log(min_side), math.log(max_side)))
        h = min(w * math.exp(self.rng.uniform(-0.7, 0.7)), IMAGE_H - 1)
        w = min(w, IMAGE_W - 1)
        x = self.rng.uniform(0, IMAGE_W - w)
        y = self.rng.uniform(0, IMAGE_H - h)
        return [round(x, 2), round(y, 2), round(w, 2), round(h, 2)]

    def jitter(self, box, scale):
        x, y, w, h = box
        x += self.rng.normal(0, scale * w)
        y += self.rng.normal(0, scale * h)
        w *= math.exp(self.rng.normal(0, scale))
        h *= math.exp(self.rng.normal(0, scale))
        return [round(x, 2), round(y, 2), round(max(w, 0.5), 2), round(max(h, 0.5), 2)]

    # -- entries

    def add_gt(self, image_id, category_id, bbox, area=None, iscrowd=0):
        if area is None:
            # COCO's area is the segmentation area: at most the box area, usually less.
            area = round(bbox[2] * bbox[3] * self.rng.uniform(0.55, 1.0), 2)
        self.annotations.append(
            {"image_id": image_id, "category_id": category_id, "bbox": bbox, "area": area, "iscrowd": iscrowd}
        )

    def add_det(self, image_id, category_id, bbox, score):
        self.detections.append({"image_id": image_id, "category_id": category_id, "bbox": bbox, "score": score})

    def score(self, lo=0.0, hi=1.0, decimals=3):
        return round(float(self.rng.uniform(lo, hi)), decimals)

    def detect(self, image_id, category_id, bbox, hit_rate=0.8):
        """Noisy detections of one object: usually one, sometimes a duplicate, sometimes none."""
        if self.rng.random() > hit_rate:
            return
        for _ in range(1 + int(self.rng.random() < 0.2)):
            scale = float(self.rng.choice([0.02, 0.05, 0.1, 0.2, 0.35]))
            self.add_det(image_id, category_id, self.jitter(bbox, scale), self.score(0.2, 1.0))

    def false_positives(self, image_id, count):
        for _ in range(count):
            self.add_det(image_id, int(self.rng.choice(self.category_ids)), self.random_box(), self.score(0.0, 0.7))

    # -- output

    def files(self):
        rng = self.rng
        images = [{"id": i, "width": int(IMAGE_W), "height": int(IMAGE_H), "file_name": f"{i:012d}.jpg"} for i in self.image_ids]
        images = [images[i] for i in rng.permutation(len(images))]
        categories = [{"id": c, "name": f"class_{c}"} for c in self.category_ids]
        categories = [categories[i] for i in rng.permutation(len(categories))]
        annotations = [self.annotations[i] for i in rng.permutation(len(self.annotations))]
        for n, a in enumerate(annotations):
            a["id"] = n + 1
        detections = [self.detections[i] for i in rng.permutation(len(self.detections))]
        gt = {"images": images, "categories": categories, "annotations": annotations}
        return gt, detections


def scenario_mixed():
    s = Scenario(seed=11, num_images=18, category_ids=[1, 3, 7, 18, 44, 90])
    # 90: ground truth, never detected. 18: detected, never annotated. 44: nothing at all.
    annotated = [1, 3, 7, 90]
    no_gt = set(s.image_ids[:3])
    no_det = set(s.image_ids[3:5])
    for image_id in s.image_ids:
        if image_id not in no_gt:
            for _ in range(int(s.rng.integers(1, 7))):
                cat = int(s.rng.choice(annotated))
                box = s.random_box()
                crowd = int(s.rng.random() < 0.08)
                s.add_gt(image_id, cat, box, iscrowd=crowd)
                if image_id in no_det or cat == 90:
                    continue
                if crowd:
                    for _ in range(int(s.rng.integers(1, 4))):
                        inner = [
                            round(box[0] + s.rng.uniform(0, 0.6) * box[2], 2),
                            round(box[1] + s.rng.uniform(0, 0.6) * box[3], 2),
                            round(box[2] * s.rng.uniform(0.1, 0.4), 2),
                            round(box[3] * s.rng.uniform(0.1, 0.4), 2),
                        ]
                        s.add_det(image_id, cat, inner, s.score())
                else:
                    s.detect(image_id, cat, box)
                    # Confused category.
                    if s.rng.random() < 0.1:
                        s.add_det(image_id, 18, s.jitter(box, 0.05), s.score(0.1, 0.6))
        if image_id not in no_det:
            s.false_positives(image_id, int(s.rng.integers(0, 4)))
    # One image with 130 detections of category 3 (beyond maxDets = 100 in one cell) around 12 objects.
    crowded = s.image_ids[6]
    objects = [s.random_box(20, 200) for _ in range(12)]
    for box in objects:
        s.add_gt(crowded, 3, box)
    for n in range(130):
        box = objects[n % len(objects)]
        s.add_det(crowded, 3, s.jitter(box, float(s.rng.choice([0.03, 0.1, 0.3, 0.6]))), s.score(0.0, 1.0, decimals=2))
    return s


def scenario_ties_and_bounds():
    s = Scenario(seed=22, num_images=8, category_ids=[2, 5])
    a, b, c, d, e, f, g, h = s.image_ids
    # IoU exactly on thresholds: 0.5, 0.75, 0.9 (above numpy's 0.8999999999999999) and 0.95.
    s.add_gt(a, 2, [0, 0, 10, 10], area=100)
    s.add_det(a, 2, [0, 0, 10, 20], 0.9)  # IoU 100 / 200 = 0.5
    s.add_gt(a, 2, [100, 100, 20, 20], area=400)
    s.add_det(a, 2, [100, 100, 20, 15], 0.9)  # IoU 300 / 400 = 0.75
    s.add_gt(a, 5, [200, 0, 100, 100], area=10000)
    s.add_det(a, 5, [200, 0, 100, 90], 0.8)  # 0.9
    s.add_gt(b, 5, [0, 0, 100, 100], area=10000)
    s.add_det(b, 5, [0, 0, 100, 95], 0.8)  # 0.95
    # Areas exactly on the small/medium and medium/large bounds (belong to both ranges).
    s.add_gt(c, 2, [0, 0, 32, 32], area=1024)
    s.add_det(c, 2, [0, 0, 32, 32], 0.5)
    s.add_gt(c, 2, [100, 100, 96, 96], area=9216)
    s.add_det(c, 2, [100, 100, 96, 96], 0.5)
    s.add_det(c, 2, [300, 300, 32, 32], 0.5)  # unmatched, area on the bound
    s.add_det(c, 2, [300, 100, 96, 96], 0.5)
    # One detection equally close to two objects (later one in file order wins the tie).
    s.add_gt(d, 2, [0, 0, 20, 20], area=400)
    s.add_gt(d, 2, [10, 0, 20, 20], area=400)
    s.add_det(d, 2, [5, 0, 20, 20], 0.7)
    s.add_det(d, 2, [5, 0, 20, 20], 0.7)  # exact duplicate, same score
    # A regular object and an out-of-range (ignored) one overlapping the same detection.
    s.add_gt(e, 5, [0, 0, 40, 40], area=1600)
    s.add_gt(e, 5, [2, 2, 38, 38], area=20000)  # annotated area puts it in "large" only
    s.add_det(e, 5, [1, 1, 39, 39], 0.6)
    s.add_det(e, 5, [3, 3, 37, 37], 0.6)
    # Score ties across images with different outcomes (tp in f, fp in g).
    s.add_gt(f, 2, [50, 50, 60, 60], area=3600)
    s.add_det(f, 2, [50, 50, 60, 60], 0.5)
    s.add_det(g, 2, [50, 50, 60, 60], 0.5)
    s.add_gt(g, 5, [10, 10, 5, 5], area=25)
    s.add_det(g, 5, [10, 10, 5, 5], 0.5)
    s.add_det(g, 5, [10, 10, 5, 6], 0.5)
    # Random integer boxes with three score levels.
    for image_id in (g, h):
        for _ in range(10):
            x, y = (int(v) for v in s.rng.integers(0, 400, size=2))
            w, hh = (int(v) for v in s.rng.integers(1, 120, size=2))
            cat = int(s.rng.choice([2, 5]))
            s.add_gt(image_id, cat, [x, y, w, hh], area=w * hh)
            if s.rng.random() < 0.8:
                dx, dy, dw, dh = (int(v) for v in s.rng.integers(-3, 4, size=4))
                s.add_det(image_id, cat, [x + dx, y + dy, max(w + dw, 1), max(hh + dh, 1)], float(s.rng.choice([0.9, 0.8, 0.5])))
    return s


def scenario_crowds():
    s = Scenario(seed=33, num_images=10, category_ids=[1, 2])
    for image_id in s.image_ids:
        crowd = s.random_box(120, 400)
        s.add_gt(image_id, 1, crowd, iscrowd=1)
        # Regular objects, some inside the crowd region.
        for _ in range(int(s.rng.integers(0, 5))):
            if s.rng.random() < 0.5:
                box = [
                    round(crowd[0] + s.rng.uniform(0, 0.7) * crowd[2], 2),
                    round(crowd[1] + s.rng.uniform(0, 0.7) * crowd[3], 2),
                    round(crowd[2] * s.rng.uniform(0.05, 0.3), 2),
                    round(crowd[3] * s.rng.uniform(0.05, 0.3), 2),
                ]
            else:
                box = s.random_box()
            cat = int(s.rng.choice([1, 2]))
            s.add_gt(image_id, cat, box)
            s.detect(image_id, cat, box, hit_rate=0.9)
        # Many detections falling in the crowd, small and large.
        for _ in range(int(s.rng.integers(2, 9))):
            box = [
                round(crowd[0] + s.rng.uniform(-0.1, 0.8) * crowd[2], 2),
                round(crowd[1] + s.rng.uniform(-0.1, 0.8) * crowd[3], 2),
                round(crowd[2] * s.rng.uniform(0.02, 0.5), 2),
                round(crowd[3] * s.rng.uniform(0.02, 0.5), 2),
            ]
            s.add_det(image_id, 1, box, s.score())
        s.false_positives(image_id, int(s.rng.integers(0, 3)))
    return s


def scenario_dense():
    s = Scenario(seed=44, num_images=3, category_ids=[4, 8, 15])
    a, b, c = s.image_ids
    objects = [(int(s.rng.choice([4, 8])), s.random_box(4, 250)) for _ in range(40)]
    for cat, box in objects:
        s.add_gt(a, cat, box)
    # 160 detections of category 4 and 60 of category 8 in one image: maxDets 1/10/100 all bite.
    for n in range(220):
        cat = 4 if n < 160 else 8
        same = [box for k, box in objects if k == cat]
        box = same[n % len(same)]
        s.add_det(a, cat, s.jitter(box, float(s.rng.choice([0.02, 0.08, 0.25, 0.8]))), s.score(decimals=4))
    for _ in range(5):
        box = s.random_box()
        s.add_gt(b, 15, box)
        s.detect(b, 15, box, hit_rate=1.0)
    s.false_positives(c, 6)
    return s


def scenario_sparse():
    s = Scenario(seed=55, num_images=12, category_ids=[1, 2, 3])
    annotated = s.image_ids[:2]
    for image_id in annotated:
        for _ in range(3):
            box = s.random_box(2, 30)  # small objects only
            s.add_gt(image_id, 1, box)
            s.detect(image_id, 1, box, hit_rate=0.7)
    # Detections spread over images without any ground truth (all false positives).
    for image_id in s.image_ids[2:9]:
        s.false_positives(image_id, int(s.rng.integers(1, 4)))
    return s


SCENARIOS = {
    "mixed": scenario_mixed,
    "ties_and_bounds": scenario_ties_and_bounds,
    "crowds": scenario_crowds,
    "dense": scenario_dense,
    "sparse": scenario_sparse,
}


def run_pycocotools(gt, detections):
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(detections))
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [float(v) for v in evaluator.stats]
    precision = evaluator.eval["precision"]
    category_ap = []
    for k in range(len(evaluator.params.catIds)):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        category_ap.append(float(np.mean(p)) if p.size else -1.0)
    return stats, [int(c) for c in evaluator.params.catIds], category_ap


# ----------------------------------------------------------------------------------------------
# NMS cases


def nms_cases():
    rng = np.random.default_rng(66)
    cases = []

    def add(name, boxes, scores, classes, threshold, dtype):
        t_boxes = torch.tensor(boxes, dtype=dtype).reshape(-1, 4)
        t_scores = torch.tensor(scores, dtype=dtype)
        t_classes = torch.tensor(classes, dtype=torch.int64)
        keep = torchvision.ops.batched_nms(t_boxes, t_scores, t_classes, threshold)
        cases.append(
            {
                "name": name,
                "dtype": "f32" if dtype == torch.float32 else "f64",
                "boxes": boxes,
                "scores": scores,
                "classes": classes,
                "iou_threshold": threshold,
                "keep": [int(i) for i in keep],
            }
        )

    # Boxes cluster around a few objects, as a detector's raw output does, so that NMS has work.
    def clustered(n, extent, max_side, spread):
        centres = rng.uniform(0, extent, size=(max(n // 12, 1), 2))
        sides = rng.uniform(4, max_side, size=(len(centres), 2))
        pick = rng.integers(0, len(centres), n)
        xy = centres[pick] + rng.normal(0, spread, size=(n, 2)) * sides[pick]
        wh = sides[pick] * np.exp(rng.normal(0, spread, size=(n, 2)))
        return xy, wh

    def grid_boxes(n, extent, max_side):
        xy, wh = clustered(n, extent, max_side, 0.15)
        xy, wh = np.round(xy), np.maximum(np.round(wh), 1)
        return [[int(x), int(y), int(x + w), int(y + h)] for (x, y), (w, h) in zip(xy, wh)]

    def float_boxes(n, extent, max_side, decimals):
        xy, wh = clustered(n, extent, max_side, 0.15)
        return [[round(float(v), decimals) for v in (x, y, x + w, y + h)] for (x, y), (w, h) in zip(xy, wh)]

    # Several classes on integer coordinates, scores with many ties.
    n = 300
    add(
        "grid_multiclass",
        grid_boxes(n, 200, 60),
        [round(float(v), 2) for v in rng.uniform(0, 1, n)],
        [int(v) for v in rng.integers(0, 5, n)],
        0.5,
        torch.float32,
    )
    # One class, fractional coordinates.
    n = 250
    add("float_single_class", float_boxes(n, 300, 80, 2), [round(float(v), 4) for v in rng.uniform(0, 1, n)], [0] * n, 0.6, torch.float32)
    # More than 4000 coordinates: torchvision's per-class loop. Its final re-sort by score is not
    # stable, so this case has distinct scores.
    n = 1001
    add(
        "float_per_class_loop",
        float_boxes(n, 500, 120, 1),
        [round(float(k + 1) / (n + 1), 6) for k in rng.permutation(n)],
        [int(v) for v in rng.integers(0, 6, n)],
        0.7,
        torch.float32,
    )
    # float64 boxes.
    n = 150
    add(
        "f64_multiclass",
        grid_boxes(n, 150, 50),
        [round(float(v), 3) for v in rng.uniform(0, 1, n)],
        [int(v) for v in rng.integers(0, 3, n)],
        0.45,
        torch.float64,
    )
    # Degenerate boxes: zero area, identical with equal scores, nested, touching.
    boxes = [
        [0, 0, 10, 10],
        [0, 0, 10, 10],
        [0, 0, 10, 10],
        [2, 2, 8, 8],
        [10, 0, 20, 10],
        [5, 5, 5, 5],
        [5, 5, 5, 5],
        [3, 3, 3, 9],
        [0, 0, 20, 1],
        [0, 0, 0, 0],
    ]
    scores = [0.5, 0.5, 0.7, 0.5, 0.5, 0.9, 0.9, 0.5, 0.2, 0.5]
    classes = [0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    for threshold in (0.0, 0.3):
        add(f"degenerate_thr{threshold}", boxes, scores, classes, threshold, torch.float32)
    return cases


# ----------------------------------------------------------------------------------------------
# GFL post-processing peer


def gfl_peer(levels, num_classes, reg_max, img_shape, scale_factor, cfg):
    """mmdetection 2.x GFLHead.get_bboxes for one image, in PyTorch (see the module docstring)."""
    project = torch.linspace(0, reg_max, reg_max + 1)
    all_boxes, all_scores, all_labels = [], [], []
    img_h, img_w = img_shape
    for level in levels:
        stride = level["stride"]
        h, w = level["height"], level["width"]
        cls = torch.tensor(level["cls_logits"], dtype=torch.float32).reshape(num_classes, h, w)
        box = torch.tensor(level["box_logits"], dtype=torch.float32).reshape(4 * (reg_max + 1), h, w)
        scores = cls.permute(1, 2, 0).reshape(-1, num_classes).sigmoid()
        dist = F.linear(F.softmax(box.permute(1, 2, 0).reshape(-1, reg_max + 1), dim=1), project).reshape(-1, 4) * stride
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        points = torch.stack([xs.reshape(-1).float() * stride, ys.reshape(-1).float() * stride], dim=1)
        nms_pre = cfg["nms_pre"]
        if cfg["selection"] == "locations":
            if nms_pre is not None and scores.shape[0] > nms_pre:
                _, idx = scores.max(dim=1).values.topk(nms_pre)
                points, dist, scores = points[idx], dist[idx], scores[idx]
            pairs = (scores > cfg["score_thr"]).nonzero()
            rows, labels = pairs[:, 0], pairs[:, 1]
            pair_scores = scores[rows, labels]
        else:
            mask = scores > cfg["score_thr"]
            valid = mask.nonzero()
            pair_scores, order = scores[mask].sort(descending=True, stable=True)
            if nms_pre is not None:
                pair_scores, order = pair_scores[:nms_pre], order[:nms_pre]
            rows, labels = valid[order, 0], valid[order, 1]
        p, d = points[rows], dist[rows]
        x1 = (p[:, 0] - d[:, 0]).clamp(0, img_w)
        y1 = (p[:, 1] - d[:, 1]).clamp(0, img_h)
        x2 = (p[:, 0] + d[:, 2]).clamp(0, img_w)
        y2 = (p[:, 1] + d[:, 3]).clamp(0, img_h)
        all_boxes.append(torch.stack([x1, y1, x2, y2], dim=1))
        all_scores.append(pair_scores)
        all_labels.append(labels)
    boxes = torch.cat(all_boxes)
    scores = torch.cat(all_scores)
    labels = torch.cat(all_labels)
    if scale_factor is not None:
        boxes = boxes / torch.tensor([scale_factor[0], scale_factor[1], scale_factor[0], scale_factor[1]], dtype=torch.float32)
    keep = torchvision.ops.batched_nms(boxes, scores, labels, cfg["iou_threshold"])
    if cfg["max_per_img"] is not None:
        keep = keep[: cfg["max_per_img"]]
    out = []
    for i in keep.tolist():
        x1, y1, x2, y2 = boxes[i].tolist()
        out.append({"class": int(labels[i]), "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(scores[i])})
    return out


def gfl_fixture():
    rng = np.random.default_rng(77)
    num_classes, reg_max = 3, 16
    img_shape = (44, 60)  # (height, width) of the network input before padding
    levels = []
    for stride, (h, w) in zip((8, 16, 32), ((6, 8), (3, 4), (2, 2))):
        cls = [round(float(v), 3) for v in rng.normal(-1.5, 1.5, num_classes * h * w)]
        # Logits falling with the bin index keep most distances within a few strides, so boxes stay
        # distinct instead of all clipping to the whole image.
        bins = np.arange(reg_max + 1).reshape(1, -1, 1, 1)
        box_logits = rng.normal(0.0, 1.5, size=(4, reg_max + 1, h, w)) - 0.35 * bins
        box = [round(float(v), 3) for v in box_logits.reshape(-1)]
        levels.append({"stride": stride, "height": h, "width": w, "cls_logits": cls, "box_logits": box})
    configs = {
        "default": {"selection": "locations", "nms_pre": 1000, "score_thr": 0.05, "iou_threshold": 0.6, "max_per_img": 100},
        "locations_top10_rescaled": {"selection": "locations", "nms_pre": 10, "score_thr": 0.05, "iou_threshold": 0.6, "max_per_img": 100, "scale_factor": [1.25, 0.8]},
        "pairs_top10": {"selection": "pairs", "nms_pre": 10, "score_thr": 0.05, "iou_threshold": 0.6, "max_per_img": 100},
        "pairs_max15": {"selection": "pairs", "nms_pre": 1000, "score_thr": 0.3, "iou_threshold": 0.5, "max_per_img": 15},
    }
    expected = {}
    for name, cfg in configs.items():
        expected[name] = {"config": cfg, "detections": gfl_peer(levels, num_classes, reg_max, img_shape, cfg.get("scale_factor"), cfg)}
    return {
        "num_classes": num_classes,
        "reg_max": reg_max,
        "img_height": img_shape[0],
        "img_width": img_shape[1],
        "levels": levels,
        "cases": expected,
    }


def main():
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    total = 0
    for name, build in SCENARIOS.items():
        scenario = build()
        gt, detections = scenario.files()
        stats, category_ids, category_ap = run_pycocotools(gt, detections)
        total += write_json(OUT_DIR / f"{name}.gt.json", gt)
        total += write_json(OUT_DIR / f"{name}.dt.json", detections)
        expected = {
            "stats": stats,
            "stats_bits": [f64_bits(v) for v in stats],
            "category_ids": category_ids,
            "category_ap": category_ap,
            "category_ap_bits": [f64_bits(v) for v in category_ap],
        }
        total += write_json(OUT_DIR / f"{name}.expected.json", expected)
        per_cell = {}
        for d in detections:
            per_cell[(d["image_id"], d["category_id"])] = per_cell.get((d["image_id"], d["category_id"]), 0) + 1
        print(
            f"{name}: {len(gt['images'])} images, {len(gt['annotations'])} annotations, {len(detections)} detections "
            f"(max {max(per_cell.values())} in one image/category), AP {stats[0]:.4f} AP50 {stats[1]:.4f}"
        )
    cases = nms_cases()
    total += write_json(OUT_DIR / "nms.json", cases)
    print("nms:", ", ".join(f"{c['name']} keeps {len(c['keep'])}/{len(c['scores'])}" for c in cases))
    gfl = gfl_fixture()
    total += write_json(OUT_DIR / "gfl.json", gfl)
    print("gfl:", ", ".join(f"{k} -> {len(v['detections'])} detections" for k, v in gfl["cases"].items()))
    print(f"total {total / 1024:.1f} KiB")
    assert total <= MAX_TOTAL_BYTES, f"fixtures too large: {total} bytes"


if __name__ == "__main__":
    main()
