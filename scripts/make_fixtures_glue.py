"""Golden fixtures for the element-wise, reduction and softmax op families, from PyTorch.

What it makes: one file per case under ``tests/fixtures/{elementwise,reduce,softmax}/<case>.safetensors``,
holding float64 inputs, an upstream gradient where the op has one, and PyTorch's results under
``expected.<name>`` (the names ``detkd parity`` returns: output, grad_a, grad_b, grad_x, values, indices).
The op and its settings are in the safetensors ``__metadata__`` (``op``; ``shape``, ``s``, ``alpha``,
``value`` for the element-wise family; ``axes``, ``keepdim`` for the reductions; ``temperature`` for the
softmax family). See src/parity/{elementwise,reduce,softmax}.rs for the keys.

Every input is rounded to a value that bfloat16 *and* float16 represent exactly (and is checked to be), so
the Rust tests can cast the same file to f64, f32, f16 and bf16 and compare each run against the same
float64 expectation: the only differences left are detkd's f32 arithmetic and the final rounding.

The peer computations, all float64 on the CPU with autograd for the gradients:
- add/sub/mul/div: ``a + b`` etc. with PyTorch broadcasting; ``sum_to_shape``: ``Tensor.sum_to_size``;
  ``broadcast_to``: ``torch.broadcast_to``; ``scale``: ``x * s``; ``add_scaled``: ``torch.add(acc, x,
  alpha=alpha)``; ``fill``: ``torch.full_like``; unary: ``torch.neg/relu/sigmoid/exp/log/sqrt/square/abs``.
- sum_all/mean_all: ``x.sum()`` / ``x.mean()``; sum_axes/mean_axes: ``x.sum(dim, keepdim)`` /
  ``x.mean(dim, keepdim)``; max_last_axis: ``torch.max(x, dim=-1)`` (ties and NaN go to the first index,
  checked below against numpy's first-occurrence rule).
- softmax_last_axis / log_softmax_last_axis: ``torch.softmax(x / T, -1)`` / ``torch.log_softmax(x / T, -1)``.

How to run, from the repository root, with the pinned peer environment::

    .venv-peer/bin/python scripts/make_fixtures_glue.py

Inputs come from a torch.Generator with a fixed per-case seed, and files are written by
``write_safetensors`` (sorted metadata and tensor names), so a rerun rewrites byte-identical files.
Inputs stay away from kinks: |x| >= 0.125 for relu/abs, positive inputs for log/sqrt, |b| >= 0.5 for
division, distinct row values for the maximum's gradient.
"""

import sys
from pathlib import Path

import numpy as np
import torch

from make_fixtures_similarity import check_roundtrip, write_safetensors

ROOT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
DTYPE = torch.float64
MAX_FILE_BYTES = 64 * 1024
MAX_TOTAL_BYTES = 600 * 1024


# ----------------------------------------------------------------------------------------------
# Inputs


def exact(t):
    """Round to bfloat16 and check that float16 holds the result exactly as well."""
    q = t.to(torch.bfloat16).to(DTYPE)
    assert torch.equal(q.to(torch.float16).to(DTYPE), q), "value not exact in float16"
    return q


def gen(seed):
    return torch.Generator().manual_seed(seed)


def randn(g, *shape):
    return exact(torch.randn(shape, generator=g, dtype=DTYPE))


def magnitude_at_least(g, lo, *shape):
    """Random signs, magnitudes in [lo, lo + 1.5): away from 0."""
    m = lo + 1.5 * torch.rand(shape, generator=g, dtype=DTYPE)
    s = torch.where(torch.rand(shape, generator=g, dtype=DTYPE) < 0.5, -1.0, 1.0)
    return exact(m * s)


def positive(g, lo, *shape):
    return exact(lo + 2.0 * torch.rand(shape, generator=g, dtype=DTYPE))


def distinct_rows(g, rows, cols, spacing=0.125):
    """Rows whose values are distinct multiples of `spacing` (exact in both half types), shuffled."""
    out = torch.empty(rows, cols, dtype=DTYPE)
    for r in range(rows):
        perm = torch.randperm(cols, generator=g).to(DTYPE)
        out[r] = (perm - cols / 2) * spacing
    return exact(out)


def grads(out, grad_out, inputs):
    g = torch.autograd.grad(out, inputs, grad_out, allow_unused=True)
    return [torch.zeros_like(i) if gi is None else gi for i, gi in zip(inputs, g)]


def shape_meta(shape):
    return ",".join(str(d) for d in shape)


# ----------------------------------------------------------------------------------------------
# Element-wise family

BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
}

UNARY = {
    "neg": torch.neg,
    "relu": torch.relu,
    "sigmoid": torch.sigmoid,
    "exp": torch.exp,
    "log": torch.log,
    "sqrt": torch.sqrt,
    "square": torch.square,
    "abs": torch.abs,
}


def peer_binary(op, a, b, grad_out):
    a = a.clone().requires_grad_(True)
    b = b.clone().requires_grad_(True)
    out = BINARY[op](a, b)
    if out.numel() == 0:
        ga, gb = torch.zeros_like(a), torch.zeros_like(b)  # autograd skips empty graphs
    else:
        ga, gb = grads(out, grad_out, [a, b])
    return {"output": out, "grad_a": ga, "grad_b": gb}


def peer_unary(op, x, grad_out):
    x = x.clone().requires_grad_(True)
    out = UNARY[op](x)
    (gx,) = grads(out, grad_out, [x])
    return {"output": out, "grad_x": gx}


def elementwise_cases():
    cases = []

    def binary(name, op, sa, sb, seed, b_away=False):
        g = gen(seed)
        a = randn(g, *sa)
        b = magnitude_at_least(g, 0.5, *sb) if b_away else randn(g, *sb)
        full = torch.broadcast_shapes(torch.Size(sa), torch.Size(sb))
        go = randn(g, *full)
        cases.append((name, {"op": op}, {"a": a, "b": b, "grad_out": go}, peer_binary(op, a, b, go)))

    binary("add_bcast_4d", "add", (2, 3, 4, 5), (1, 3, 1, 1), 301)
    binary("sub_vector_into_3d", "sub", (4,), (2, 3, 4), 302)
    binary("mul_scalar_operand", "mul", (), (3, 4), 303)
    binary("mul_one_element", "mul", (3, 1, 5), (1,), 304)
    binary("div_bcast_both", "div", (2, 1, 4), (3, 1), 305, b_away=True)
    binary("div_same_shape", "div", (3, 4), (3, 4), 306, b_away=True)
    binary("sub_rank6", "sub", (2, 1, 2, 1, 3, 1), (1, 2, 1, 2, 1, 2), 307)
    binary("add_empty", "add", (0, 3), (1, 3), 308)
    binary("div_scalar_divisor", "div", (2, 5), (), 309, b_away=True)

    g = gen(310)
    x, go = randn(g, 2, 3, 4, 5), randn(g, 3, 1, 1)
    xr = x.clone().requires_grad_(True)
    out = xr.sum_to_size(3, 1, 1)
    (gx,) = grads(out, go, [xr])
    cases.append(("sum_to_shape_bias", {"op": "sum_to_shape", "shape": "3,1,1"}, {"x": x, "grad_out": go},
                  {"output": out, "grad_x": gx}))

    g = gen(311)
    x, go = randn(g, 2, 3, 4), randn(g)
    xr = x.clone().requires_grad_(True)
    out = xr.sum_to_size(torch.Size([]))
    (gx,) = grads(out, go, [xr])
    cases.append(("sum_to_shape_scalar", {"op": "sum_to_shape", "shape": ""}, {"x": x, "grad_out": go},
                  {"output": out, "grad_x": gx}))

    g = gen(312)
    x, go = randn(g, 3, 1), randn(g, 2, 3, 4)
    xr = x.clone().requires_grad_(True)
    out = torch.broadcast_to(xr, (2, 3, 4))
    (gx,) = grads(out, go, [xr])
    cases.append(("broadcast_to", {"op": "broadcast_to", "shape": "2,3,4"}, {"x": x, "grad_out": go},
                  {"output": out, "grad_x": gx}))

    g = gen(313)
    x, go = randn(g, 4, 5), randn(g, 4, 5)
    xr = x.clone().requires_grad_(True)
    out = xr * -1.5
    (gx,) = grads(out, go, [xr])
    cases.append(("scale", {"op": "scale", "s": "-1.5"}, {"x": x, "grad_out": go}, {"output": out, "grad_x": gx}))

    g = gen(314)
    acc, x = randn(g, 3, 4), randn(g, 3, 4)
    cases.append(("add_scaled", {"op": "add_scaled", "alpha": "0.25"}, {"acc": acc, "x": x},
                  {"output": torch.add(acc, x, alpha=0.25)}))

    g = gen(315)
    x = randn(g, 2, 3)
    cases.append(("fill", {"op": "fill", "value": "2.5"}, {"x": x}, {"output": torch.full_like(x, 2.5)}))

    for i, op in enumerate(UNARY):
        g = gen(320 + i)
        if op in ("log", "sqrt"):
            x = positive(g, 0.25, 3, 7)
        elif op in ("relu", "abs"):
            x = magnitude_at_least(g, 0.125, 3, 7)
        elif op == "sigmoid":
            x = randn(g, 3, 7)
            x[0, :4] = torch.tensor([-40.0, -12.0, 12.0, 40.0], dtype=DTYPE)  # saturated tails
        else:
            x = randn(g, 3, 7)
        go = randn(g, 3, 7)
        cases.append((f"unary_{op}", {"op": op}, {"x": x, "grad_out": go}, peer_unary(op, x, go)))
    return cases


# ----------------------------------------------------------------------------------------------
# Reduction family


def reduce_cases():
    cases = []

    for name, op, shape, seed in (
        ("sum_all", "sum_all", (3, 4, 5), 401),
        ("mean_all", "mean_all", (2, 3, 4), 402),
        ("sum_all_scalar", "sum_all", (), 403),
    ):
        g = gen(seed)
        x, go = randn(g, *shape), randn(g)
        xr = x.clone().requires_grad_(True)
        out = xr.sum() if op == "sum_all" else xr.mean()
        (gx,) = grads(out, go, [xr])
        cases.append((name, {"op": op}, {"x": x, "grad_out": go}, {"output": out, "grad_x": gx}))

    for name, op, shape, axes, keepdim, seed in (
        ("sum_axes_keepdim", "sum_axes", (2, 3, 4, 5), (1, 3), True, 411),
        ("sum_axes_last_negative", "sum_axes", (2, 3, 4), (-1,), False, 412),
        ("mean_axes", "mean_axes", (2, 3, 4, 5), (0, 2), False, 413),
        ("mean_axes_every_axis", "mean_axes", (3, 4), (1, 0), True, 414),
        ("sum_axes_leading", "sum_axes", (5, 2, 3), (0,), False, 415),
    ):
        g = gen(seed)
        x = randn(g, *shape)
        xr = x.clone().requires_grad_(True)
        fn = torch.sum if op == "sum_axes" else torch.mean
        out = fn(xr, dim=axes, keepdim=keepdim)
        go = randn(g, *out.shape)
        (gx,) = grads(out, go, [xr])
        meta = {"op": op, "axes": ",".join(str(a) for a in axes), "keepdim": "true" if keepdim else "false"}
        cases.append((name, meta, {"x": x, "grad_out": go}, {"output": out, "grad_x": gx}))

    def peer_max(x, grad_values):
        xr = x.clone().requires_grad_(True)
        values, indices = torch.max(xr, dim=-1)
        flat = x.reshape(-1, x.shape[-1]).numpy()
        nan_first = [int(np.argmax(np.isnan(row))) if np.isnan(row).any() else int(np.argmax(row)) for row in flat]
        assert indices.reshape(-1).tolist() == nan_first, "torch.max must pick the first maximum / NaN"
        (gx,) = grads(values, grad_values, [xr])
        return {"values": values, "indices": indices, "grad_x": gx}

    g = gen(421)
    x = distinct_rows(g, 6, 17)
    gv = randn(g, 6)
    cases.append(("max_last_axis", {"op": "max_last_axis"}, {"x": x, "grad_values": gv}, peer_max(x, gv)))

    g = gen(422)
    x = distinct_rows(g, 6, 5).reshape(2, 3, 5)
    gv = randn(g, 2, 3)
    cases.append(("max_last_axis_rank3", {"op": "max_last_axis"}, {"x": x, "grad_values": gv}, peer_max(x, gv)))

    # Ties: the first maximum gets the gradient (no gradcheck here: the maximum is not differentiable).
    x = exact(torch.tensor([[1.0, 3.0, 3.0, 2.0], [5.0, 5.0, 5.0, 5.0], [-1.0, -0.5, -0.5, -2.0]], dtype=DTYPE))
    gv = exact(torch.tensor([0.5, -1.25, 2.0], dtype=DTYPE))
    cases.append(("max_last_axis_ties", {"op": "max_last_axis"}, {"x": x, "grad_values": gv}, peer_max(x, gv)))
    return cases


# ----------------------------------------------------------------------------------------------
# Softmax family


def peer_softmax(op, x, grad_out, temperature):
    xr = x.clone().requires_grad_(True)
    fn = torch.softmax if op == "softmax_last_axis" else torch.log_softmax
    out = fn(xr / temperature, dim=-1)
    (gx,) = grads(out, grad_out, [xr])
    return {"output": out, "grad_x": gx}


def softmax_cases():
    cases = []

    def case(name, op, x, temperature, seed):
        go = randn(gen(seed), *x.shape)
        meta = {"op": op, "temperature": repr(float(temperature))}
        cases.append((name, meta, {"x": x, "grad_out": go}, peer_softmax(op, x, go, temperature)))

    g = gen(501)
    case("softmax_ld_bins", "softmax_last_axis", randn(g, 5, 17), 1.0, 502)
    g = gen(503)
    case("softmax_classes_t2", "softmax_last_axis", randn(g, 4, 80) * 2, 2.0, 504)
    g = gen(505)
    case("log_softmax_t05", "log_softmax_last_axis", randn(g, 5, 17), 0.5, 506)
    g = gen(507)
    case("softmax_negative_temperature", "softmax_last_axis", randn(g, 3, 5), -1.5, 508)
    g = gen(509)
    case("softmax_rank3", "softmax_last_axis", randn(g, 2, 3, 17), 1.0, 510)
    case("softmax_single_column", "softmax_last_axis", randn(gen(511), 4, 1), 1.0, 512)
    g = gen(513)
    case("log_softmax_long_row", "log_softmax_last_axis", randn(g, 1, 1100), 1.0, 514)

    # Large logits, exact in both half types: 1000 + 4k (bf16's spacing at 512..1024 is 4) and -3000 + 16k.
    g = gen(515)
    k = torch.randint(-3, 4, (4, 17), generator=g).to(DTYPE)
    x = exact(torch.cat([1000.0 + 4.0 * k[:2], -3000.0 + 16.0 * k[2:]]))
    case("softmax_large_logits", "softmax_last_axis", x, 1.0, 516)
    case("log_softmax_large_logits", "log_softmax_last_axis", x, 1.0, 517)
    return cases


# ----------------------------------------------------------------------------------------------


def write_family(family, cases):
    out_dir = ROOT / family
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [c[0] for c in cases]
    assert len(set(names)) == len(names), family
    for stale in out_dir.glob("*.safetensors"):
        if stale.stem not in names:
            stale.unlink()
    total = 0
    for name, metadata, inputs, expected in cases:
        tensors = {}
        for key, value in inputs.items():
            value = value.detach().contiguous()
            assert value.dtype == DTYPE and torch.equal(exact(value), value), (name, key)
            tensors[key] = value
        for key, value in expected.items():
            value = value.detach().contiguous()
            if value.is_floating_point():
                assert bool(torch.isfinite(value).all()), (name, key)
            tensors[f"expected.{key}"] = value
        path = out_dir / f"{name}.safetensors"
        write_safetensors(path, tensors, metadata)
        check_roundtrip(path, tensors, metadata)
        size = path.stat().st_size
        assert size < MAX_FILE_BYTES, f"{path} is {size} bytes"
        total += size
        print(f"{family}/{name:32s} {metadata['op']:22s} {size:6d} B")
    return total


def main():
    print(f"torch {torch.__version__}")
    total = 0
    for family, cases in (
        ("elementwise", elementwise_cases()),
        ("reduce", reduce_cases()),
        ("softmax", softmax_cases()),
    ):
        total += write_family(family, cases)
    assert total < MAX_TOTAL_BYTES, f"fixtures total {total} bytes"
    print(f"{total} bytes in {ROOT}/{{elementwise,reduce,softmax}}")


if __name__ == "__main__":
    sys.exit(main())
