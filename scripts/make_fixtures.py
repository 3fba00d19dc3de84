"""Golden RoIAlign fixtures from torchvision, for the Rust peer-fixture tests.

What it makes: one file per case, ``tests/fixtures/roi_align/<case>.safetensors``, holding float64
inputs (features, rois, grad_out) and torchvision's forward output and input gradient
(``expected.output``, ``expected.grad_features``; multilevel cases use ``features.<l>`` and
``expected.grad_features.<l>``, finest level first). The op's parameters are in the safetensors
``__metadata__`` string map: op, output_size ("PH,PW"), sampling_ratio, aligned ("true"/"false"),
and spatial_scale (single level) or spatial_scales + level_rule (multilevel). Semantics are those
of spec/kernels.md B1 and spec/methods.md 6.1.

How to run, from the repository root, with the pinned peer environment::

    python -m venv .venv-peer
    .venv-peer/bin/pip install -r scripts/requirements-fixtures.txt
    .venv-peer/bin/python scripts/make_fixtures.py

Every input comes from a torch.Generator with a fixed per-case seed and everything is computed in
float64 on the CPU, so a rerun rewrites byte-identical files. The files are serialised by
``write_safetensors`` below (sorted keys) rather than ``safetensors.torch.save_file``, whose
metadata order varies from process to process; each written file is read back with the
safetensors library and compared.

Inputs are kept away from kinks, so that an f32 implementation lands on the same side as
torchvision's f64 one: adaptive grid sizes away from integer ratios, sample coordinates away from
the -1 / H / W cut-offs, box sizes away from level thresholds. Cases that are meant to sit on
such points (tv_reference, the degenerate cases) skip the coordinate checks.
"""

import json
import math
import struct
import sys
from pathlib import Path

import torch
import torchvision
from safetensors import safe_open
from torchvision.ops import roi_align

OUT_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "roi_align"
DTYPE = torch.float64
MAX_FILE_BYTES = 64 * 1024
MAX_TOTAL_BYTES = 600 * 1024
KINK_MARGIN = 1e-3


# ----------------------------------------------------------------------------------------------
# Serialisation


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
            assert got.dtype == DTYPE and got.shape == t.shape and torch.equal(got, t), (path, name)


# ----------------------------------------------------------------------------------------------
# Peer computation


def level_of(rois, rule, scales):
    """Level index (0 = finest) of each RoI, and the log2 argument whose floor picks it."""
    w = rois[:, 3] - rois[:, 1]
    h = rois[:, 4] - rois[:, 2]
    size = torch.sqrt(w * h)
    n_levels = len(scales)
    if rule == "detectron2":
        min_level = round(-math.log2(scales[0]))
        max_level = min_level + n_levels - 1
        raw = 4 + torch.log2(size / 224 + 1e-8)
        level = torch.clamp(torch.floor(raw), min_level, max_level) - min_level
    elif rule == "mmdet":
        raw = torch.log2(size / 56 + 1e-6)
        level = torch.clamp(torch.floor(raw), 0, n_levels - 1)
    else:
        raise ValueError(rule)
    return level.to(torch.int64), raw


def forward_backward(feats, rois, grad_out, p):
    """torchvision forward and d(sum(out * grad_out))/d(features) for one case."""
    feats = [f.clone().requires_grad_(True) for f in feats]
    out_size = tuple(p["output_size"])
    if p["op"] == "roi_align":
        out = roi_align(feats[0], rois, out_size, p["spatial_scale"], p["sampling_ratio"], p["aligned"])
    else:
        levels, _ = level_of(rois, p["level_rule"], p["spatial_scales"])
        k, c = rois.shape[0], feats[0].shape[1]
        out = torch.zeros((k, c) + out_size, dtype=DTYPE)
        for lvl, (f, scale) in enumerate(zip(feats, p["spatial_scales"])):
            idx = torch.nonzero(levels == lvl).flatten()
            res = roi_align(f, rois[idx], out_size, scale, p["sampling_ratio"], p["aligned"])
            out[idx] = res
    grads = torch.autograd.grad((out * grad_out).sum(), feats, allow_unused=True)
    grads = [torch.zeros_like(f) if g is None else g for f, g in zip(feats, grads)]
    return out.detach(), [g.detach() for g in grads]


# ----------------------------------------------------------------------------------------------
# Kink guards


def assert_away_from_integer(values, what, margin=KINK_MARGIN):
    dist = (values - torch.round(values)).abs()
    assert bool((dist > margin).all()), f"{what} too close to an integer: {values.tolist()}"


def check_kinks(rois, h, w, scale, p):
    """Fail where an f32 implementation could take another branch than torchvision's f64 one."""
    ph, pw = p["output_size"]
    off = 0.5 if p["aligned"] else 0.0
    x0, y0 = rois[:, 1] * scale - off, rois[:, 2] * scale - off
    rw, rh = rois[:, 3] * scale - off - x0, rois[:, 4] * scale - off - y0
    if not p["aligned"]:
        sides = torch.cat([rw, rh])
        assert bool(((sides - 1).abs() > KINK_MARGIN).all()), f"unaligned side near the clamp at 1: {sides.tolist()}"
        rw, rh = rw.clamp(min=1.0), rh.clamp(min=1.0)
    sr = p["sampling_ratio"]
    if sr > 0:
        gh = torch.full_like(rh, sr)
        gw = torch.full_like(rw, sr)
    else:
        assert_away_from_integer(rh / ph, "adaptive grid rh/PH")
        assert_away_from_integer(rw / pw, "adaptive grid rw/PW")
        gh, gw = torch.ceil(rh / ph), torch.ceil(rw / pw)
    for r in range(rois.shape[0]):
        for start, extent, bins, grid, limit, axis in (
            (y0[r], rh[r], ph, int(gh[r]), h, "y"),
            (x0[r], rw[r], pw, int(gw[r]), w, "x"),
        ):
            steps = torch.arange(bins * grid, dtype=DTYPE)
            samples = start + (steps + 0.5) * (extent / bins) / grid
            near = torch.minimum((samples + 1).abs(), (samples - limit).abs())
            assert bool((near > KINK_MARGIN).all()), f"roi {r}: {axis} sample at a cut-off"


# ----------------------------------------------------------------------------------------------
# Case builders


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(g, *shape):
    return torch.randn(*shape, generator=g, dtype=DTYPE)


def uniform(g, lo, hi, n):
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=DTYPE)


def rois_from(batch, boxes):
    batch = torch.as_tensor(batch, dtype=DTYPE).reshape(-1, 1)
    boxes = torch.as_tensor(boxes, dtype=DTYPE).reshape(-1, 4)
    return torch.cat([batch, boxes], dim=1)


def boxes_inside(g, k, img_w, img_h, min_side, max_side):
    """k boxes with random sides in [min_side, max_side] (clipped to the image) lying in the image."""
    bw = uniform(g, min_side, max_side, k).clamp(max=img_w * 0.999)
    bh = uniform(g, min_side, max_side, k).clamp(max=img_h * 0.999)
    x1 = uniform(g, 0, 1, k) * (img_w - bw)
    y1 = uniform(g, 0, 1, k) * (img_h - bh)
    return torch.stack([x1, y1, x1 + bw, y1 + bh], dim=1)


def single(name, seed, n, c, h, w, out, scale, sr, aligned, make_rois, kink_checks=True):
    g = gen(seed)
    feats = randn(g, n, c, h, w)
    rois = make_rois(g, w / scale, h / scale)
    p = dict(op="roi_align", output_size=out, spatial_scale=scale, sampling_ratio=sr, aligned=aligned)
    if kink_checks:
        check_kinks(rois, h, w, scale, p)
    return name, g, [feats], rois, p


def build_cases():
    cases = []

    # torchvision's own test_backward input (seed 0 of its parametrisation): integer boxes on purpose.
    g = gen(0)
    x = torch.rand(1, 8, 5, 5, generator=g, dtype=DTYPE)
    rois = rois_from([0, 0, 0], [[0, 0, 4, 4], [0, 2, 3, 4], [2, 2, 4, 4]])
    p = dict(op="roi_align", output_size=(2, 2), spatial_scale=1.0, sampling_ratio=1, aligned=False)
    cases.append(("tv_reference", g, [x], rois, p))

    cases.append(single(
        "aligned_fixed", 101, 2, 3, 10, 12, (3, 3), 0.5, 2, True,
        lambda g, iw, ih: rois_from([0, 1, 1, 0, 1, 0], boxes_inside(g, 6, iw, ih, 1.5, 18.0)),
    ))

    # Big boxes (grid 2..3 per bin at 4x4 on a 10x12 map) and sub-pixel ones (clamped to 1x1).
    def unaligned_rois(g, iw, ih):
        big = boxes_inside(g, 3, iw, ih, 17.0, 23.0)
        mid = boxes_inside(g, 2, iw, ih, 3.0, 12.0)
        tiny = boxes_inside(g, 2, iw, ih, 0.2, 1.2)
        return rois_from([1, 0, 1, 0, 1, 1, 0], torch.cat([big, mid, tiny]))

    cases.append(single("unaligned_adaptive", 102, 2, 3, 10, 12, (4, 4), 0.5, -1, False, unaligned_rois))

    def aligned_adaptive_rois(g, iw, ih):
        big = boxes_inside(g, 3, iw, ih, 45.0, 78.0)
        small = boxes_inside(g, 3, iw, ih, 4.0, 25.0)
        return rois_from([0, 1, 1, 0, 0, 1], torch.cat([big, small]))

    cases.append(single("aligned_adaptive", 103, 2, 2, 16, 20, (7, 7), 0.25, 0, True, aligned_adaptive_rois))

    # Map 10x12 at scale 0.5: image 24 wide, 20 high; samples count for x in [-1, 25], y in [-1, 21].
    def outside_rois(g, iw, ih):
        boxes = [
            [-6.3, 3.1, 7.7, 14.9],      # through the left edge
            [17.2, 2.6, 31.4, 12.3],     # through the right edge
            [4.4, -8.2, 15.6, 6.9],      # through the top edge
            [6.1, 13.3, 19.8, 27.5],     # through the bottom edge
            [-5.7, -4.9, 30.3, 26.1],    # larger than the image on all sides
            [26.3, 4.2, 33.9, 11.7],     # wholly right of the map: zero
            [3.3, 22.4, 12.8, 29.6],     # wholly below the map: zero
            [-14.6, -12.2, -3.1, -2.4],  # wholly at negative coordinates: zero
            [-0.97, 5.3, -0.12, 9.8],    # left of the image but within the -1 band: clamped to column 0
            [24.15, 11.2, 24.93, 16.7],  # right of the image within the band: clamped to column W-1
            [-2.7, 1.35, 0.6, 8.25],     # straddles x = -1: some samples dropped but counted
            [9.1, 18.6, 14.45, 23.15],   # straddles y = H: some samples dropped but counted
        ]
        return rois_from([0, 1, 0, 1, 0, 1, 0, 1, 1, 0, 1, 0], boxes)

    cases.append(single("outside_boxes", 104, 2, 2, 10, 12, (3, 3), 0.5, 2, True, outside_rois))

    # Map 8x9 at scale 0.5: image 18 wide, 16 high. (batch, box, exactly one side reversed)
    degenerate = [
        (0, [5.3, 2.7, 5.3, 11.1], False),      # zero width
        (1, [2.2, 6.65, 13.9, 6.65], False),    # zero height
        (0, [7.45, 9.15, 7.45, 9.15], False),   # zero area (a point)
        (1, [12.6, 3.4, 4.1, 10.2], True),      # x2 < x1
        (0, [3.7, 12.9, 11.3, 5.05], True),     # y2 < y1
        (1, [14.2, 13.3, 6.6, 1.9], False),     # both reversed
        (1, [8.21, 4.37, 8.211, 4.372], False),  # tiny (1e-3 x 2e-3)
        (0, [1.15, 10.6, 1.45, 11.0], False),   # sub-pixel
        (1, [2.35, 1.85, 15.2, 13.4], False),   # ordinary box, for scale
    ]
    for name, seed, sr, aligned in (
        ("degenerate_aligned", 105, 0, True),
        ("degenerate_unaligned", 106, 2, False),
        ("degenerate_aligned_fixed", 107, 2, True),
    ):
        # torchvision's CPU kernel cannot run aligned + adaptive on a box with exactly one side
        # reversed: its grid is ceil(negative) x ceil(positive) and the pre-computed sample table
        # gets a negative length ("cannot create std::vector larger than max_size()"). By the
        # spec such a box has no samples and gives zeros; those boxes are left out here.
        rows = [(b, box) for b, box, one_reversed in degenerate if not (aligned and sr <= 0 and one_reversed)]
        rois = rois_from([b for b, _ in rows], [box for _, box in rows])
        cases.append(single(name, seed, 2, 2, 8, 9, (3, 3), 0.5, sr, aligned,
                            lambda g, iw, ih, rois=rois: rois, kink_checks=False))

    cases.append(single(
        "last_batch_index", 108, 3, 2, 8, 10, (3, 2), 0.5, 2, True,
        lambda g, iw, ih: rois_from([0, 2, 2, 1, 2], boxes_inside(g, 5, iw, ih, 2.0, 15.0)),
    ))

    cases.append(single(
        "empty_rois", 109, 2, 3, 5, 6, (2, 2), 0.5, 2, True,
        lambda g, iw, ih: torch.zeros(0, 5, dtype=DTYPE),
    ))

    for name, seed, rule, sr in (
        ("multilevel_detectron2", 110, "detectron2", 2),
        ("multilevel_mmdet", 111, "mmdet", 0),
    ):
        cases.append(multilevel(name, seed, rule, sr))
    return cases


def multilevel(name, seed, rule, sr):
    """Image 128x160 (HxW), levels at 1/4..1/32, two RoIs per level, N=2, C=1.

    C is 1 (not 3) to keep the file under 64 KiB: the four float64 maps and their gradients
    already take 54 KB at N=2, C=1.
    """
    g = gen(seed)
    img_h, img_w = 128, 160
    scales = [0.25, 0.125, 0.0625, 0.03125]
    n, c = 2, 1
    feats = [randn(g, n, c, int(img_h * s), int(img_w * s)) for s in scales]
    # sqrt(area) per RoI: both rules switch level at 112, 224 and 448 px.
    target = torch.tensor([40.0, 90.0, 130.0, 200.0, 250.0, 400.0, 500.0, 620.0], dtype=DTYPE)
    size = target * uniform(g, 0.95, 1.05, 8)
    aspect = torch.exp(uniform(g, -0.7, 0.7, 8))
    bw, bh = size * torch.sqrt(aspect), size / torch.sqrt(aspect)
    # Boxes that fit are placed inside the image; larger ones are centred at a random point in it.
    cx = torch.where(bw < img_w, bw / 2 + uniform(g, 0, 1, 8) * (img_w - bw).clamp(min=0), uniform(g, 0, img_w, 8))
    cy = torch.where(bh < img_h, bh / 2 + uniform(g, 0, 1, 8) * (img_h - bh).clamp(min=0), uniform(g, 0, img_h, 8))
    boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=1)
    rois = rois_from([0, 1, 1, 0, 0, 1, 1, 0], boxes)
    p = dict(op="roi_align_multilevel", output_size=(7, 7), sampling_ratio=sr, aligned=True,
             spatial_scales=scales, level_rule=rule)
    levels, raw = level_of(rois, rule, scales)
    assert_away_from_integer(raw, f"{name}: level log2 argument", margin=0.02)
    for lvl, (f, s) in enumerate(zip(feats, scales)):
        idx = levels == lvl
        assert bool(idx.any()), f"{name}: level {lvl} gets no RoI ({levels.tolist()})"
        check_kinks(rois[idx], f.shape[2], f.shape[3], s, p)
    return name, g, feats, rois, p


# ----------------------------------------------------------------------------------------------


def metadata_of(p):
    m = {
        "op": p["op"],
        "output_size": "%d,%d" % tuple(p["output_size"]),
        "sampling_ratio": str(p["sampling_ratio"]),
        "aligned": "true" if p["aligned"] else "false",
    }
    if p["op"] == "roi_align":
        m["spatial_scale"] = repr(float(p["spatial_scale"]))
    else:
        m["spatial_scales"] = ",".join(repr(float(s)) for s in p["spatial_scales"])
        m["level_rule"] = p["level_rule"]
    return m


def main():
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    cases = build_cases()
    names = [case[0] for case in cases]
    assert len(set(names)) == len(names)
    for stale in OUT_DIR.glob("*.safetensors"):
        if stale.stem not in names:
            stale.unlink()
    total = 0
    for name, g, feats, rois, p in cases:
        k, c = rois.shape[0], feats[0].shape[1]
        grad_out = randn(g, k, c, *p["output_size"])
        out, grads = forward_backward(feats, rois, grad_out, p)
        assert bool(torch.isfinite(out).all()) and all(bool(torch.isfinite(gr).all()) for gr in grads)
        tensors = {"rois": rois, "grad_out": grad_out, "expected.output": out}
        if p["op"] == "roi_align":
            tensors["features"] = feats[0]
            tensors["expected.grad_features"] = grads[0]
        else:
            for lvl, (f, gr) in enumerate(zip(feats, grads)):
                tensors[f"features.{lvl}"] = f
                tensors[f"expected.grad_features.{lvl}"] = gr
        tensors = {key: t.contiguous() for key, t in tensors.items()}
        meta = metadata_of(p)
        path = OUT_DIR / f"{name}.safetensors"
        write_safetensors(path, tensors, meta)
        check_roundtrip(path, tensors, meta)
        size = path.stat().st_size
        total += size
        assert size < MAX_FILE_BYTES, f"{path} is {size} bytes"
        line = f"{name:26s} K={k:2d} C={c} {size:6d} B"
        if p["op"] != "roi_align":
            levels, _ = level_of(rois, p["level_rule"], p["spatial_scales"])
            line += f"  levels={levels.tolist()}"
        print(line)
    assert total < MAX_TOTAL_BYTES, f"fixtures total {total} bytes"
    print(f"{len(cases)} files, {total} bytes in {OUT_DIR}")


if __name__ == "__main__":
    sys.exit(main())
