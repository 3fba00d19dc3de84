"""Golden fixtures for the optimizer updates (src/ops/optim), from torch.optim itself.

Each case starts from a float64 parameter, feeds ``steps`` seeded gradients through ``torch.optim.SGD``
or ``torch.optim.AdamW`` (``foreach=False``, the single-tensor code path that detkd's kernels mirror), and
stores the parameter and the optimizer state after the last step. The clipping case runs
``torch.nn.utils.clip_grad_norm_`` on several gradients.

Output: ``tests/fixtures/optim/<case>.safetensors`` with the inputs (``param``, ``grad.<i>``), the
configuration as ``__metadata__`` (keys in src/parity/optim.rs) and the results as ``expected.<name>``.

Run from the repository root with the pinned peer environment::

    .venv-peer/bin/python scripts/make_fixtures_optim.py

Seeded generators and float64 on the CPU: reruns write byte-identical files.
"""

from pathlib import Path

import torch
from safetensors.torch import save_file, load_file

OUT_DIR = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "optim"
DTYPE = torch.float64


def seeded(seed):
    g = torch.Generator().manual_seed(seed)
    return lambda *shape, scale=1.0: torch.randn(*shape, generator=g, dtype=DTYPE) * scale


def write(name, tensors, metadata):
    path = OUT_DIR / f"{name}.safetensors"
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, str(path), metadata={k: str(v) for k, v in metadata.items()})
    back = load_file(str(path))
    assert set(back) == set(tensors), name
    for k in tensors:
        assert torch.equal(back[k], tensors[k]), (name, k)
    print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")


def run_optimizer(name, make_opt, metadata, shape, steps, seed, grad_scale=1.0):
    rand = seeded(seed)
    param0 = rand(*shape)
    grads = [rand(*shape, scale=grad_scale) for _ in range(steps)]
    param = torch.nn.Parameter(param0.clone())
    opt = make_opt([param])
    for g in grads:
        param.grad = g.clone()
        opt.step()
    tensors = {"param": param0}
    tensors.update({f"grad.{i}": g for i, g in enumerate(grads)})
    tensors["expected.param"] = param.detach().clone()
    state = opt.state[param]
    for key, out in [("momentum_buffer", "momentum_buffer"), ("exp_avg", "exp_avg"), ("exp_avg_sq", "exp_avg_sq")]:
        if key in state and state[key] is not None:
            tensors[f"expected.{out}"] = state[key].detach().clone()
    write(name, tensors, dict(metadata, steps=steps))


def main():
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    sgd_cases = {
        "sgd_plain": dict(lr=0.1),
        "sgd_momentum_wd": dict(lr=0.05, momentum=0.9, weight_decay=1e-2),
        "sgd_nesterov": dict(lr=0.02, momentum=0.8, nesterov=True, weight_decay=5e-4),
        "sgd_dampening": dict(lr=0.03, momentum=0.9, dampening=0.3),
    }
    for i, (name, kw) in enumerate(sgd_cases.items()):
        meta = dict(op="sgd", **{k: (str(v).lower() if isinstance(v, bool) else v) for k, v in kw.items()})
        run_optimizer(
            name,
            lambda params, kw=kw: torch.optim.SGD(params, foreach=False, **kw),
            meta,
            (5, 7),
            steps=4,
            seed=100 + i,
        )
    adam_cases = {
        "adamw_default": dict(lr=1e-3),
        "adamw_wd_betas": dict(lr=5e-3, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.05),
        "adamw_tiny_grads": dict(lr=1e-2, weight_decay=0.0),
    }
    for i, (name, kw) in enumerate(adam_cases.items()):
        meta = dict(op="adamw", lr=kw["lr"])
        if "betas" in kw:
            meta.update(beta1=kw["betas"][0], beta2=kw["betas"][1])
        for k in ("eps", "weight_decay"):
            if k in kw:
                meta[k] = kw[k]
        run_optimizer(
            name,
            lambda params, kw=kw: torch.optim.AdamW(params, foreach=False, **kw),
            meta,
            (4, 9),
            steps=5,
            seed=200 + i,
            grad_scale=1e-6 if name == "adamw_tiny_grads" else 1.0,
        )
    for name, max_norm, scale in [("clip_grad_norm_clips", 1.0, 1.0), ("clip_grad_norm_below", 100.0, 1.0)]:
        rand = seeded(300 if name.endswith("clips") else 301)
        grads = [rand(3, 4, scale=scale), rand(7, scale=scale), rand(2, 2, 2, scale=scale)]
        params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        total = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=False)
        tensors = {f"grad.{i}": g for i, g in enumerate(grads)}
        tensors.update({f"expected.grad.{i}": p.grad.clone() for i, p in enumerate(params)})
        tensors["expected.total_norm"] = total.detach().clone().reshape(())
        write(name, tensors, dict(op="clip_grad_norm", count=len(grads), max_norm=max_norm))


if __name__ == "__main__":
    main()
