"""Golden fixtures for the HGD engineering proposal (src/distill/hgd), from PyTorch.

HGD's paper gave no code or formulas; these fixtures pin detkd's *proposal* (shared/spec/methods.md
section 5), written here in PyTorch with autograd, float64 on the CPU:

- correspondence ``S_hat = conv1x1(F.interpolate(S, size(T), mode='bilinear', align_corners=False))``
  (the resize skipped when the sizes agree);
- micro weights, detached: ``w = lambda_gt * 1[cell in GT] + (1 - lambda_gt) * H * W *
  softmax_p(mean_c |T| / tau)`` per image, a cell being in GT when its centre ``((x + 0.5) s,
  (y + 0.5) s)`` lies in a box (edges included), and a box covering no centre marking the cell of
  its own centre;
- ``L_k = sum(w * (S_hat - T)^2) / (C * sum(w))``, macro weights ``lambda_k = K * L_k / sum(L)``
  (detached), ``L = gamma * sum_k lambda_k L_k``.

What it makes: ``tests/fixtures/methods/hgd_<case>.safetensors`` with the inputs of the ``detkd
parity`` op ``hgd`` (src/parity/hgd.rs documents names and metadata) and PyTorch's ``expected.loss``,
``expected.loss_hgd_proposal`` and ``expected.grad.<student input or adapter parameter>``.

Box corners sit away from cell centres, so a rounding of the coordinates cannot move a cell in or
out of a box.

How to run, from the repository root, with the pinned peer environment::

    .venv-peer/bin/python scripts/make_fixtures_hgd.py

Inputs come from a torch.Generator with a fixed per-case seed; files are written by
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
MAX_FILE_BYTES = 64 * 1024


def gt_cells(boxes, stride, h, w):
    inside = torch.zeros(h, w, dtype=DTYPE)
    cy = (torch.arange(h, dtype=DTYPE) + 0.5) * stride
    cx = (torch.arange(w, dtype=DTYPE) + 0.5) * stride
    for b in boxes:
        rows = (cy >= b[1]) & (cy <= b[3])
        cols = (cx >= b[0]) & (cx <= b[2])
        cells = rows[:, None] & cols[None, :]
        if cells.any():
            inside[cells] = 1
        else:
            y = min(max(math.floor((b[1] + b[3]) / 2 / stride), 0), h - 1)
            x = min(max(math.floor((b[0] + b[2]) / 2 / stride), 0), w - 1)
            inside[y, x] = 1
    return inside


def hgd_peer(meta, x):
    tau = float(meta.get("temperature", "0.5"))
    lam = float(meta.get("gt_share", "0.5"))
    gamma = float(meta.get("gamma", "1"))
    micro = meta.get("micro_weighting", "true") == "true"
    macro = meta.get("macro_weighting", "true") == "true"
    strides = [float(s) for s in meta["stage_strides"].split(",")]
    strides += [float(s) for s in meta["fpn_strides"].split(",")] if "fpn_strides" in meta else []
    names = sorted(k for k in x if k.startswith("student.stage."))
    names += sorted(k for k in x if k.startswith("student.fpn."))
    student = {k: x[k].clone().requires_grad_(True) for k in names}
    params = {k: v.clone().requires_grad_(True) for k, v in x.items() if k.startswith("distill.")}
    per_image = [[] for _ in range(student[names[0]].shape[0])]
    for b, i in zip(x["boxes"].tolist(), x["box_image"].tolist()):
        per_image[i].append(b)
    losses = []
    for k, name in enumerate(names):
        s, t = student[name], x[name.replace("student.", "teacher.")]
        bsz, c, h, w = t.shape
        if s.shape[2:] != t.shape[2:]:
            s = F.interpolate(s, size=(h, w), mode="bilinear", align_corners=False)
        s_hat = F.conv2d(s, params[f"distill.hgd.adapter.{k}.weight"], params[f"distill.hgd.adapter.{k}.bias"])
        diff2 = (s_hat - t) ** 2
        if micro:
            with torch.no_grad():
                act = t.abs().mean(1).reshape(bsz, h * w)
                soft = torch.softmax(act / tau, dim=1).reshape(bsz, h, w) * (1 - lam) * h * w
                gt = torch.stack([gt_cells(per_image[i], strides[k], h, w) for i in range(bsz)])
                omega = (lam * gt + soft)[:, None]
            total = float(omega.sum())
            losses.append((omega * diff2).sum() / (c * total) if total > 0 else diff2.sum() * 0)
        else:
            losses.append(diff2.mean())
    values = torch.stack([l.detach() for l in losses])
    lambdas = values / values.sum() * len(losses) if macro and values.sum() > 0 else torch.ones_like(values)
    loss = gamma * sum(lw * l for lw, l in zip(lambdas, losses))
    inputs = list(student.values()) + list(params.values())
    grads = torch.autograd.grad(loss, inputs)
    out = {"loss": loss.detach().reshape(()), "loss_hgd_proposal": loss.detach().reshape(())}
    for name, g in zip(list(student) + list(params), grads):
        out[f"grad.{name}"] = g
    return out


def inputs(seed, boxes=True, student_sizes=(8, 4, 4, 2), teacher_sizes=(8, 4, 4, 2)):
    """B = 2 images of 32 px: backbone stages at strides 4 and 8, FPN levels at 8 and 16; student widths
    (2, 3 | 2), teacher widths (3, 4 | 4). `student_sizes` lets stages be coarser than the teacher's."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=DTYPE)
    t = {}
    widths = [(2, 3), (3, 4), (2, 4), (2, 4)]
    kinds = ["stage.0", "stage.1", "fpn.0", "fpn.1"]
    for k, (kind, (cs, ct), hs, ht) in enumerate(zip(kinds, widths, student_sizes, teacher_sizes)):
        t[f"student.{kind}"] = rnd(2, cs, hs, hs)
        t[f"teacher.{kind}"] = rnd(2, ct, ht, ht) * (1 + k)
        t[f"distill.hgd.adapter.{k}.weight"] = rnd(ct, cs, 1, 1) / 2
        t[f"distill.hgd.adapter.{k}.bias"] = rnd(ct) / 4
    all_boxes = [(0, [3.1, 5.3, 17.2, 13.4]), (0, [21.3, 22.6, 22.9, 23.7]), (1, [0.7, 9.2, 30.9, 29.1])]
    if not boxes:
        all_boxes = []
    t["boxes"] = torch.tensor([b for _, b in all_boxes], dtype=DTYPE).reshape(-1, 4)
    t["box_image"] = torch.tensor([i for i, _ in all_boxes], dtype=torch.int64)
    return t


def cases():
    base = {"op": "hgd", "stage_strides": "4,8", "fpn_strides": "8,16"}
    yield "hgd_default", base, inputs(1)
    yield "hgd_resized_student", base, inputs(2, student_sizes=(4, 3, 4, 2))
    yield "hgd_micro_off", dict(base, micro_weighting="false"), inputs(3)
    yield "hgd_macro_off", dict(base, macro_weighting="false", gamma="2", temperature="0.25",
                                gt_share="0.8"), inputs(4)
    yield "hgd_no_boxes", base, inputs(5, boxes=False)


def main():
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, meta, tensors in cases():
        results = hgd_peer(meta, tensors)
        out = dict(tensors)
        out.update({f"expected.{k}": v.detach().contiguous() for k, v in results.items()})
        path = OUT_DIR / f"{name}.safetensors"
        write_safetensors(path, out, meta)
        check_roundtrip(path, out, meta)
        size = path.stat().st_size
        assert size <= MAX_FILE_BYTES, (path, size)
        print(f"{path.name}: {size} bytes loss={float(results['loss']):.6g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
