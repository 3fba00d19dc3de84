"""Golden fixtures for the conv2d, resize and norm op families, from PyTorch, for the Rust peer-fixture tests.

What it makes: one file per case, ``tests/fixtures/<family>/<case>.safetensors`` with family one of conv2d,
resize, norm, holding float64 inputs, an upstream gradient ``grad_out`` where the op has a backward, and
PyTorch's results under ``expected.<name>`` (the names ``detkd parity`` returns). The op and its settings
are in the safetensors ``__metadata__``:

- ``conv2d``: ``stride``, ``padding``, ``dilation`` (``"h,w"``) and optionally ``workspace_bytes`` (detkd's
  chunking limit, to exercise chunked batches; PyTorch has no such knob). Tensors ``x``, ``weight``,
  optional ``bias``, ``grad_out``. Results ``output``, ``grad_x``, ``grad_weight``, ``grad_bias``.
- ``resize_bilinear``: ``size`` (``"OH,OW"``); ``upsample_nearest2x``: nothing. Tensors ``x``, ``grad_out``.
  Results ``output``, ``grad_x``.
- ``batch_norm_train``: ``eps``, ``momentum``. Tensors ``x``, optional ``weight``, ``bias``,
  ``running_mean``, ``running_var``, ``grad_out``. Results ``output``, ``mean``, ``inv_std``
  (``torch.native_batch_norm``'s save_mean / save_invstd), ``running_mean``, ``running_var`` (after the
  update), ``grad_x``, ``grad_weight``, ``grad_bias``.
- ``batch_norm_eval``: ``eps``. Tensors ``x``, ``running_mean``, ``running_var``, optional ``weight``,
  ``bias``. Result ``output``.
- ``group_norm``: ``num_groups``, ``eps``. Tensors ``x``, optional ``weight``, ``bias``, ``grad_out``.
  Results ``output``, ``mean``, ``inv_std`` (``torch.native_group_norm``'s mean / rstd, ``[B, G]``),
  ``grad_x``, ``grad_weight``, ``grad_bias``.

The peer computations, all float64 on the CPU with autograd for the gradients: ``F.conv2d``,
``F.interpolate(mode='bilinear', align_corners=False, size=...)``, ``F.interpolate(scale_factor=2,
mode='nearest')``, ``F.batch_norm(training=True / False)`` (running statistics updated in place on clones),
``F.group_norm``.

How to run, from the repository root, with the pinned peer environment::

    .venv-peer/bin/python scripts/make_fixtures_nn.py

Inputs come from a torch.Generator with a fixed per-case seed and files are written by
``write_safetensors`` (sorted metadata and tensor names), so a rerun rewrites byte-identical files. All
three ops are smooth in their inputs (no kinks to avoid); variances are kept well above eps.
"""

import json
import struct
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open

ROOT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
DTYPE = torch.float64
MAX_FILE_BYTES = 64 * 1024
MAX_TOTAL_BYTES = 600 * 1024


# ----------------------------------------------------------------------------------------------
# Serialisation


def write_safetensors(path, tensors, metadata):
    """Write a safetensors file deterministically: metadata first, then tensors by name."""
    header = {"__metadata__": {k: metadata[k] for k in sorted(metadata)}}
    chunks = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous()
        if t.dtype != torch.float64:
            raise TypeError(f"{name}: {t.dtype}")
        data = t.numpy().astype("<f8", copy=False).tobytes()
        header[name] = {"dtype": "F64", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
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
# Helpers


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(g, *shape):
    return torch.randn(*shape, generator=g, dtype=DTYPE)


def pair(v):
    return f"{v[0]},{v[1]}"


def grads(out, grad_out, inputs):
    """d<out, grad_out>/d inputs (zeros where an input does not reach the output, e.g. an empty batch)."""
    if out.numel() == 0:
        return [torch.zeros_like(i) for i in inputs]
    g = torch.autograd.grad(out, inputs, grad_out, allow_unused=True)
    return [torch.zeros_like(i) if gi is None else gi for i, gi in zip(inputs, g)]


def leaf(t):
    return t.clone().requires_grad_(True)


# ----------------------------------------------------------------------------------------------
# Peer computations: each returns (inputs, expected)


def peer_conv2d(g, x_shape, w_shape, stride, padding, dilation, with_bias):
    x, w = randn(g, *x_shape), randn(g, *w_shape)
    b = randn(g, w_shape[0]) if with_bias else None
    leaves = [leaf(x), leaf(w)] + ([leaf(b)] if with_bias else [])
    out = F.conv2d(leaves[0], leaves[1], leaves[2] if with_bias else None, stride, padding, dilation)
    go = randn(g, *out.shape)
    gs = grads(out, go, leaves)
    inputs = {"x": x, "weight": w, "grad_out": go}
    expected = {"output": out, "grad_x": gs[0], "grad_weight": gs[1]}
    if with_bias:
        inputs["bias"] = b
        expected["grad_bias"] = gs[2]
    return inputs, expected


def peer_bilinear(g, x_shape, size):
    x = randn(g, *x_shape)
    xl = leaf(x)
    out = F.interpolate(xl, size=size, mode="bilinear", align_corners=False)
    go = randn(g, *out.shape)
    (gx,) = grads(out, go, [xl])
    return {"x": x, "grad_out": go}, {"output": out, "grad_x": gx}


def peer_nearest2x(g, x_shape):
    x = randn(g, *x_shape)
    xl = leaf(x)
    out = F.interpolate(xl, scale_factor=2, mode="nearest")
    go = randn(g, *out.shape)
    (gx,) = grads(out, go, [xl])
    return {"x": x, "grad_out": go}, {"output": out, "grad_x": gx}


def affine_params(g, c, affine):
    if not affine:
        return None, None
    return 1.0 + 0.5 * randn(g, c), randn(g, c)


def peer_batch_norm_train(g, x_shape, eps, momentum, affine, running, offset=0.0):
    c = x_shape[1]
    x = randn(g, *x_shape) * 1.5 + offset
    w, b = affine_params(g, c, affine)
    rm = randn(g, c) if running else None
    rv = randn(g, c).abs() + 0.5 if running else None
    leaves = [leaf(x)] + ([leaf(w), leaf(b)] if affine else [])
    rm_new = rm.clone() if running else None
    rv_new = rv.clone() if running else None
    out = F.batch_norm(leaves[0], rm_new, rv_new, leaves[1] if affine else None, leaves[2] if affine else None,
                       training=True, momentum=momentum, eps=eps)
    go = randn(g, *out.shape)
    gs = grads(out, go, leaves)
    inputs = {"x": x, "grad_out": go}
    expected = {"output": out, "grad_x": gs[0]}
    if x.numel() > 0:
        _, save_mean, save_invstd = torch.native_batch_norm(x, w, b, None, None, True, momentum, eps)
        expected["mean"], expected["inv_std"] = save_mean, save_invstd
    if affine:
        inputs["weight"], inputs["bias"] = w, b
        expected["grad_weight"], expected["grad_bias"] = gs[1], gs[2]
    if running:
        inputs["running_mean"], inputs["running_var"] = rm, rv
        expected["running_mean"], expected["running_var"] = rm_new, rv_new
    return inputs, expected


def peer_batch_norm_eval(g, x_shape, eps, affine):
    c = x_shape[1]
    x = randn(g, *x_shape)
    w, b = affine_params(g, c, affine)
    rm, rv = randn(g, c), randn(g, c).abs() + 0.5
    out = F.batch_norm(x, rm.clone(), rv.clone(), w, b, training=False, eps=eps)
    inputs = {"x": x, "running_mean": rm, "running_var": rv}
    if affine:
        inputs["weight"], inputs["bias"] = w, b
    return inputs, {"output": out}


def peer_group_norm(g, x_shape, groups, eps, affine, offset=0.0):
    c = x_shape[1]
    x = randn(g, *x_shape) * 1.5 + offset
    w, b = affine_params(g, c, affine)
    leaves = [leaf(x)] + ([leaf(w), leaf(b)] if affine else [])
    out = F.group_norm(leaves[0], groups, leaves[1] if affine else None, leaves[2] if affine else None, eps)
    go = randn(g, *out.shape)
    gs = grads(out, go, leaves)
    inputs = {"x": x, "grad_out": go}
    expected = {"output": out, "grad_x": gs[0]}
    if x.numel() > 0:
        n, _, h, wd = x_shape
        _, mean, rstd = torch.native_group_norm(x, w, b, n, c, h * wd, groups, eps)
        expected["mean"], expected["inv_std"] = mean, rstd
    if affine:
        inputs["weight"], inputs["bias"] = w, b
        expected["grad_weight"], expected["grad_bias"] = gs[1], gs[2]
    return inputs, expected


# ----------------------------------------------------------------------------------------------
# Cases: (family, name, metadata, inputs, expected)


def conv_cases():
    cases = []
    for name, x_shape, w_shape, stride, padding, dilation, bias, seed, extra in (
        ("conv3x3_s1_p1", (2, 3, 7, 6), (4, 3, 3, 3), (1, 1), (1, 1), (1, 1), True, 301, {}),
        ("conv3x3_s2_p1", (2, 3, 9, 8), (5, 3, 3, 3), (2, 2), (1, 1), (1, 1), True, 302, {}),
        ("conv3x3_d2_p2_no_bias", (1, 2, 9, 10), (3, 2, 3, 3), (1, 1), (2, 2), (2, 2), False, 303, {}),
        ("conv_non_square", (2, 3, 8, 11), (2, 3, 3, 2), (2, 1), (1, 0), (1, 2), True, 304, {}),
        ("conv5x3_s3x2", (1, 2, 6, 7), (3, 2, 5, 3), (3, 2), (2, 1), (1, 1), True, 305, {}),
        ("conv1x1", (3, 4, 5, 6), (6, 4, 1, 1), (1, 1), (0, 0), (1, 1), True, 306, {}),
        ("conv1x1_s2", (2, 4, 7, 5), (3, 4, 1, 1), (2, 2), (0, 0), (1, 1), False, 307, {}),
        ("conv3x3_chunked", (3, 3, 6, 5), (4, 3, 3, 3), (1, 1), (1, 1), (1, 1), True, 308,
         {"workspace_bytes": "1"}),
        ("conv_empty_batch", (0, 3, 5, 5), (2, 3, 3, 3), (1, 1), (1, 1), (1, 1), True, 309, {}),
    ):
        inputs, expected = peer_conv2d(gen(seed), x_shape, w_shape, stride, padding, dilation, bias)
        meta = {"op": "conv2d", "stride": pair(stride), "padding": pair(padding), "dilation": pair(dilation),
                **extra}
        cases.append(("conv2d", name, meta, inputs, expected))
    return cases


def resize_cases():
    cases = []
    for name, x_shape, size, seed in (
        ("bilinear_up_non_integer", (2, 3, 5, 7), (9, 12), 401),
        ("bilinear_down_non_integer", (2, 2, 13, 11), (5, 4), 402),
        ("bilinear_up_and_down", (1, 3, 6, 10), (11, 4), 403),
        ("bilinear_up_2x", (1, 2, 4, 5), (8, 10), 404),
        ("bilinear_same_size", (1, 2, 4, 4), (4, 4), 405),
        ("bilinear_to_1x1", (1, 2, 5, 6), (1, 1), 406),
        ("bilinear_from_one_row", (1, 2, 1, 4), (3, 7), 407),
        ("bilinear_empty_batch", (0, 3, 4, 4), (6, 6), 408),
    ):
        inputs, expected = peer_bilinear(gen(seed), x_shape, size)
        cases.append(("resize", name, {"op": "resize_bilinear", "size": pair(size)}, inputs, expected))
    for name, x_shape, seed in (("nearest2x", (2, 3, 4, 5), 411), ("nearest2x_1x1", (1, 2, 1, 1), 412)):
        inputs, expected = peer_nearest2x(gen(seed), x_shape)
        cases.append(("resize", name, {"op": "upsample_nearest2x"}, inputs, expected))
    return cases


def norm_cases():
    cases = []
    for name, x_shape, eps, momentum, affine, running, offset, seed in (
        ("bn_train_affine_running", (4, 3, 5, 6), 1e-5, 0.1, True, True, 0.0, 501),
        ("bn_train_drkd_eps", (2, 5, 4, 4), 1e-4, 0.1, True, True, 0.0, 502),
        ("bn_train_momentum_0.3_no_affine", (3, 2, 3, 3), 1e-5, 0.3, False, True, 0.0, 503),
        ("bn_train_no_running", (2, 4, 3, 5), 1e-5, 0.1, True, False, 0.0, 504),
        ("bn_train_large_mean", (2, 3, 6, 6), 1e-5, 0.1, True, True, 100.0, 505),
        ("bn_train_single_pixel", (5, 3, 1, 1), 1e-5, 0.1, True, True, 0.0, 506),
        ("bn_train_empty_batch", (0, 3, 4, 4), 1e-5, 0.1, True, True, 0.0, 507),
    ):
        inputs, expected = peer_batch_norm_train(gen(seed), x_shape, eps, momentum, affine, running, offset)
        meta = {"op": "batch_norm_train", "eps": repr(eps), "momentum": repr(momentum)}
        cases.append(("norm", name, meta, inputs, expected))
    for name, x_shape, eps, affine, seed in (
        ("bn_eval_affine", (2, 4, 3, 5), 1e-5, True, 511),
        ("bn_eval_drkd_eps_no_affine", (1, 3, 4, 4), 1e-4, False, 512),
    ):
        inputs, expected = peer_batch_norm_eval(gen(seed), x_shape, eps, affine)
        cases.append(("norm", name, {"op": "batch_norm_eval", "eps": repr(eps)}, inputs, expected))
    for name, x_shape, groups, affine, offset, seed in (
        ("gn_32_groups", (2, 64, 3, 4), 32, True, 0.0, 521),
        ("gn_4_groups", (2, 8, 5, 5), 4, True, 0.0, 522),
        ("gn_1_group_no_affine", (2, 6, 3, 3), 1, False, 0.0, 523),
        ("gn_group_per_channel", (1, 5, 4, 3), 5, True, 0.0, 524),
        ("gn_large_mean", (2, 8, 4, 4), 2, True, 100.0, 525),
        ("gn_empty_batch", (0, 8, 3, 3), 4, True, 0.0, 526),
    ):
        inputs, expected = peer_group_norm(gen(seed), x_shape, groups, 1e-5, affine, offset)
        meta = {"op": "group_norm", "num_groups": str(groups), "eps": repr(1e-5)}
        cases.append(("norm", name, meta, inputs, expected))
    return cases


def main():
    print(f"torch {torch.__version__}")
    cases = conv_cases() + resize_cases() + norm_cases()
    total = 0
    for family in ("conv2d", "resize", "norm"):
        out_dir = ROOT / family
        out_dir.mkdir(parents=True, exist_ok=True)
        names = [c[1] for c in cases if c[0] == family]
        assert len(set(names)) == len(names), family
        for stale in out_dir.glob("*.safetensors"):
            if stale.stem not in names:
                stale.unlink()
    for family, name, metadata, inputs, expected in cases:
        tensors = {k: v.detach() for k, v in inputs.items()}
        for key, value in expected.items():
            value = value.detach()
            assert bool(torch.isfinite(value).all()), (name, key)
            tensors[f"expected.{key}"] = value
        path = ROOT / family / f"{name}.safetensors"
        write_safetensors(path, tensors, metadata)
        check_roundtrip(path, {k: v.contiguous() for k, v in tensors.items()}, metadata)
        size = path.stat().st_size
        assert size < MAX_FILE_BYTES, f"{path} is {size} bytes"
        total += size
        print(f"{family:7s} {name:34s} {metadata['op']:20s} {size:6d} B")
    assert total < MAX_TOTAL_BYTES, f"fixtures total {total} bytes"
    print(f"{len(cases)} files, {total} bytes under {ROOT}")


if __name__ == "__main__":
    sys.exit(main())
