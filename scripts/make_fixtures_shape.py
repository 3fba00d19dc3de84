"""Golden fixtures for the shape op family, from PyTorch, for the Rust peer-fixture tests.

What it makes: one file per case, ``tests/fixtures/shape/<case>.safetensors``, holding the inputs
(float64 data, or int64 labels), an upstream gradient where the data is float, and PyTorch's results
under ``expected.<name>`` (the names ``detkd parity`` returns: output, output.<i>, grad_x, grad_x.<i>).
The op and its settings are in the safetensors ``__metadata__`` (all strings): ``op`` (permute,
transpose, narrow, concat, split, index_select), ``perm``, ``dim0``/``dim1``, ``axis``,
``start``/``length``, ``sizes`` (see src/parity/shape.rs). ``indices`` is stored as int64.

The peer computations, float64 on the CPU with autograd for the gradients:
- permute: ``x.permute(perm)``; transpose: ``x.transpose(dim0, dim1)``.
- narrow: ``x.narrow(axis, start, length)``, zero-length slices included (the gradient is all zeros).
- concat: ``torch.cat(parts, axis)``, an empty part included; split: ``torch.split(x, sizes, axis)``,
  an empty piece included.
- index_select: ``torch.index_select(x, axis, indices)`` with duplicated indices (the backward adds the
  duplicates' gradients) and rows nobody selects (gradient 0), and an empty index list.
- int64 labels (permute, concat, index_select) have no gradient: only ``expected.output``.

How to run, from the repository root, with the pinned peer environment::

    .venv-peer/bin/python scripts/make_fixtures_shape.py

Inputs come from a torch.Generator with a fixed per-case seed, and files are written by
``write_safetensors`` (sorted metadata and tensor names), so a rerun rewrites byte-identical files.
These ops are linear (pure data movement, plus sums for index_select's backward), so there are no kinks
to keep away from.
"""

import json
import struct
import sys
from pathlib import Path

import torch
from safetensors import safe_open

OUT_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "shape"
DTYPE = torch.float64
MAX_FILE_BYTES = 16 * 1024
MAX_TOTAL_BYTES = 128 * 1024


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


def with_grad(x):
    return x.clone().requires_grad_(True) if x.is_floating_point() else x


def peer_single(fn, x, grad_out):
    """One input, one output: output and, for float data, grad_x."""
    xg = with_grad(x)
    out = fn(xg)
    result = {"output": out.detach()}
    if grad_out is not None:
        (gx,) = torch.autograd.grad(out, [xg], grad_out)
        result["grad_x"] = gx
    return result


def peer_concat(parts, axis, grad_out):
    leaves = [with_grad(p) for p in parts]
    out = torch.cat(leaves, axis)
    result = {"output": out.detach()}
    if grad_out is not None:
        for i, g in enumerate(torch.autograd.grad(out, leaves, grad_out)):
            result[f"grad_x.{i}"] = g
    return result


def peer_split(x, sizes, axis, grads):
    xg = with_grad(x)
    pieces = torch.split(xg, sizes, axis)
    result = {f"output.{i}": p.detach() for i, p in enumerate(pieces)}
    if grads is not None:
        (gx,) = torch.autograd.grad(pieces, [xg], grads)
        result["grad_x"] = gx
    return result


# ----------------------------------------------------------------------------------------------
# Cases


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(g, *shape):
    return torch.randn(*shape, generator=g, dtype=DTYPE)


def labels(g, *shape):
    return torch.randint(-5, 90, shape, generator=g, dtype=torch.int64)


def csv(values):
    return ",".join(str(v) for v in values)


def build_cases():
    """(name, metadata, inputs, expected) per case."""
    cases = []

    def single(name, meta, x, fn, seed):
        g = gen(seed)
        out_shape = fn(x).shape
        grad_out = randn(g, *out_shape) if x.is_floating_point() else None
        inputs = {"x": x}
        if grad_out is not None:
            inputs["grad_out"] = grad_out
        cases.append((name, meta, inputs, peer_single(fn, x, grad_out)))

    # Permute: the NCHW -> NHWC layout change, a rank-6 shuffle with unit axes, int64 labels.
    for name, shape, perm, seed, as_labels in (
        ("permute_nchw_to_nhwc", (2, 3, 4, 5), (0, 2, 3, 1), 301, False),
        ("permute_rank6", (2, 1, 3, 2, 1, 2), (5, 3, 1, 0, 4, 2), 302, False),
        ("permute_i64_labels", (3, 4, 2), (2, 0, 1), 303, True),
    ):
        g = gen(seed)
        x = labels(g, *shape) if as_labels else randn(g, *shape)
        single(name, {"op": "permute", "perm": csv(perm)}, x, lambda t, p=perm: t.permute(p), seed + 50)

    g = gen(304)
    x = randn(g, 3, 4, 5)
    single("transpose", {"op": "transpose", "dim0": "0", "dim1": "2"}, x, lambda t: t.transpose(0, 2), 354)

    # Narrow: an inner slice, a slice of the last axis, zero-length slices (in the middle and at the end).
    for name, shape, axis, start, length, seed in (
        ("narrow", (4, 6, 3), 1, 2, 3, 305),
        ("narrow_last_axis", (5, 7), 1, 0, 4, 306),
        ("narrow_zero_length", (4, 6, 3), 1, 3, 0, 307),
        ("narrow_zero_length_at_end", (4, 6, 3), 1, 6, 0, 308),
    ):
        g = gen(seed)
        x = randn(g, *shape)
        meta = {"op": "narrow", "axis": str(axis), "start": str(start), "length": str(length)}
        single(name, meta, x, lambda t, a=axis, s=start, n=length: t.narrow(a, s, n), seed + 50)

    # Concat along the anchor axis of [N, anchors, classes] head outputs; with an empty part; int64 labels.
    for name, shapes, axis, seed, as_labels in (
        ("concat_anchor_axis", ((2, 6, 3), (2, 2, 3), (2, 1, 3)), 1, 309, False),
        ("concat_with_empty_part", ((3, 2), (0, 2), (4, 2)), 0, 310, False),
        ("concat_i64_labels", ((2, 3), (2, 1)), 1, 311, True),
    ):
        g = gen(seed)
        parts = [labels(g, *s) if as_labels else randn(g, *s) for s in shapes]
        joined = torch.cat(parts, axis)
        grad_out = None if as_labels else randn(g, *joined.shape)
        inputs = {f"x.{i}": p for i, p in enumerate(parts)}
        if grad_out is not None:
            inputs["grad_out"] = grad_out
        cases.append((name, {"op": "concat", "axis": str(axis)}, inputs, peer_concat(parts, axis, grad_out)))

    # Split with an empty piece.
    g = gen(312)
    x = randn(g, 7, 2)
    sizes = (2, 0, 5)
    grads = [randn(g, n, 2) for n in sizes]
    inputs = {"x": x, **{f"grad_out.{i}": gi for i, gi in enumerate(grads)}}
    cases.append(("split", {"op": "split", "axis": "0", "sizes": csv(sizes)}, inputs,
                  peer_split(x, list(sizes), 0, grads)))

    # index_select: duplicates (summed in the backward) and unselected rows, along the first and a middle
    # axis; int64 labels; an empty index list.
    for name, shape, axis, idx, seed, as_labels in (
        ("index_select_duplicates", (6, 4), 0, (4, 1, 4, 0, 4), 313, False),
        ("index_select_middle_axis", (3, 7, 2), 1, (6, 0, 6, 6, 2, 0), 314, False),
        ("index_select_i64_labels", (8,), 0, (7, 7, 0, 3), 315, True),
        ("index_select_empty", (5, 3), 0, (), 316, False),
    ):
        g = gen(seed)
        x = labels(g, *shape) if as_labels else randn(g, *shape)
        indices = torch.tensor(idx, dtype=torch.int64)
        out_shape = torch.index_select(x, axis, indices).shape
        grad_out = None if as_labels else randn(g, *out_shape)
        inputs = {"x": x, "indices": indices}
        if grad_out is not None:
            inputs["grad_out"] = grad_out
        expected = peer_single(lambda t, a=axis, i=indices: torch.index_select(t, a, i), x, grad_out)
        cases.append((name, {"op": "index_select", "axis": str(axis)}, inputs, expected))
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
            tensors[f"expected.{key}"] = value.detach()
        path = OUT_DIR / f"{name}.safetensors"
        write_safetensors(path, tensors, metadata)
        check_roundtrip(path, {k: v.detach().contiguous() for k, v in tensors.items()}, metadata)
        size = path.stat().st_size
        assert size < MAX_FILE_BYTES, f"{path} is {size} bytes"
        total += size
        print(f"{name:28s} {metadata['op']:13s} {size:6d} B")
    assert total < MAX_TOTAL_BYTES, f"fixtures total {total} bytes"
    print(f"{len(cases)} files, {total} bytes in {OUT_DIR}")


if __name__ == "__main__":
    sys.exit(main())
