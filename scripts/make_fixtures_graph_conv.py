"""Golden fixtures for the graph_conv op family, from PyTorch compositions (torch ops + autograd).

What it makes: one file per case, ``tests/fixtures/graph_conv/<case>.safetensors``, holding float64 inputs,
the upstream gradient ``grad_out`` and PyTorch's results as ``expected.<name>`` (``expected.output`` and
``expected.grad_<input>``). The safetensors ``__metadata__`` names the op (``op``) and its options; the keys
are documented in src/parity/graph_conv.rs. The peer computations, written the way the papers' code does:

- ``normalized_adjacency``: ``At = A + I; s = At.sum(-1).pow(-0.5); s[:, None] * At * s[None, :]``
  (batched with a leading dimension), gradient to ``A`` by autograd.
- ``graph_conv``: ``Y = Â @ X @ W + b`` with ``Â`` as above; gradients to ``X``, ``W``, ``b`` and, when
  ``adjacency_grad`` is true, to ``A`` through the normalisation.
- ``glore_project``: ``torch.matmul(V, Bp.permute(0, 2, 1))`` (GloRe: no 1/L).
- ``glore_node_conv``: GloRe's GCN first half, ``conv1d(Z.permute(0, 2, 1), A[:, :, None], b_A)
  .permute(0, 2, 1) + Z``, then ``relu`` when the metadata says so.
- ``glore_reproject``: ``torch.matmul(Y, Bp)``.

How to run, from the repository root, with the pinned peer environment (scripts/requirements-fixtures.txt)::

    .venv-peer/bin/python scripts/make_fixtures_graph_conv.py

Every input comes from a torch.Generator with a fixed per-case seed and everything is computed in float64
on the CPU, so a rerun rewrites byte-identical files (serialised with sorted keys by ``write_safetensors``;
each file is read back with the safetensors library and compared). Inputs are kept away from kinks: every
degree is checked to be comfortably positive, and ReLU inputs are checked to be away from 0.
"""

import json
import struct
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open

OUT_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "graph_conv"
DTYPE = torch.float64
MAX_FILE_BYTES = 64 * 1024
MIN_DEGREE = 0.2
RELU_MARGIN = 1e-3


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
# Peer computations


def normalized_adjacency(a):
    m = a.shape[-1]
    a_tilde = a + torch.eye(m, dtype=a.dtype)
    degree = a_tilde.sum(-1)
    assert bool((degree > MIN_DEGREE).all()), f"degree too small: {degree.min()}"
    s = degree.pow(-0.5)
    return s.unsqueeze(-1) * a_tilde * s.unsqueeze(-2), s


def run_normalized_adjacency(t, p):
    a_hat, s = normalized_adjacency(t["adjacency"])
    return {"output": a_hat, "inv_sqrt_degree": s}, ["adjacency"]


def run_graph_conv(t, p):
    a_hat, _ = normalized_adjacency(t["adjacency"])
    y = torch.matmul(torch.matmul(a_hat, t["x"]), t["weight"])
    if "bias" in t:
        y = y + t["bias"]
    wrt = ["x", "weight"] + (["bias"] if "bias" in t else [])
    if p["adjacency_grad"]:
        wrt.append("adjacency")
    return {"output": y}, wrt


def run_glore_project(t, p):
    return {"output": torch.matmul(t["v"], t["bp"].permute(0, 2, 1))}, ["v", "bp"]


def node_conv(z, a, bias, relu):
    h = F.conv1d(z.permute(0, 2, 1), a.unsqueeze(-1), bias).permute(0, 2, 1)
    h = h + z
    return h, (F.relu(h) if relu else h)


def run_glore_node_conv(t, p):
    h, out = node_conv(t["z"], t["adjacency"], t.get("bias"), p["relu"])
    if p["relu"]:
        assert bool((h.abs() > RELU_MARGIN).all()), f"H too close to the ReLU kink: {h.abs().min()}"
    return {"output": out}, ["z", "adjacency"] + (["bias"] if "bias" in t else [])


def run_glore_reproject(t, p):
    return {"output": torch.matmul(t["y"], t["bp"])}, ["y", "bp"]


RUNNERS = {
    "normalized_adjacency": run_normalized_adjacency,
    "graph_conv": run_graph_conv,
    "glore_project": run_glore_project,
    "glore_node_conv": run_glore_node_conv,
    "glore_reproject": run_glore_reproject,
}


def forward_backward(inputs, grad_out, p):
    """Peer outputs and d(sum(output * grad_out))/d(input) for the differentiable inputs."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    outputs, wrt = RUNNERS[p["op"]](leaves, p)
    results = {k: v.detach() for k, v in outputs.items()}
    grads = torch.autograd.grad((outputs["output"] * grad_out).sum(), [leaves[k] for k in wrt], allow_unused=True)
    for name, g in zip(wrt, grads):
        results[f"grad_{name}"] = torch.zeros_like(leaves[name]) if g is None else g.detach()
    return results


# ----------------------------------------------------------------------------------------------
# Case builders


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(g, *shape):
    return torch.randn(*shape, generator=g, dtype=DTYPE)


def uniform(g, lo, hi, *shape):
    return lo + (hi - lo) * torch.rand(*shape, generator=g, dtype=DTYPE)


def similarity_graph(g, m, d=6):
    """A data-dependent graph as the papers build one: cosine similarity of node features, clamped at 0."""
    f = F.normalize(randn(g, m, d), dim=1)
    return (f @ f.T).clamp(min=0.0)


def mixed_graph(g, *shape):
    """Asymmetric, mixed signs, degrees comfortably positive."""
    return uniform(g, -0.3, 1.0, *shape)


def build_cases():
    cases = []

    def case(name, seed, p, make):
        g = gen(seed)
        inputs = make(g)
        cases.append((name, g, inputs, p))

    case("adjacency_similarity", 201, dict(op="normalized_adjacency"),
         lambda g: {"adjacency": similarity_graph(g, 7)})
    case("adjacency_batched_asymmetric", 202, dict(op="normalized_adjacency"),
         lambda g: {"adjacency": mixed_graph(g, 2, 5, 5)})
    case("graph_conv_similarity_bias", 203, dict(op="graph_conv", adjacency_grad=True),
         lambda g: {"adjacency": similarity_graph(g, 8), "x": randn(g, 8, 5), "weight": randn(g, 5, 4),
                    "bias": randn(g, 4)})
    case("graph_conv_batched", 204, dict(op="graph_conv", adjacency_grad=True),
         lambda g: {"adjacency": mixed_graph(g, 2, 6, 6), "x": randn(g, 2, 6, 3), "weight": randn(g, 3, 5)})
    case("graph_conv_fixed_graph", 205, dict(op="graph_conv", adjacency_grad=False),
         lambda g: {"adjacency": mixed_graph(g, 6, 6), "x": randn(g, 6, 4), "weight": randn(g, 4, 4),
                    "bias": randn(g, 4)})
    case("graph_conv_empty", 206, dict(op="graph_conv", adjacency_grad=True),
         lambda g: {"adjacency": torch.zeros(0, 0, dtype=DTYPE), "x": torch.zeros(0, 3, dtype=DTYPE),
                    "weight": randn(g, 3, 4), "bias": randn(g, 4)})
    case("glore_project", 207, dict(op="glore_project"),
         lambda g: {"v": randn(g, 2, 6, 15), "bp": randn(g, 2, 4, 15)})
    case("glore_node_conv", 208, dict(op="glore_node_conv", relu=False),
         lambda g: {"z": randn(g, 2, 6, 4), "adjacency": randn(g, 4, 4), "bias": randn(g, 4)})
    case("glore_node_conv_relu", 209, dict(op="glore_node_conv", relu=True),
         lambda g: {"z": randn(g, 2, 6, 4), "adjacency": randn(g, 4, 4), "bias": randn(g, 4)})
    case("glore_node_conv_no_bias", 210, dict(op="glore_node_conv", relu=False),
         lambda g: {"z": randn(g, 3, 5, 3), "adjacency": randn(g, 3, 3)})
    case("glore_reproject", 211, dict(op="glore_reproject"),
         lambda g: {"y": randn(g, 2, 6, 4), "bp": randn(g, 2, 4, 15)})
    return cases


def metadata_of(p):
    m = {"op": p["op"]}
    for key in ("adjacency_grad", "relu"):
        if key in p:
            m[key] = "true" if p[key] else "false"
    return m


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
    for name, g, inputs, p in cases:
        with torch.no_grad():
            out_shape = RUNNERS[p["op"]](dict(inputs), p)[0]["output"].shape
        grad_out = randn(g, *out_shape)
        results = forward_backward(inputs, grad_out, p)
        assert all(bool(torch.isfinite(r).all()) for r in results.values()), name
        tensors = dict(inputs)
        tensors["grad_out"] = grad_out
        tensors.update({f"expected.{k}": v for k, v in results.items()})
        tensors = {k: v.contiguous() for k, v in tensors.items()}
        meta = metadata_of(p)
        path = OUT_DIR / f"{name}.safetensors"
        write_safetensors(path, tensors, meta)
        check_roundtrip(path, tensors, meta)
        size = path.stat().st_size
        assert size < MAX_FILE_BYTES, f"{path} is {size} bytes"
        total += size
        print(f"{name:30s} {p['op']:22s} {size:6d} B  results: {', '.join(sorted(results))}")
    print(f"{len(cases)} files, {total} bytes in {OUT_DIR}")


if __name__ == "__main__":
    sys.exit(main())
