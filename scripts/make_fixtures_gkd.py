"""Golden fixtures for GKD (src/distill/gkd), from PyTorch, for the Rust method tests.

What it makes: ``tests/fixtures/methods/gkd_<case>.safetensors``, each holding float64 inputs (integer
lists as int64) in the layout of the ``detkd parity`` ops ``gkd`` and ``gkd_prototypes``
(src/parity/gkd.rs documents the names and metadata keys), and PyTorch's results under
``expected.<name>``: for ``gkd`` the loss, each term, the robustness weights per level and the
gradients with respect to every student input and adapter parameter; for ``gkd_prototypes`` the
rows chosen by the prototype generation and the prototypes.

The peer computations write GKD's official code (hikvision-research/DAVAR-Lab-ML, ECCV22
third_party/kd: kd_one_stage_strategy.py, kd_two_stage_strategy.py, kd_loss.py,
prototype_generation_module.py) in PyTorch, float64 on the CPU, with autograd for the gradients:

- box features: ``AdaptiveAvgPool2d(1)`` of ``F[:, int(y1/s):int(y2/s)+1, int(x1/s):int(x2/s)+1]``;
- robustness ``1 - |max cos_s - max cos_t|`` over the box's class prototypes (``F.normalize`` +
  ``mm``; 1 for a class without prototypes, detkd's convention where the official code has none);
- ``get_gt_mask`` with weights (boxes of the level by ``_map_roi_levels`` with a configurable base
  scale; later boxes overwrite; an empty extent marks one cell with the max), the decoupled
  ``KDLoss`` (``feat`` / ``feat_bg`` with ``kd_param = [[1, 0], [1], [4, 1]]``), the ``/L`` level
  average and the attenuation ``1 - epoch/num_epochs``;
- the soft labels as ``knowledge_distillation_kl_div_loss`` (``kl_div(...).mean(1) * T * T``,
  times the weights, mean) on the class logits at the positives (the one-stage adaptation);
- ``r2i_om_loss``'s SmoothL1 between robust-weighted cosines (``pair_wise_factor`` 5), and the
  soft-assignment variant of src/distill/gkd (KL of ``softmax(-||x - p||^2 / tau)`` on normalised
  features, by explicit differences);
- ``_generate_prototypes_single``: density filter and joint matching pursuit with the official
  ``K x D x N`` tensors (float64 instead of the official float16).

Inputs stay away from kinks: boxes keep their corners away from cell edges (so a rounding of the
box coordinates cannot move a crop), SmoothL1 arguments away from +-1, and the prototype fixtures
are checked to have a clear winner in every matching-pursuit step (the best error leads the next
distinct one by the relative margin ``ARGMIN_MARGIN`` = 2e-6, twenty times the ~1e-7 by which
rounding the inputs to f32 moves the errors), so an f32 run picks the same rows.

How to run, from the repository root, with the pinned peer environment::

    .venv-peer/bin/python scripts/make_fixtures_gkd.py

Inputs come from a torch.Generator with a fixed per-case seed and files are written by
``write_safetensors`` (sorted metadata and tensor names), so a rerun rewrites byte-identical files.
"""

import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from make_fixtures_similarity import check_roundtrip, write_safetensors

OUT_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "methods"
DTYPE = torch.float64
EPS = 1e-12
MAX_FILE_BYTES = 64 * 1024
ARGMIN_MARGIN = 2e-6


# ----------------------------------------------------------------------------------------------
# GKD's official formulas


def level_of(box, base, levels):
    scale = math.sqrt((box[2] - box[0] + 1) * (box[3] - box[1] + 1))
    lvl = math.floor(math.log2(scale / base + 1e-6))
    return min(max(lvl, 0), levels - 1)


def box_feature(feat, img, box, stride):
    h, w = feat.shape[2:]
    y0, y1 = int(box[1] / stride), int(box[3] / stride) + 1
    x0, x1 = int(box[0] / stride), int(box[2] / stride) + 1
    assert y0 < h and x0 < w, "box starts outside the map (detkd clamps, the official code slices empty)"
    return F.adaptive_avg_pool2d(feat[img, :, y0:y1, x0:x1], 1).reshape(-1)


def max_cosine(f, protos, labels, label):
    same = protos[labels == label]
    if same.shape[0] == 0:
        return None
    return torch.mm(F.normalize(f[None], eps=EPS), F.normalize(same, eps=EPS).T).max()


def robust_weights(s_feat, t_feat, boxes, box_image, labels, stride, protos):
    """r of every box at one level (detached), as r2i_om_loss."""
    out = []
    for n in range(boxes.shape[0]):
        b, img = boxes[n].tolist(), int(box_image[n])
        fs = box_feature(s_feat, img, b, stride).detach()
        ft = box_feature(t_feat, img, b, stride)
        if protos is None:
            out.append(1.0)
            continue
        ps, pt, pl = protos
        cs = max_cosine(fs, ps, pl, int(labels[n]))
        ct = max_cosine(ft, pt, pl, int(labels[n]))
        out.append(1.0 if cs is None else float(1 - abs(cs - ct)))
    return torch.tensor(out, dtype=DTYPE)


def level_mask(shape, boxes, box_image, levels_of, level, stride, weights):
    """get_gt_mask with weights: [B, 1, H, W]."""
    bsz, _, h, w = shape
    mask = torch.zeros(bsz, 1, h, w, dtype=DTYPE)
    for n in range(boxes.shape[0]):
        if levels_of[n] != level:
            continue
        img = int(box_image[n])
        g = (boxes[n] / stride).tolist()
        lx, rx = max(int(g[0]), 0), min(int(g[2]), w)
        ly, ry = max(int(g[1]), 0), min(int(g[3]), h)
        r = float(weights[n])
        if lx == rx or ly == ry:
            mask[img, 0, ly, lx] = max(float(mask[img, 0, ly, lx]), r)
        else:
            mask[img, 0, ly:ry, lx:rx] = r
    return mask


def flatten_cls(levels):
    """[B, C, H, W] per level -> [B * A, C], image, level, row-major."""
    b = levels[0].shape[0]
    parts = [x.permute(0, 2, 3, 1).reshape(b, -1, x.shape[1]) for x in levels]
    joined = torch.cat(parts, 1)
    return joined.reshape(-1, joined.shape[2])


def smooth_l1_pairs(cs, ct):
    d = (cs - ct).abs()
    assert ((d - 1).abs() > 1e-3).all(), "SmoothL1 argument too close to its kink"
    return F.smooth_l1_loss(cs, ct, reduction="mean")


def gkd_peer(case):
    """Loss terms, robust weights and gradients of one `gkd` case."""
    m = case["meta"]
    strides = [float(s) for s in m["strides"].split(",")]
    levels = len(strides)
    base = float(m.get("level_base_scale", "16"))
    epoch, num_epochs = int(m["epoch"]), int(m["num_epochs"])
    temp = float(m.get("temperature", "2"))
    att = 1 - epoch / num_epochs if m.get("attenuation", "true") == "true" else 1.0
    use_robust = m.get("robust_weights", "true") == "true"
    glob = m.get("global", "off")
    x = case["tensors"]
    s_fpn = [x[f"student.fpn.{l}"].clone().requires_grad_(True) for l in range(levels)]
    s_cls = [x[f"student.cls.{l}"].clone().requires_grad_(True) for l in range(levels)]
    t_fpn = [x[f"teacher.fpn.{l}"] for l in range(levels)]
    t_cls = [x[f"teacher.cls.{l}"] for l in range(levels)]
    params = {k: v.clone().requires_grad_(True) for k, v in x.items() if k.startswith("distill.")}
    boxes, box_image, labels = x["boxes"], x["box_image"], x["labels"]
    has_protos = "prototypes.0.labels" in x
    protos = [
        (x[f"prototypes.{l}.student"], x[f"prototypes.{l}.teacher"], x[f"prototypes.{l}.labels"])
        if has_protos and use_robust
        else None
        for l in range(levels)
    ]
    levels_of = [level_of(b.tolist(), base, levels) for b in boxes]

    robust = [robust_weights(s_fpn[l], t_fpn[l], boxes, box_image, labels, strides[l], protos[l])
              for l in range(levels)]
    fg_sum, bg_sum = 0, 0
    for l in range(levels):
        adapted = F.conv2d(s_fpn[l], params[f"distill.gkd.adapter.{l}.weight"],
                           params[f"distill.gkd.adapter.{l}.bias"], padding=1)
        mask = level_mask(t_fpn[l].shape, boxes, box_image, levels_of, l, strides[l], robust[l])
        mask = mask.repeat(1, t_fpn[l].shape[1], 1, 1)
        onehot = mask.clone()
        onehot[onehot > 0] = 1
        diff2 = (adapted - t_fpn[l]) ** 2
        fg_sum = fg_sum + (diff2 * mask).sum() / max(1.0, float(mask.sum()) * 2) * 1 * 1
        bg_sum = bg_sum + (diff2 * (1 - onehot)).sum() / max(1.0, float((1 - onehot).sum()) * 2) * 4 * 1
    terms = {
        "loss_kd_point": fg_sum / levels * att,
        "loss_bg_point": bg_sum / levels * att,
    }

    positives, positive_gt = x["positives"], x["positive_gt"]
    s_flat, t_flat = flatten_cls(s_cls), flatten_cls(t_cls)
    if positives.numel() == 0:
        terms["loss_kd_soft"] = s_flat.sum() * 0
    else:
        weights = torch.stack([robust[levels_of[g]][g] for g in positive_gt.tolist()])
        pred, soft = s_flat[positives], t_flat[positives]
        kd = F.kl_div(F.log_softmax(pred / temp, dim=1), F.softmax(soft / temp, dim=1),
                      reduction="none").mean(1) * (temp * temp)
        terms["loss_kd_soft"] = (kd * weights).mean() * 1

    if glob != "off":
        total = 0
        for l in range(levels):
            if not has_protos or x[f"prototypes.{l}.labels"].numel() == 0 or boxes.shape[0] == 0:
                continue
            ps, pt = x[f"prototypes.{l}.student"], x[f"prototypes.{l}.teacher"]
            fs = torch.stack([box_feature(s_fpn[l], int(box_image[n]), boxes[n].tolist(), strides[l])
                              for n in range(boxes.shape[0])])
            ft = torch.stack([box_feature(t_fpn[l], int(box_image[n]), boxes[n].tolist(), strides[l])
                              for n in range(boxes.shape[0])])
            r = robust[l][:, None]
            if glob == "cosine":
                cs = torch.mm(F.normalize(fs, eps=EPS), F.normalize(ps, eps=EPS).T) * r
                ct = torch.mm(F.normalize(ft, eps=EPS), F.normalize(pt, eps=EPS).T) * r
                total = total + smooth_l1_pairs(cs, ct)
            else:
                tau = float(m.get("global_temperature", "0.2"))

                def log_assign(f, p):
                    fn, pn = F.normalize(f, eps=EPS), F.normalize(p, eps=EPS)
                    d2 = ((fn[:, None, :] - pn[None, :, :]) ** 2).sum(-1)
                    return torch.log_softmax(-d2 / tau, dim=1)

                log_qs, log_qt = log_assign(fs, ps), log_assign(ft, pt)
                kl = (log_qt.exp() * (log_qt - log_qs)).sum(1)
                total = total + (kl * robust[l]).sum() / boxes.shape[0]
        if not torch.is_tensor(total):
            total = s_fpn[0].sum() * 0
        terms["loss_kd_pair"] = total * float(m.get("global_weight", "5")) * att

    loss = sum(terms.values())
    inputs = s_fpn + s_cls + list(params.values())
    names = ([f"student.fpn.{l}" for l in range(levels)] + [f"student.cls.{l}" for l in range(levels)]
             + list(params.keys()))
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    out = {"loss": loss.detach().reshape(())}
    out.update({k: v.detach().reshape(()) for k, v in terms.items()})
    for name, g, i in zip(names, grads, inputs):
        out[f"grad.{name}"] = torch.zeros_like(i) if g is None else g
    for l in range(levels):
        out[f"robust.{l}"] = robust[l]
    return out


def matching_pursuit(xs, xt, max_protos=10, alpha=10.0, bandwidth=0.1, quantile=0.4):
    """_generate_prototypes_single in float64; returns the chosen rows (and the argmin margins).
    A class without boxes, or without candidates, gets none (the official code would fail)."""
    if xs.shape[0] == 0:
        return [], []
    a, b = F.normalize(xs, dim=1, eps=EPS), F.normalize(xt, dim=1, eps=EPS)
    dens_a = torch.exp(-((1 - a @ a.T) / bandwidth) ** 2).sum(1)
    dens_b = torch.exp(-((1 - b @ b.T) / bandwidth) ** 2).sum(1)
    middle = int(len(dens_a) * quantile)
    gamma = torch.where((dens_a > dens_a.sort().values[middle]) & (dens_b > dens_b.sort().values[middle]))[0]
    if gamma.numel() == 0:
        return [], []
    a, b = a.T, b.T
    pa, pb = a[:, gamma], b[:, gamma]
    k, n, da, db = pa.shape[1], a.shape[1], a.shape[0], b.shape[0]
    res_a, res_b = a.clone(), b.clone()
    chosen, margins = [], []
    for _ in range(max_protos):
        inner_a, inner_b = pa.T @ res_a, pb.T @ res_b
        w_a = (alpha * (inner_a + inner_b) + inner_a) / (1 + 2 * alpha)
        w_b = (alpha * (inner_a + inner_b) + inner_b) / (1 + 2 * alpha)
        err_a = pa.T.reshape(k, da, 1) * w_a.reshape(k, 1, n) - res_a.reshape(1, da, n)
        err_b = pb.T.reshape(k, db, 1) * w_b.reshape(k, 1, n) - res_b.reshape(1, db, n)
        err = (err_a ** 2).sum((1, 2)) + (err_b ** 2).sum((1, 2)) + alpha * ((w_a - w_b) ** 2).sum(-1)
        g = int(torch.argmin(err))
        ordered = err.sort().values
        # Distinct atoms only: a duplicated feature ties with itself and picks the same row either way.
        distinct = ordered[ordered > ordered[0] * (1 + 1e-12)]
        if distinct.numel():
            margins.append(float((distinct[0] - ordered[0]) / ordered[0].abs().clamp(min=1e-300)))
        chosen.append(int(gamma[g]))
        res_a = res_a - pa[:, g:g + 1] @ w_a[g:g + 1]
        res_b = res_b - pb[:, g:g + 1] @ w_b[g:g + 1]
    return chosen, margins


def prototypes_peer(case):
    x, m = case["tensors"], case["meta"]
    labels = x["labels"]
    rows, plabels = [], []
    for c in range(int(m["num_classes"])):
        members = torch.where(labels == c)[0]
        chosen, margins = matching_pursuit(x["student"][members], x["teacher"][members])
        assert all(mg > ARGMIN_MARGIN for mg in margins), (case["name"], c, margins)
        rows += [int(members[i]) for i in chosen]
        plabels += [c] * len(chosen)
    idx = torch.tensor(rows, dtype=torch.int64)
    return {
        "index": idx,
        "prototype_labels": torch.tensor(plabels, dtype=torch.int64),
        "student_prototypes": x["student"][idx].reshape(len(rows), x["student"].shape[1]),
        "teacher_prototypes": x["teacher"][idx].reshape(len(rows), x["teacher"].shape[1]),
    }


# ----------------------------------------------------------------------------------------------
# Cases


def gkd_inputs(seed, with_prototypes=True, boxes=True, positives=True):
    """B = 2 images of 48 px; levels at strides 8 and 16 (6x6, 3x3); student FPN width 4, teacher 6;
    3 classes. Box corners sit away from cell edges."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=DTYPE)
    t = {}
    for l, hw in enumerate([6, 3]):
        t[f"student.fpn.{l}"] = rnd(2, 4, hw, hw)
        t[f"teacher.fpn.{l}"] = rnd(2, 6, hw, hw)
        t[f"student.cls.{l}"] = rnd(2, 3, hw, hw)
        t[f"teacher.cls.{l}"] = rnd(2, 3, hw, hw) * 2
        t[f"distill.gkd.adapter.{l}.weight"] = rnd(6, 4, 3, 3) / 6
        t[f"distill.gkd.adapter.{l}.bias"] = rnd(6) / 6
    all_boxes = [
        (0, [2.5, 3.5, 20.5, 17.5], 0),   # level 0
        (0, [10.5, 1.5, 47.5, 41.5], 2),  # level 1
        (0, [25.5, 26.5, 27.5, 29.5], 1),  # level 0, empty extent: one cell
        (1, [0.5, 0.5, 9.5, 6.5], 1),     # level 0
        (1, [5.5, 18.5, 36.5, 47.5], 0),  # level 0 (31 x 29), overlapping the next
        (1, [1.5, 2.5, 45.5, 44.5], 1),   # level 1
    ]
    if not boxes:
        all_boxes = []
    t["boxes"] = torch.tensor([b for _, b, _ in all_boxes], dtype=DTYPE).reshape(-1, 4)
    t["box_image"] = torch.tensor([i for i, _, _ in all_boxes], dtype=torch.int64)
    t["labels"] = torch.tensor([c for _, _, c in all_boxes], dtype=torch.int64)
    anchors = 36 + 9
    pos = [(7, 0), (8, 0), (40, 1), (42, 1), (33, 2), (anchors + 1, 3),
           (anchors + 20, 4), (anchors + 26, 4), (anchors + 40, 5), (anchors + 44, 5)]
    if not (positives and boxes):
        pos = []
    pos.sort()
    t["positives"] = torch.tensor([p for p, _ in pos], dtype=torch.int64)
    t["positive_gt"] = torch.tensor([q for _, q in pos], dtype=torch.int64)
    if with_prototypes:
        for l, lab in enumerate([[0, 0, 1, 2], [0, 1, 1]]):
            t[f"prototypes.{l}.student"] = rnd(len(lab), 4)
            t[f"prototypes.{l}.teacher"] = rnd(len(lab), 6)
            t[f"prototypes.{l}.labels"] = torch.tensor(lab, dtype=torch.int64)
    return t


def clusters(seed, dims_s, dims_t, classes):
    """Per class: tight clusters of different sizes around random centres plus scattered outliers
    (about 40 % of the rows, so that the density quantile keeps the clusters); the teacher's rows have
    the same cluster membership around their own random centres."""
    g = torch.Generator().manual_seed(seed)
    feats_s, feats_t, labels = [], [], []
    for c, sizes in enumerate(classes):
        centres_s = torch.randn(len(sizes), dims_s, generator=g, dtype=DTYPE) * 3
        centres_t = torch.randn(len(sizes), dims_t, generator=g, dtype=DTYPE) * 3
        for k, n in enumerate(sizes):
            feats_s.append(centres_s[k] + 0.15 * torch.randn(n, dims_s, generator=g, dtype=DTYPE))
            feats_t.append(centres_t[k] + 0.15 * torch.randn(n, dims_t, generator=g, dtype=DTYPE))
            labels += [c] * n
        outliers = int(0.7 * sum(sizes)) + 1
        feats_s.append(torch.randn(outliers, dims_s, generator=g, dtype=DTYPE))
        feats_t.append(torch.randn(outliers, dims_t, generator=g, dtype=DTYPE))
        labels += [c] * outliers
    return {
        "student": torch.cat(feats_s),
        "teacher": torch.cat(feats_t),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


def cases():
    base = {"op": "gkd", "strides": "8,16", "num_classes": "3", "epoch": "1", "num_epochs": "4"}
    yield "gkd_released", base, gkd_inputs(1)
    yield "gkd_first_epoch", dict(base, epoch="0"), gkd_inputs(2, with_prototypes=False)
    yield "gkd_global_cosine", dict(base, **{"global": "cosine"}), gkd_inputs(3)
    yield ("gkd_global_soft_assignment", dict(base, **{"global": "soft_assignment", "global_temperature": "0.2"}),
           gkd_inputs(4))
    yield "gkd_no_positives", dict(base, epoch="3"), gkd_inputs(5, positives=False)
    yield "gkd_background_only", dict(base, **{"global": "cosine"}), gkd_inputs(6, boxes=False)
    yield ("gkd_unweighted", dict(base, robust_weights="false", attenuation="false", temperature="4",
                                  level_base_scale="20"), gkd_inputs(7))
    pgm = {"op": "gkd_prototypes", "num_classes": "3"}
    yield "gkd_prototypes_clusters", pgm, clusters(11, 8, 12, [[9, 7, 5], [12, 4], [6, 6, 6, 5]])
    # Class 1 has one box (no candidate), class 2 none at all.
    small = clusters(12, 5, 7, [[8, 6]])
    small["student"] = torch.cat([small["student"], torch.randn(1, 5, dtype=DTYPE, generator=torch.Generator().manual_seed(3))])
    small["teacher"] = torch.cat([small["teacher"], torch.randn(1, 7, dtype=DTYPE, generator=torch.Generator().manual_seed(4))])
    small["labels"] = torch.cat([small["labels"], torch.tensor([1])])
    yield "gkd_prototypes_sparse_classes", pgm, small


def main():
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, meta, tensors in cases():
        case = {"name": name, "meta": meta, "tensors": tensors}
        results = gkd_peer(case) if meta["op"] == "gkd" else prototypes_peer(case)
        out = dict(tensors)
        out.update({f"expected.{k}": v.detach().contiguous() for k, v in results.items()})
        path = OUT_DIR / f"{name}.safetensors"
        write_safetensors(path, out, meta)
        check_roundtrip(path, out, meta)
        size = path.stat().st_size
        assert size <= MAX_FILE_BYTES, (path, size)
        summary = ", ".join(f"{k}={float(v):.6g}" for k, v in results.items() if v.numel() == 1)
        print(f"{path.name}: {size} bytes {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
