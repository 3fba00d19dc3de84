#!/usr/bin/env python3
"""PyTorch/torchvision peers of detkd's kernels, timed on the same shapes as the criterion benches, with the
achieved bandwidth as a percentage of a device-to-device copy measured in the same run.

Usage (gpu-pack/run.sh calls it after the Rust benches, so both sides come from one machine at one time):

    python3 bench_peer.py [--device cuda|cpu] [--criterion DIR] [--quick] [--only NAME,...] [--out FILE.md]

--criterion DIR   criterion's output folder of the same run (CRITERION_HOME); detkd's medians are read from
                  every <bench>/new/{benchmark,estimates}.json there and matched by full id
                  (`<group>/<device>/...`), so the table shows ours, the peer's and their ratio side by side.
--quick           tiny shapes (checks the script itself; no detkd rows are matched then)
--only            comma-separated case names (see CASES)

Timing: CUDA events around each call after warm-up, median of the repetitions (perf_counter on the CPU).
"Bytes" is the least traffic the op needs (each input read once, each output written once; for RoIAlign the
pooled windows of the input, for its backward the zero-filled gradient maps), so "% copy" is the fraction of the
measured copy bandwidth that the time implies — a lower bound on how close to memory speed the op runs.
"""

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

try:
    import torchvision
except ImportError:  # RoIAlign and focal peers need it; the others do not
    torchvision = None


# ---------------------------------------------------------------------------------------------------------
# Timing


def timer(device):
    def measure(fn, reps, warmup=3):
        for _ in range(warmup):
            fn()
        times = []
        if device.type == "cuda":
            torch.cuda.synchronize()
            for _ in range(reps):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
        else:
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    return measure


def copy_bandwidth(device, measure, quick):
    """Bytes/s of a device-to-device copy (read + write counted), 256 MiB (8 MiB quick)."""
    n = (8 if quick else 256) * 2**20 // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    seconds = measure(lambda: dst.copy_(src), reps=10 if quick else 50)
    return 2 * n * 4 / seconds


# ---------------------------------------------------------------------------------------------------------
# Cases: each returns {"forward": fn, "forward_backward": fn, "bytes": {...}} on the given device.


def fpn_rois(device, k, quick, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = (64, 96) if quick else (800, 1344)
    cx, cy = torch.rand(k, generator=g) * w, torch.rand(k, generator=g) * h
    side = torch.exp(torch.rand(k, generator=g) * math.log(h / 8)) * 8
    aspect = torch.exp((torch.rand(k, generator=g) - 0.5) * math.log(4))
    bw, bh = side * aspect.sqrt(), side / aspect.sqrt()
    boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1).clamp(min=0)
    batch = torch.randint(0, 2, (k, 1), generator=g).float()
    return torch.cat([batch, boxes], 1).to(device), (h, w)


def detectron2_levels(rois, k_min=2, k_max=5):
    area = (rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])
    lvl = torch.floor(4 + torch.log2(area.clamp(min=0).sqrt() / 224 + 1e-8))
    return lvl.clamp(k_min, k_max).long() - k_min


def window_bytes(rois, levels, scales, shapes, channels, b=4):
    """Σ over RoIs of its window (+1-cell border) on its level, capped by the level's map."""
    total = 0
    for r, lvl in zip(rois.tolist(), levels.tolist()):
        s, (h, w) = scales[lvl], shapes[lvl]
        cw = min(w, math.ceil((r[3] - r[1]) * s) + 2)
        ch = min(h, math.ceil((r[4] - r[2]) * s) + 2)
        total += cw * ch
    return b * channels * total


def case_roi_align_fpn(device, quick, sampling):
    if torchvision is None:
        raise RuntimeError("torchvision is not installed")
    c = 16 if quick else 256
    k = 64 if quick else 1024
    rois, (h, w) = fpn_rois(device, k, quick)
    scales = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    shapes = [(math.ceil(h * s), math.ceil(w * s)) for s in scales]
    feats = [torch.randn(2, c, fh, fw, device=device, requires_grad=True) for fh, fw in shapes]
    levels = detectron2_levels(rois)
    index = [torch.nonzero(levels == lvl).flatten() for lvl in range(4)]

    def forward():
        out = feats[0].new_zeros(k, c, 7, 7)
        for lvl in range(4):
            if len(index[lvl]):
                out[index[lvl]] = torchvision.ops.roi_align(
                    feats[lvl], rois[index[lvl]], 7, scales[lvl], sampling, aligned=True
                )
        return out

    grad = torch.randn(k, c, 7, 7, device=device)

    def forward_backward():
        for f in feats:
            f.grad = None
        forward().backward(grad)

    out_bytes = 4 * k * c * 49
    fmap_bytes = sum(4 * 2 * c * fh * fw for fh, fw in shapes)
    return {
        "forward": lambda: forward(),
        "forward_backward": forward_backward,
        "bytes_forward": out_bytes + window_bytes(rois, levels, scales, shapes, c),
        "bytes_forward_backward": 2 * out_bytes + window_bytes(rois, levels, scales, shapes, c) + fmap_bytes,
    }


def case_cosine_gram(device, quick, m, d):
    if quick:
        m, d = 64, 96
    x = torch.randn(m, d, device=device, requires_grad=True)
    grad = torch.randn(m, m, device=device)

    def forward():
        xn = F.normalize(x, dim=1)
        return xn @ xn.t()

    def forward_backward():
        x.grad = None
        forward().backward(grad)

    return {
        "forward": forward,
        "forward_backward": forward_backward,
        "bytes_forward": 4 * (m * d + m * m),
        "bytes_forward_backward": 4 * (2 * m * d + 2 * m * m),
        "flops_forward": 2 * m * m * d,
    }


def case_dsig_edge(device, quick, m, d):
    if quick:
        m, d = 64, 96
    s = torch.randn(m, d, device=device, requires_grad=True)
    t = torch.randn(m, d, device=device)

    def loss():
        sn, tn = F.normalize(s, dim=1), F.normalize(t, dim=1)
        return 0.5 * ((sn @ sn.t() - tn @ tn.t()) ** 2).mean()

    def forward_backward():
        s.grad = None
        loss().backward()

    return {
        "forward": loss,
        "forward_backward": forward_backward,
        "bytes_forward": 4 * 2 * m * d,
        "bytes_forward_backward": 4 * 3 * m * d,
    }


def case_graph_conv(device, quick):
    m, din, dout = (32, 16, 16) if quick else (1024, 256, 256)
    x = torch.randn(m, din, device=device, requires_grad=True)
    a = torch.rand(m, m, device=device, requires_grad=True)
    wgt = torch.randn(din, dout, device=device, requires_grad=True)
    bias = torch.randn(dout, device=device, requires_grad=True)
    eye = torch.eye(m, device=device)
    grad = torch.randn(m, dout, device=device)

    def forward():
        at = a + eye
        dinv = at.sum(1).rsqrt()
        return (dinv[:, None] * at * dinv[None, :]) @ x @ wgt + bias

    def forward_backward():
        for p in (x, a, wgt, bias):
            p.grad = None
        forward().backward(grad)

    return {
        "forward": forward,
        "forward_backward": forward_backward,
        "bytes_forward": 4 * (m * m + m * din + din * dout + m * dout),
        "bytes_forward_backward": 4 * 2 * (m * m + m * din + din * dout + m * dout),
    }


def case_glore_project(device, quick):
    b, s, n, length = (2, 8, 4, 96) if quick else (2, 128, 64, 200 * 336)
    v = torch.randn(b, s, length, device=device, requires_grad=True)
    bp = torch.randn(b, n, length, device=device, requires_grad=True)
    grad = torch.randn(b, s, n, device=device)

    def forward():
        return v @ bp.transpose(1, 2)

    def forward_backward():
        v.grad = bp.grad = None
        forward().backward(grad)

    read = 4 * b * (s + n) * length
    return {
        "forward": forward,
        "forward_backward": forward_backward,
        "bytes_forward": read,
        "bytes_forward_backward": 3 * read,
    }


def case_soft_assignment(device, quick, rows):
    n, d, k = (256, 32, 16) if quick else (rows, 256, 800)
    x = torch.randn(n, d, device=device, requires_grad=True)
    p = torch.randn(k, d, device=device, requires_grad=True)
    grad = torch.randn(n, k, device=device)
    tau = float(d)

    def forward():
        dist = (x * x).sum(1, keepdim=True) - 2 * x @ p.t() + (p * p).sum(1)[None, :]
        return torch.softmax(-dist / tau, dim=1)

    def forward_backward():
        x.grad = p.grad = None
        forward().backward(grad)

    return {
        "forward": forward,
        "forward_backward": forward_backward,
        "bytes_forward": 4 * (n * d + k * d + n * k),
        "bytes_forward_backward": 4 * (2 * n * d + 2 * k * d + 2 * n * k),
        "flops_forward": 2 * n * k * d,
    }


def case_focal(device, quick, kind):
    anchors, classes = (2000, 8) if quick else (8 * 20_000, 80)
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(anchors, classes, generator=g).to(device).requires_grad_(True)
    labels = torch.randint(0, classes * 8, (anchors,), generator=g)  # ~1/8 positive
    pos = labels < classes
    onehot = torch.zeros(anchors, classes)
    onehot[pos, labels[pos]] = 1.0
    onehot = onehot.to(device)
    score = torch.rand(anchors, generator=g).to(device)
    if kind == "torchvision":
        if torchvision is None:
            raise RuntimeError("torchvision is not installed")

        def loss():
            return torchvision.ops.sigmoid_focal_loss(logits, onehot, alpha=0.25, gamma=2.0, reduction="mean")

        target_bytes = 4 * anchors * classes
    else:  # QFL as mmdet's quality_focal_loss: BCE against the IoU at the label class, |σ − y|^β
        target = onehot * score[:, None]

        def loss():
            sig = logits.sigmoid()
            scale = (sig - target).abs().pow(2.0)
            return (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * scale).sum() / max(
                int(pos.sum()), 1
            )

        target_bytes = 8 * anchors + 4 * anchors  # labels (i64) + scores (f32)

    def forward_backward():
        logits.grad = None
        loss().backward()

    elems = anchors * classes
    return {
        "forward": loss,
        "forward_backward": forward_backward,
        "bytes_forward": 4 * elems + target_bytes,
        "bytes_forward_backward": 8 * elems + target_bytes,
    }


def case_dist_kl(device, quick, kind):
    rows, bins = (512, 17) if quick else (80_000, 17)
    s = torch.randn(rows, bins, device=device, requires_grad=True)
    if kind == "kd_kl":
        t = torch.randn(rows, bins, device=device)
        temp = 10.0

        def loss():
            return (
                F.kl_div(F.log_softmax(s / temp, 1), F.softmax(t / temp, 1), reduction="none").mean(1).mean()
                * temp
                * temp
            )

        in_bytes = 8 * rows * bins
    else:  # DFL: CE against the two bins around a continuous target in [0, 16)
        target = torch.rand(rows, device=device) * (bins - 1 - 1e-3)

        def loss():
            left = target.long()
            wl = left + 1 - target
            logp = F.log_softmax(s, 1)
            return -(logp.gather(1, left[:, None])[:, 0] * wl + logp.gather(1, left[:, None] + 1)[:, 0] * (1 - wl)).mean()

        in_bytes = 4 * rows * bins + 4 * rows

    def forward_backward():
        s.grad = None
        loss().backward()

    return {
        "forward": loss,
        "forward_backward": forward_backward,
        "bytes_forward": in_bytes,
        "bytes_forward_backward": in_bytes + 4 * rows * bins,
    }


# name -> (builder, our forward id(s), our forward+backward id(s) — ids are summed), with `{dev}` for the device
CASES = {
    "roi_align_fpn_sampling2": (
        lambda dev, q: case_roi_align_fpn(dev, q, 2),
        ["roi_align_fpn_1024x256x7x7/{dev}/forward/sampling2"],
        ["roi_align_fpn_1024x256x7x7/{dev}/forward/sampling2", "roi_align_fpn_1024x256x7x7/{dev}/backward/sampling2"],
    ),
    "roi_align_fpn_adaptive": (
        lambda dev, q: case_roi_align_fpn(dev, q, 0),
        ["roi_align_fpn_1024x256x7x7/{dev}/forward/adaptive"],
        ["roi_align_fpn_1024x256x7x7/{dev}/forward/adaptive", "roi_align_fpn_1024x256x7x7/{dev}/backward/adaptive"],
    ),
    "cosine_gram_dsig_1024x12544": (
        lambda dev, q: case_cosine_gram(dev, q, 1024, 12544),
        ["similarity/{dev}/cosine_gram_forward/dsig_1024x12544"],
        ["similarity/{dev}/cosine_gram_forward/dsig_1024x12544", "similarity/{dev}/cosine_gram_backward/dsig_1024x12544"],
    ),
    "cosine_gram_drkd_100x2304": (
        lambda dev, q: case_cosine_gram(dev, q, 100, 2304),
        ["similarity/{dev}/cosine_gram_forward/drkd_100x2304"],
        ["similarity/{dev}/cosine_gram_forward/drkd_100x2304", "similarity/{dev}/cosine_gram_backward/drkd_100x2304"],
    ),
    "dsig_edge_loss_1024x12544": (
        lambda dev, q: case_dsig_edge(dev, q, 1024, 12544),
        [],
        ["similarity/{dev}/dsig_edge_loss_with_grad/dsig_1024x12544"],
    ),
    "graph_conv_1024x256to256": (
        case_graph_conv,
        ["graph_conv/{dev}/forward/1024x256to256"],
        ["graph_conv/{dev}/forward/1024x256to256", "graph_conv/{dev}/backward_with_da/1024x256to256"],
    ),
    "glore_project_B2_S128_N64_L67200": (
        case_glore_project,
        ["glore/{dev}/project_forward/B2_S128_N64_L67200"],
        ["glore/{dev}/project_forward/B2_S128_N64_L67200", "glore/{dev}/project_backward/B2_S128_N64_L67200"],
    ),
    "soft_assignment_100000x256x800": (
        lambda dev, q: case_soft_assignment(dev, q, 100_000),
        ["prototype/{dev}/soft_assignment_forward/100000x256x800"],
        ["prototype/{dev}/soft_assignment_forward/100000x256x800", "prototype/{dev}/soft_assignment_backward/100000x256x800"],
    ),
    "focal_torchvision_8x20000x80": (
        lambda dev, q: case_focal(dev, q, "torchvision"),
        ["focal_8x20000x80/{dev}/forward/torchvision"],
        ["focal_8x20000x80/{dev}/fused/torchvision"],
    ),
    "qfl_8x20000x80": (
        lambda dev, q: case_focal(dev, q, "qfl"),
        ["focal_8x20000x80/{dev}/forward/qfl"],
        ["focal_8x20000x80/{dev}/fused/qfl"],
    ),
    "ld_kd_kl_80000x17": (
        lambda dev, q: case_dist_kl(dev, q, "kd_kl"),
        ["dist_kl_80000x17/{dev}/kd_kl/forward"],
        ["dist_kl_80000x17/{dev}/kd_kl/fused"],
    ),
    "dfl_80000x17": (
        lambda dev, q: case_dist_kl(dev, q, "dfl"),
        ["dist_kl_80000x17/{dev}/dfl/forward"],
        ["dist_kl_80000x17/{dev}/dfl/fused"],
    ),
}


def read_criterion(directory):
    """full_id -> median seconds, from every <bench>/new/ folder under `directory`."""
    medians = {}
    if directory is None:
        return medians
    for bench in Path(directory).rglob("new/benchmark.json"):
        estimates = bench.parent / "estimates.json"
        if not estimates.exists():
            continue
        full_id = json.loads(bench.read_text())["full_id"]
        medians[full_id] = json.loads(estimates.read_text())["median"]["point_estimate"] / 1e9
    return medians


def ours(medians, ids, dev):
    if not ids:
        return None
    found = [medians.get(i.format(dev=dev)) for i in ids]
    return None if any(v is None for v in found) else sum(found)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--criterion", type=Path)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    measure = timer(device)
    names = args.only.split(",") if args.only else list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    medians = {} if args.quick else read_criterion(args.criterion)
    dev = "cuda" if device.type == "cuda" else "cpu"

    bandwidth = copy_bandwidth(device, measure, args.quick)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    lines = [
        f"device: {name}; torch {torch.__version__}"
        + (f", torchvision {torchvision.__version__}" if torchvision else "")
        + f"; measured copy bandwidth {bandwidth / 1e9:.0f} GB/s (read + write)",
        "",
        "| case | pass | bytes | peer | peer % copy | detkd | detkd % copy | detkd / peer |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    failures = 0
    for case in names:
        builder, fwd_ids, fb_ids = CASES[case]
        try:
            built = builder(device, args.quick)
        except Exception as e:  # a peer that cannot run here is reported, not fatal
            lines.append(f"| {case} | — | — | not run: {e} | | | | |")
            failures += 1
            continue
        for label, key, ids in (("fwd", "forward", fwd_ids), ("fwd+bwd", "forward_backward", fb_ids)):
            reps = 5 if args.quick else 30
            seconds = measure(built[key], reps)
            nbytes = built[f"bytes_{key}"]
            mine = ours(medians, ids, dev)

            def pct(s):
                return f"{100 * nbytes / s / bandwidth:.0f} %"

            lines.append(
                f"| {case} | {label} | {nbytes / 1e6:.1f} MB | {seconds * 1e3:.3f} ms | {pct(seconds)} | "
                + (f"{mine * 1e3:.3f} ms | {pct(mine)} | {mine / seconds:.2f} |" if mine else "— | — | — |")
            )
        if device.type == "cuda":
            torch.cuda.empty_cache()
    lines.append("")
    lines.append(
        "detkd's fwd+bwd is its fused entry where it has one, else forward + backward medians; the peer's is "
        "the autograd forward + backward."
    )
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
