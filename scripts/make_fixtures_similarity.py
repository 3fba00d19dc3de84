"""Golden fixtures for the similarity op family, from PyTorch, for the Rust peer-fixture tests.

What it makes: one file per case, ``tests/fixtures/similarity/<case>.safetensors``, holding float64
inputs, an upstream gradient where the op has a tensor output, and PyTorch's results under
``expected.<name>`` (the names ``detkd parity`` returns: output, grad_x, grad_y, loss, grad_student).
The op and its settings are in the safetensors ``__metadata__``: ``op`` (normalize_rows, cosine_gram,
cosine_cross, sq_euclidean, euclidean, dsig_edge_loss), ``eps`` and, for the edge loss,
``loss_weight``. ``nodes`` (the edge loss's vertex list) is stored as int64.

The peer computations, all float64 on the CPU with autograd for the gradients:
- normalize_rows: ``F.normalize(x, p=2, dim=1, eps)``.
- cosine_gram / cosine_cross: ``F.normalize`` then ``torch.mm(a, b.T)``.
- euclidean: ``torch.cdist(x, y)`` (default compute mode, and forced matrix-product mode for a larger
  case; self mode uses ``donot_use_mm_for_euclid_dist`` so the diagonal is exactly 0 with gradient 0).
- sq_euclidean: ``(|x|^2 + |y|^2 - 2 x y^T).clamp_min(0)``, checked against ``cdist(x, y) ** 2``.
- dsig_edge_loss: Dsig's official composition (projects/Distillation/utils/matrix_utils.py):
  ``F.normalize`` per node, ``torch.mm`` Gram, ``0.5 * F.mse_loss(A_t, A_s)``, times the loss weight;
  an empty vertex set gives ``feat.sum() * 0.`` (loss 0, zero gradient), as there.

How to run, from the repository root, with the pinned peer environment::

    .venv-peer/bin/python scripts/make_fixtures_similarity.py

Inputs come from a torch.Generator with a fixed per-case seed, and files are written by
``write_safetensors`` (sorted metadata and tensor names), so a rerun rewrites byte-identical files.
Inputs stay away from kinks: row norms far from eps (except where a case sits below it on purpose),
distances far from 0 (except the self-mode diagonal).
"""

import json
import struct
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open

OUT_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "similarity"
DTYPE = torch.float64
EPS = 1e-12
MAX_FILE_BYTES = 64 * 1024
MAX_TOTAL_BYTES = 400 * 1024


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
            assert got.dtype == t.dtype and got.shape == t.shape and torch.equal(got, t), (path, name)


# ----------------------------------------------------------------------------------------------
# Peer computations: each returns {result name: tensor}


def grads(out, grad_out, inputs):
    g = torch.autograd.grad(out, inputs, grad_out, allow_unused=True)
    return [torch.zeros_like(i) if gi is None else gi for i, gi in zip(inputs, g)]


def peer_normalize(x, grad_out, eps):
    x = x.clone().requires_grad_(True)
    out = F.normalize(x, p=2, dim=1, eps=eps)
    (gx,) = grads(out, grad_out, [x])
    return {"output": out, "grad_x": gx}


def peer_cosine_gram(x, grad_out, eps):
    x = x.clone().requires_grad_(True)
    xn = F.normalize(x, p=2, dim=1, eps=eps)
    out = torch.mm(xn, xn.T)
    (gx,) = grads(out, grad_out, [x])
    return {"output": out, "grad_x": gx}


def peer_cosine_cross(x, y, grad_out, eps):
    x = x.clone().requires_grad_(True)
    y = y.clone().requires_grad_(True)
    out = torch.mm(F.normalize(x, dim=1, eps=eps), F.normalize(y, dim=1, eps=eps).T)
    gx, gy = grads(out, grad_out, [x, y])
    return {"output": out, "grad_x": gx, "grad_y": gy}


def peer_euclidean(x, y, grad_out, squared, compute_mode):
    """cdist (self mode when y is None), or the clamped expansion for the squared distance."""
    x = x.clone().requires_grad_(True)
    inputs = [x]
    if y is not None:
        y = y.clone().requires_grad_(True)
        inputs.append(y)
    other = x if y is None else y
    dist = torch.cdist(x, other, p=2.0, compute_mode=compute_mode)
    if squared:
        expansion = (x.pow(2).sum(1)[:, None] + other.pow(2).sum(1)[None, :] - 2 * x @ other.T).clamp_min(0)
        if y is None:
            expansion = expansion * (1 - torch.eye(x.shape[0], dtype=DTYPE))  # exact zero diagonal
        assert torch.allclose(expansion, dist.pow(2), rtol=1e-12, atol=1e-12)
        out = expansion if y is not None else dist.pow(2)
    else:
        out = dist
    g = grads(out, grad_out, inputs)
    result = {"output": out, "grad_x": g[0]}
    if y is not None:
        result["grad_y"] = g[1]
    return result


def peer_dsig_edge_loss(student, teacher, nodes, eps, loss_weight):
    """Dsig's generate_correlation_matrix + corr_mat_mse_loss for one image, times the loss weight."""
    s = student.clone().requires_grad_(True)
    feat_s = s if nodes is None else s[nodes]
    feat_t = teacher if nodes is None else teacher[nodes]

    def graph(feat):
        if feat.shape[0] == 0:
            return feat.sum() * 0.0
        fn = F.normalize(feat, eps=eps)
        return torch.mm(fn, fn.T)

    loss = loss_weight * 0.5 * F.mse_loss(graph(feat_t), graph(feat_s))
    (gs,) = torch.autograd.grad(loss, [s], allow_unused=True)
    if gs is None:
        gs = torch.zeros_like(s)
    return {"loss": loss.detach().reshape(()), "grad_student": gs}


# ----------------------------------------------------------------------------------------------
# Kink guards


def assert_norms_away_from_eps(x, eps, factor=3.0):
    norms = x.norm(dim=1)
    ok = (norms == 0) | (norms > factor * eps) | (norms < eps / factor)
    assert bool(ok.all()), f"row norms near eps: {norms.tolist()}"


def assert_distances_away_from_zero(x, y, margin=0.05):
    d = torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")
    if x is y:
        d = d + torch.eye(x.shape[0], dtype=DTYPE)
    assert float(d.min()) > margin, f"points too close: {float(d.min())}"


# ----------------------------------------------------------------------------------------------
# Cases


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(g, *shape):
    return torch.randn(*shape, generator=g, dtype=DTYPE)


def build_cases():
    """(name, metadata, inputs, expected) per case."""
    cases = []
    meta = lambda op, **kw: {"op": op, "eps": repr(EPS), **{k: repr(float(v)) for k, v in kw.items()}}

    g = gen(201)
    x, go = randn(g, 5, 7), randn(g, 5, 7)
    assert_norms_away_from_eps(x, EPS)
    cases.append(("normalize_rows", meta("normalize_rows"), {"x": x, "grad_out": go}, peer_normalize(x, go, EPS)))

    # A zero row, a row below eps (divided by eps, gradient g/eps), a small row above eps, an ordinary row.
    g = gen(202)
    x = torch.stack([
        torch.zeros(6, dtype=DTYPE),
        randn(g, 6) * 1e-13,
        randn(g, 6) * 2e-11,
        randn(g, 6),
    ])
    go = randn(g, 4, 6)
    assert_norms_away_from_eps(x, EPS)
    cases.append(("normalize_rows_tiny", meta("normalize_rows"), {"x": x, "grad_out": go},
                  peer_normalize(x, go, EPS)))

    g = gen(203)
    x, go = randn(g, 6, 9), randn(g, 6, 6)
    cases.append(("cosine_gram", meta("cosine_gram"), {"x": x, "grad_out": go}, peer_cosine_gram(x, go, EPS)))

    g = gen(204)
    x = randn(g, 5, 4)
    x[2] = 0.0  # a zero node: cosine 0 with everything, itself included
    go = randn(g, 5, 5)
    cases.append(("cosine_gram_zero_row", meta("cosine_gram"), {"x": x, "grad_out": go},
                  peer_cosine_gram(x, go, EPS)))

    x, go = torch.zeros(0, 4, dtype=DTYPE), torch.zeros(0, 0, dtype=DTYPE)
    cases.append(("cosine_gram_empty", meta("cosine_gram"), {"x": x, "grad_out": go},
                  peer_cosine_gram(x, go, EPS)))

    g = gen(205)
    x, y, go = randn(g, 4, 8), randn(g, 6, 8), randn(g, 4, 6)
    cases.append(("cosine_cross", meta("cosine_cross"), {"x": x, "y": y, "grad_out": go},
                  peer_cosine_cross(x, y, go, EPS)))

    for name, op, squared, (m, n, d), self_mode, mode, seed in (
        ("sq_euclidean_cross", "sq_euclidean", True, (5, 4, 6), False, "use_mm_for_euclid_dist_if_necessary", 206),
        ("sq_euclidean_self", "sq_euclidean", True, (6, 6, 5), True, "donot_use_mm_for_euclid_dist", 207),
        ("euclidean_cross", "euclidean", False, (5, 4, 6), False, "use_mm_for_euclid_dist_if_necessary", 208),
        ("euclidean_cross_mm", "euclidean", False, (30, 27, 4), False, "use_mm_for_euclid_dist", 209),
        ("euclidean_self", "euclidean", False, (6, 6, 5), True, "donot_use_mm_for_euclid_dist", 210),
    ):
        g = gen(seed)
        x = randn(g, m, d)
        y = None if self_mode else randn(g, n, d)
        go = randn(g, m, n)
        assert_distances_away_from_zero(x, x if self_mode else y)
        inputs = {"x": x, "grad_out": go}
        if y is not None:
            inputs["y"] = y
        cases.append((name, meta(op), inputs, peer_euclidean(x, y, go, squared, mode)))

    g = gen(211)
    s, t = randn(g, 7, 12), randn(g, 7, 12)
    cases.append(("dsig_edge_loss", meta("dsig_edge_loss", loss_weight=1.0), {"student": s, "teacher": t},
                  peer_dsig_edge_loss(s, t, None, EPS, 1.0)))

    # Foreground rows then mined background rows, in the order a caller would concatenate them.
    g = gen(212)
    s, t = randn(g, 10, 12), randn(g, 10, 12)
    nodes = torch.tensor([0, 3, 4, 9, 6, 7], dtype=torch.int64)
    cases.append(("dsig_edge_loss_nodes", meta("dsig_edge_loss", loss_weight=2.0),
                  {"student": s, "teacher": t, "nodes": nodes}, peer_dsig_edge_loss(s, t, nodes, EPS, 2.0)))

    g = gen(213)
    s, t = randn(g, 4, 6), randn(g, 4, 6)
    nodes = torch.zeros(0, dtype=torch.int64)
    cases.append(("dsig_edge_loss_no_nodes", meta("dsig_edge_loss", loss_weight=1.0),
                  {"student": s, "teacher": t, "nodes": nodes}, peer_dsig_edge_loss(s, t, nodes, EPS, 1.0)))

    # A student node that is all zeros (a RoI off the feature map): normalised to 0, gradient through 1/eps.
    g = gen(214)
    s, t = randn(g, 5, 8), randn(g, 5, 8)
    s[1] = 0.0
    cases.append(("dsig_edge_loss_zero_student_row", meta("dsig_edge_loss", loss_weight=1.0),
                  {"student": s, "teacher": t}, peer_dsig_edge_loss(s, t, None, EPS, 1.0)))
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
            assert bool(torch.isfinite(value).all()), (name, key)
            tensors[f"expected.{key}"] = value
        path = OUT_DIR / f"{name}.safetensors"
        write_safetensors(path, tensors, metadata)
        check_roundtrip(path, {k: v.detach().contiguous() for k, v in tensors.items()}, metadata)
        size = path.stat().st_size
        assert size < MAX_FILE_BYTES, f"{path} is {size} bytes"
        total += size
        print(f"{name:34s} {metadata['op']:16s} {size:6d} B")
    assert total < MAX_TOTAL_BYTES, f"fixtures total {total} bytes"
    print(f"{len(cases)} files, {total} bytes in {OUT_DIR}")


if __name__ == "__main__":
    sys.exit(main())
