"""Golden fixtures for the prototype op family, from PyTorch, for the Rust peer-fixture tests.

What it makes: one file per case, ``tests/fixtures/prototype/<case>.safetensors``, holding float64
inputs (labels as int64), an upstream gradient for the soft assignment, and PyTorch's results under
``expected.<name>`` (the names ``detkd parity`` returns: output, grad_x, grad_prototypes; similarity,
index; weight). The op and its settings are in the safetensors ``__metadata__``: ``op``
(soft_assignment, max_cosine_match, gkd_robust_weights), ``temperature`` and ``output``
(probabilities | log_probabilities) for the soft assignment, ``num_classes`` and ``eps`` for the
max-cosine ops.

The peer computations, all float64 on the CPU with autograd for the gradients:
- soft_assignment: ``torch.softmax(-torch.cdist(x, p) ** 2 / tau, dim=1)`` (``log_softmax`` for the log
  output), backward by autograd to both ``x`` and ``p``. ``cdist`` takes its matrix-product path for the
  larger case (more than 25 rows), its direct path otherwise; both are checked against direct
  differences.
- max_cosine_match: ``F.normalize`` of both sides (eps 1e-12), ``torch.mm`` for all cosines, the
  cosines of other classes' prototypes masked to -inf, ``max(dim=1)``; rows whose class has no
  prototype are set to NaN / -1 afterwards (the convention of detkd's op).
- gkd_robust_weights: GKD's ``1 - |max cos_s - max cos_t|`` from the masked maxima above in the
  student's and the teacher's space, 1.0 for a row whose class has no prototype.

How to run, from the repository root, with the pinned peer environment::

    .venv-peer/bin/python scripts/make_fixtures_prototype.py

Inputs come from a torch.Generator with a fixed per-case seed, and files are written by
``write_safetensors`` (sorted metadata and tensor names), so a rerun rewrites byte-identical files.
Inputs stay away from kinks and ties: no coincident points except where a case puts one on purpose,
and the best cosine of every matched row leads the second best of its class by a margin (so the
arg-max is stable under half-precision rounding of the inputs).
"""

import json
import struct
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open

OUT_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "prototype"
DTYPE = torch.float64
EPS = 1e-12
MAX_FILE_BYTES = 64 * 1024
MAX_TOTAL_BYTES = 400 * 1024
# Lead of the best cosine over the second best of the same class, in every matched row of the
# max-cosine fixtures: half-precision rounding of the inputs moves a cosine by ~1e-3.
COSINE_MARGIN = 0.02


# ----------------------------------------------------------------------------------------------
# Serialisation


def write_safetensors(path, tensors, metadata):
    """Write a safetensors file deterministically: metadata first, then tensors by name."""
    header = {"__metadata__": {k: metadata[k] for k in sorted(metadata)}}
    chunks = []
    offset = 0
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


def check_roundtrip(path, tensors, metadata):
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == metadata, (path, f.metadata())
        assert sorted(f.keys()) == sorted(tensors), (path, list(f.keys()))
        for name, t in tensors.items():
            got = f.get_tensor(name)
            same = torch.equal(got, t) or (t.is_floating_point() and torch.equal(got.isnan(), t.isnan())
                                           and torch.equal(got.nan_to_num(), t.nan_to_num()))
            assert got.dtype == t.dtype and got.shape == t.shape and same, (path, name)


# ----------------------------------------------------------------------------------------------
# Peer computations: each returns {result name: tensor}


def grads(out, grad_out, inputs):
    if not out.requires_grad:  # an empty output with no graph: the gradient is zero
        return [torch.zeros_like(i) for i in inputs]
    g = torch.autograd.grad(out, inputs, grad_out, allow_unused=True)
    return [torch.zeros_like(i) if gi is None else gi for i, gi in zip(inputs, g)]


def peer_soft_assignment(x, p, grad_out, tau, log_output):
    x = x.clone().requires_grad_(True)
    p = p.clone().requires_grad_(True)
    logits = -torch.cdist(x, p) ** 2 / tau
    out = torch.log_softmax(logits, dim=1) if log_output else torch.softmax(logits, dim=1)
    gx, gp = grads(out, grad_out, [x, p])
    return {"output": out, "grad_x": gx, "grad_prototypes": gp}


def direct_soft_assignment(x, p, tau, log_output):
    """The same assignment by explicit differences (no cdist), to confirm the peer's numbers."""
    d2 = ((x[:, None, :] - p[None, :, :]) ** 2).sum(-1)
    logits = -d2 / tau
    return torch.log_softmax(logits, dim=1) if log_output else torch.softmax(logits, dim=1)


def masked_max_cosine(x, labels, p, proto_labels, eps):
    """F.normalize + mm + the class mask + max; NaN / -1 where the class has no prototype."""
    cos = torch.mm(F.normalize(x, dim=1, eps=eps), F.normalize(p, dim=1, eps=eps).T)
    same = labels[:, None] == proto_labels[None, :]
    if p.shape[0] == 0 or x.shape[0] == 0:
        sim = torch.full((x.shape[0],), float("nan"), dtype=DTYPE)
        return sim, torch.full((x.shape[0],), -1, dtype=torch.int64), same
    sim, index = cos.masked_fill(~same, float("-inf")).max(dim=1)
    matched = same.any(dim=1)
    sim = torch.where(matched, sim, torch.full_like(sim, float("nan")))
    index = torch.where(matched, index, torch.full_like(index, -1))
    # Margin guard: the best cosine leads the second best of its class (except for an all-zero row, whose
    # cosines are all exactly 0: the tie goes to the first candidate, by definition on both sides).
    for i in range(x.shape[0]):
        candidates = cos[i][same[i]]
        if candidates.numel() >= 2 and bool(x[i].any()):
            top = torch.topk(candidates, 2).values
            assert float(top[0] - top[1]) > COSINE_MARGIN, f"row {i}: cosines too close {top.tolist()}"
    return sim, index, same


def peer_max_cosine(x, labels, p, proto_labels, eps):
    sim, index, _ = masked_max_cosine(x, labels, p, proto_labels, eps)
    return {"similarity": sim, "index": index}


def peer_robust_weights(s, t, labels, ps, pt, proto_labels, eps):
    sim_s, _, same = masked_max_cosine(s, labels, ps, proto_labels, eps)
    sim_t, _, _ = masked_max_cosine(t, labels, pt, proto_labels, eps)
    matched = same.any(dim=1) if same.numel() else torch.zeros(s.shape[0], dtype=torch.bool)
    weight = torch.where(matched, 1 - (sim_s - sim_t).abs(), torch.ones_like(sim_s))
    return {"weight": weight}


# ----------------------------------------------------------------------------------------------
# Cases


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(g, *shape):
    return torch.randn(*shape, generator=g, dtype=DTYPE)


def assert_points_apart(x, p, margin=0.05):
    if x.shape[0] and p.shape[0]:
        d = torch.cdist(x, p, compute_mode="donot_use_mm_for_euclid_dist")
        assert float(d.min()) > margin, f"points too close: {float(d.min())}"


def assign_case(name, x, p, tau, log_output, g, apart=True):
    if apart:
        assert_points_apart(x, p)
    grad_out = randn(g, x.shape[0], p.shape[0])
    expected = peer_soft_assignment(x, p, grad_out, tau, log_output)
    if x.shape[0] and p.shape[0]:
        direct = direct_soft_assignment(x, p, tau, log_output)
        assert torch.allclose(expected["output"], direct, rtol=1e-10, atol=1e-12), name
    meta = {
        "op": "soft_assignment",
        "temperature": repr(float(tau)),
        "output": "log_probabilities" if log_output else "probabilities",
    }
    return name, meta, {"x": x, "prototypes": p, "grad_out": grad_out}, expected


def rows_with_margin(g, labels, p, proto_labels):
    """One random row per label, each redrawn until its best cosine over its class's prototypes leads the
    second best by COSINE_MARGIN (deterministic: the generator's sequence fixes every draw)."""
    p_hat = F.normalize(p, dim=1, eps=EPS)
    rows = []
    for c in labels.tolist():
        candidates = p_hat[proto_labels == c]
        while True:
            row = randn(g, p.shape[1])
            if candidates.shape[0] < 2:
                break
            top = torch.topk(candidates @ F.normalize(row, dim=0), 2).values
            if float(top[0] - top[1]) > COSINE_MARGIN:
                break
        rows.append(row)
    return torch.stack(rows)


def labels_of(*values):
    return torch.tensor(values, dtype=torch.int64)


def match_meta(op, num_classes):
    return {"op": op, "num_classes": str(num_classes), "eps": repr(EPS)}


def build_cases():
    """(name, metadata, inputs, expected) per case."""
    cases = []

    # Soft assignment at several temperatures, both outputs.
    for name, (n, k, d), tau, log_output, seed in (
        ("soft_assign_tau_0_5", (6, 5, 4), 0.5, False, 301),
        ("soft_assign_tau_1", (7, 4, 3), 1.0, False, 302),
        ("soft_assign_tau_4", (5, 6, 6), 4.0, False, 303),
        ("soft_assign_tau_16", (8, 7, 8), 16.0, False, 304),
        ("soft_assign_log_tau_2", (6, 5, 4), 2.0, True, 305),
        # More than 25 rows: cdist's matrix-product path.
        ("soft_assign_mm", (30, 27, 5), 3.0, False, 306),
    ):
        g = gen(seed)
        x, p = randn(g, n, d), randn(g, k, d)
        cases.append(assign_case(name, x, p, tau, log_output, g))

    # Large logits: points ~11 away from a tight cluster of prototypes, tau = 1. Every logit is below
    # -104, where exp underflows in f32 (a softmax without the max-subtraction gives 0/0), while the
    # differences within a row stay O(1), so rows are not one-hot and the gradient is informative.
    g = gen(307)
    d = 4
    u = F.normalize(randn(g, 6, d), dim=1)
    x = 11.0 * u + 0.05 * randn(g, 6, d)
    p = 0.1 * randn(g, 5, d)
    case = assign_case("soft_assign_large_logits", x, p, 1.0, False, g)
    logits = -torch.cdist(x, p) ** 2
    assert float(logits.max()) < -104.0, float(logits.max())
    assert float(case[3]["output"].detach().max(dim=1).values.min()) < 0.99, "rows should not all be one-hot"
    cases.append(case)

    # Far points, log output: logits ~ -1e4 with differences of hundreds; probabilities underflow to 0
    # even in f64, the log-probabilities stay exact.
    g = gen(308)
    x = 100.0 * F.normalize(randn(g, 5, 3), dim=1)
    p = 3.0 * randn(g, 4, 3)
    case = assign_case("soft_assign_far_log", x, p, 1.0, True, g)
    assert float(case[3]["output"].detach().min()) < -800.0
    cases.append(case)

    # A point that coincides with a prototype: distance 0, gradient through the kink of cdist is 0 and
    # the expansion's factor (x - p) is 0 too.
    g = gen(309)
    x, p = randn(g, 4, 3), randn(g, 5, 3)
    x[1] = p[3]
    cases.append(assign_case("soft_assign_coincident", x, p, 2.0, False, g, apart=False))

    # K = 1: probability 1 everywhere, zero gradient.
    g = gen(310)
    cases.append(assign_case("soft_assign_k1", randn(g, 5, 4), randn(g, 1, 4), 1.0, False, g))

    # Empty inputs.
    g = gen(311)
    cases.append(assign_case("soft_assign_empty_rows", torch.zeros(0, 4, dtype=DTYPE), randn(g, 3, 4),
                             1.0, False, g))
    cases.append(assign_case("soft_assign_empty_prototypes", randn(g, 3, 4), torch.zeros(0, 4, dtype=DTYPE),
                             1.0, False, g))

    # Max-cosine match: classes 0..4, class 3 without prototypes; rows of every class.
    g = gen(320)
    p = randn(g, 10, 8)
    labels = labels_of(0, 1, 2, 3, 4, 1, 2, 3, 0, 4, 1, 2)
    proto_labels = labels_of(1, 2, 0, 1, 2, 4, 1, 0, 2, 4)
    x = rows_with_margin(g, labels, p, proto_labels)
    cases.append(("max_cosine_match", match_meta("max_cosine_match", 5),
                  {"x": x, "labels": labels, "prototypes": p, "prototype_labels": proto_labels},
                  peer_max_cosine(x, labels, p, proto_labels, EPS)))

    # One class holding every prototype (GKD-like: ~10 prototypes per class), and a zero feature row
    # (cosine 0 with every prototype: the first one is chosen).
    g = gen(321)
    p = randn(g, 10, 6)
    labels, proto_labels = torch.zeros(9, dtype=torch.int64), torch.zeros(10, dtype=torch.int64)
    x = rows_with_margin(g, labels, p, proto_labels)
    x[4] = 0.0
    expected = peer_max_cosine(x, labels, p, proto_labels, EPS)
    assert float(expected["similarity"][4]) == 0.0 and int(expected["index"][4]) == 0
    cases.append(("max_cosine_match_one_class_zero_row", match_meta("max_cosine_match", 1),
                  {"x": x, "labels": labels, "prototypes": p, "prototype_labels": proto_labels}, expected))

    # No prototypes at all, and no rows.
    g = gen(322)
    x = randn(g, 4, 5)
    p0 = torch.zeros(0, 5, dtype=DTYPE)
    cases.append(("max_cosine_match_no_prototypes", match_meta("max_cosine_match", 80),
                  {"x": x, "labels": labels_of(0, 7, 79, 7), "prototypes": p0,
                   "prototype_labels": torch.zeros(0, dtype=torch.int64)},
                  peer_max_cosine(x, labels_of(0, 7, 79, 7), p0, torch.zeros(0, dtype=torch.int64), EPS)))
    x0, p = torch.zeros(0, 5, dtype=DTYPE), randn(g, 3, 5)
    cases.append(("max_cosine_match_empty", match_meta("max_cosine_match", 80),
                  {"x": x0, "labels": torch.zeros(0, dtype=torch.int64), "prototypes": p,
                   "prototype_labels": labels_of(2, 2, 5)},
                  peer_max_cosine(x0, torch.zeros(0, dtype=torch.int64), p, labels_of(2, 2, 5), EPS)))

    # Robust weights: student width 8, teacher width 6; class 2 has no prototype.
    g = gen(330)
    ps, pt = randn(g, 9, 8), randn(g, 9, 6)
    labels = labels_of(0, 1, 2, 3, 1, 0, 2, 3, 3, 1)
    proto_labels = labels_of(0, 1, 3, 1, 0, 3, 1, 0, 3)
    s, t = rows_with_margin(g, labels, ps, proto_labels), rows_with_margin(g, labels, pt, proto_labels)
    inputs = {"student": s, "teacher": t, "labels": labels, "student_prototypes": ps,
              "teacher_prototypes": pt, "prototype_labels": proto_labels}
    cases.append(("gkd_robust_weights", match_meta("gkd_robust_weights", 4), inputs,
                  peer_robust_weights(s, t, labels, ps, pt, proto_labels, EPS)))

    g = gen(331)
    s, t = randn(g, 3, 4), randn(g, 3, 4)
    e = torch.zeros(0, 4, dtype=DTYPE)
    inputs = {"student": s, "teacher": t, "labels": labels_of(1, 0, 1), "student_prototypes": e,
              "teacher_prototypes": e, "prototype_labels": torch.zeros(0, dtype=torch.int64)}
    cases.append(("gkd_robust_weights_no_prototypes", match_meta("gkd_robust_weights", 2), inputs,
                  peer_robust_weights(s, t, labels_of(1, 0, 1), e, e, torch.zeros(0, dtype=torch.int64), EPS)))
    return cases


def main():
    print(f"torch {torch.__version__}")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    cases = build_cases()
    names = [c[0] for c in cases]
    assert len(set(names)) == len(names)
    for stale in OUT_DIR.glob("*.safetensors"):
        if stale.stem not in names:
            stale.unlink()
    total = 0
    for name, metadata, inputs, expected in cases:
        tensors = dict(inputs)
        for key, value in expected.items():
            value = value.detach()
            if key != "similarity":  # only unmatched rows' similarities are NaN, by definition
                assert bool(torch.isfinite(value.double()).all()), (name, key)
            tensors[f"expected.{key}"] = value
        path = OUT_DIR / f"{name}.safetensors"
        write_safetensors(path, tensors, metadata)
        check_roundtrip(path, {k: v.detach().contiguous() for k, v in tensors.items()}, metadata)
        size = path.stat().st_size
        assert size < MAX_FILE_BYTES, f"{path} is {size} bytes"
        total += size
        print(f"{name:40s} {metadata['op']:20s} {size:6d} B")
    assert total < MAX_TOTAL_BYTES, f"fixtures total {total} bytes"
    print(f"{len(cases)} files, {total} bytes in {OUT_DIR}")


if __name__ == "__main__":
    sys.exit(main())
