"""TinyGFL in PyTorch: a module whose ``state_dict()`` has exactly the names, shapes and layouts of detkd's
checkpoints, so a detkd checkpoint loads into it with ``load_state_dict(strict=True)`` and back.

The architecture (src/engine/model.rs) is rebuilt from the checkpoint's ``__metadata__``: ``detkd.model``
holds the ``TinyGflConfig`` as JSON (every field is required and no other is accepted, as detkd's own
parser), ``detkd.classes`` the class names as a JSON list. The modules and their names::

    backbone.stem                 ConvGnRelu 3x3 s2, 3 -> stem_channels
    backbone.stage{1..4}.0        ConvGnRelu 3x3 s2 (strides 4, 8, 16, 32)
    backbone.stage{i}.{1..depth}  BasicBlock: conv1-gn1-relu-conv2-gn2 + identity, relu
    neck.lateral.{0,1,2}          1x1 conv with bias, stages 2-4 -> fpn_channels
    neck.output.{0,1,2}           3x3 conv with bias on the top-down sums (nearest 2x upsampling): P3-P5
    head.cls_convs.{i}            ConvGnRelu 3x3 stack, shared by the levels
    head.reg_convs.{i}            ConvGnRelu 3x3 stack, shared by the levels
    head.gfl_cls                  3x3 conv with bias -> num_classes logits
    head.gfl_reg                  3x3 conv with bias -> 4 (reg_max + 1) logits, times head.scales.{l}.scale

``ConvGnRelu`` is ``conv`` (no bias, OIHW weight) + ``gn`` (``nn.GroupNorm``, eps 1e-5, affine). GroupNorm's
group count follows ``TinyGflConfig::groups``: ``g = max(channels // channels_per_group, 1)``, lowered to
the largest divisor of ``channels`` not above it. Each ``head.scales.{l}.scale`` has shape ``[1]``.

Using it with a checkpoint trained by detkd::

    cargo run --release -- train --preset student -o ckpt.safetensors
    .venv-peer/bin/python scripts/tiny_gfl.py ckpt.safetensors --image-size 128

loads the checkpoint strictly (a missing or unexpected name, or a wrong shape, is an error), runs the
model on a seeded random batch and prints the shapes of every output. From Python::

    from tiny_gfl import load_checkpoint
    model, config, classes = load_checkpoint("ckpt.safetensors")
    out = model(images)  # {"stages": [...], "fpn": [...], "cls": [...], "reg": [...]}

and ``save_checkpoint(path, model, classes)`` writes a file that ``detkd eval`` loads.

The interop fixture for tests/interop.rs::

    .venv-peer/bin/python scripts/tiny_gfl.py --write-fixture tests/fixtures/interop

writes two files. ``tiny_gfl.safetensors`` is an ordinary detkd checkpoint (the parameters in float32
and the two metadata keys) of a tiny, randomly initialised model (seeded; every parameter is random,
GroupNorm affines and the per-level scales included, so none of them is an identity). It holds nothing
else, so detkd's strict ``load_checkpoint`` reads it as it is. ``tiny_gfl_io.safetensors`` holds the
input batch ``input.images`` [2, 3, 32, 64] and PyTorch's outputs ``expected.stage.<k>`` (k = 0..3:
stages 1-4), ``expected.fpn.<l>``, ``expected.cls.<l>``, ``expected.reg.<l>`` (l = 0..2: P3-P5), all
float32. The expected outputs are computed in float64 (the float32 parameters and input widened exactly)
and then rounded to float32. Files are written with sorted names and metadata, so a rerun rewrites
identical bytes.
"""

import argparse
import json
import struct
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open

MODEL_KEY = "detkd.model"
CLASSES_KEY = "detkd.classes"
# The fields of detkd's TinyGflConfig, in its declaration order (serde writes them in this order).
CONFIG_FIELDS = (
    "num_classes",
    "stem_channels",
    "stage_channels",
    "stage_depths",
    "fpn_channels",
    "head_convs",
    "head_channels",
    "reg_max",
    "channels_per_group",
)
STAGE_STRIDES = (4, 8, 16, 32)
FPN_STRIDES = (8, 16, 32)
GN_EPS = 1e-5

# The interop fixture: small enough to commit, with every structural case detkd has: residual stages of
# depth 0, 1 and 2, a two-layer head stack (its second layer reads head_channels, not fpn_channels), a
# GroupNorm of one group (4 channels, 3 per group) and one whose group count falls back to a divisor
# (10 channels, 3 per group: 3 does not divide 10, so 2 groups), and a non-square input.
FIXTURE_CONFIG = {
    "num_classes": 3,
    "stem_channels": 4,
    "stage_channels": [4, 6, 8, 8],
    "stage_depths": [1, 0, 2, 1],
    "fpn_channels": 8,
    "head_convs": 2,
    "head_channels": 10,
    "reg_max": 4,
    "channels_per_group": 3,
}
FIXTURE_CLASSES = ["circle", "square", "triangle"]
FIXTURE_SEED = 20240607
FIXTURE_BATCH = (2, 3, 32, 64)
FIXTURE_MAX_BYTES = 200 * 1024


# ----------------------------------------------------------------------------------------------
# Configuration


def parse_config(raw):
    """The ``detkd.model`` JSON as a dict, checked as strictly as detkd's serde parser."""
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"`{MODEL_KEY}` is not JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"`{MODEL_KEY}`: expected a JSON object, got {raw!r}")
    missing = [k for k in CONFIG_FIELDS if k not in cfg]
    unknown = [k for k in cfg if k not in CONFIG_FIELDS]
    if missing or unknown:
        raise ValueError(f"`{MODEL_KEY}`: missing fields {missing}, unknown fields {unknown}")
    for key in ("stage_channels", "stage_depths"):
        v = cfg[key]
        if not (isinstance(v, list) and len(v) == 4 and all(isinstance(x, int) and x >= 0 for x in v)):
            raise ValueError(f"`{MODEL_KEY}`: {key} must be 4 non-negative integers, got {v!r}")
    for key in CONFIG_FIELDS:
        if key not in ("stage_channels", "stage_depths"):
            v = cfg[key]
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
                raise ValueError(f"`{MODEL_KEY}`: {key} must be a non-negative integer, got {v!r}")
    widths = [cfg["stem_channels"], cfg["fpn_channels"], cfg["head_channels"], *cfg["stage_channels"]]
    if min(widths) == 0 or cfg["num_classes"] == 0 or cfg["channels_per_group"] == 0:
        raise ValueError(f"`{MODEL_KEY}`: widths, num_classes and channels_per_group must be >= 1: {cfg}")
    return cfg


def config_json(cfg):
    """``cfg`` as serde_json writes a TinyGflConfig: compact, fields in declaration order."""
    return json.dumps({k: cfg[k] for k in CONFIG_FIELDS}, separators=(",", ":"))


def group_count(channels, channels_per_group):
    """detkd's ``TinyGflConfig::groups``."""
    g = max(channels // channels_per_group, 1)
    return next(d for d in range(g, 0, -1) if channels % d == 0)


# ----------------------------------------------------------------------------------------------
# The model


class ConvGnRelu(nn.Module):
    """``conv (no bias) - GN - ReLU``, mmcv's ConvModule with GN."""

    def __init__(self, in_channels, out_channels, stride, groups):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.gn = nn.GroupNorm(groups, out_channels, eps=GN_EPS)

    def forward(self, x):
        return F.relu(self.gn(self.conv(x)))


class BasicBlock(nn.Module):
    """``conv-GN-ReLU-conv-GN`` + identity, ReLU."""

    def __init__(self, channels, groups):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.gn1 = nn.GroupNorm(groups, channels, eps=GN_EPS)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.gn2 = nn.GroupNorm(groups, channels, eps=GN_EPS)

    def forward(self, x):
        y = F.relu(self.gn1(self.conv1(x)))
        y = self.gn2(self.conv2(y))
        return F.relu(y + x)


class Scale(nn.Module):
    """A learnable factor of shape ``[1]``."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x):
        return x * self.scale


class Backbone(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        cpg = cfg["channels_per_group"]
        self.stem = ConvGnRelu(3, cfg["stem_channels"], 2, group_count(cfg["stem_channels"], cpg))
        in_c = cfg["stem_channels"]
        for i, (c, depth) in enumerate(zip(cfg["stage_channels"], cfg["stage_depths"])):
            g = group_count(c, cpg)
            layers = [ConvGnRelu(in_c, c, 2, g)] + [BasicBlock(c, g) for _ in range(depth)]
            self.add_module(f"stage{i + 1}", nn.Sequential(*layers))
            in_c = c

    def forward(self, x):
        x = self.stem(x)
        stages = []
        for i in range(4):
            x = getattr(self, f"stage{i + 1}")(x)
            stages.append(x)
        return stages


class Neck(nn.Module):
    """FPN on stages 2-4: lateral 1x1, top-down nearest 2x sums, output 3x3."""

    def __init__(self, cfg):
        super().__init__()
        f = cfg["fpn_channels"]
        self.lateral = nn.ModuleList(nn.Conv2d(c, f, 1) for c in cfg["stage_channels"][1:])
        self.output = nn.ModuleList(nn.Conv2d(f, f, 3, padding=1) for _ in cfg["stage_channels"][1:])

    def forward(self, stages):
        laterals = [conv(x) for conv, x in zip(self.lateral, stages[1:])]
        merged = list(laterals)
        for level in range(len(merged) - 2, -1, -1):
            merged[level] = laterals[level] + F.interpolate(merged[level + 1], scale_factor=2.0, mode="nearest")
        return [conv(m) for conv, m in zip(self.output, merged)]


class Head(nn.Module):
    """GFL's head, shared by the FPN levels."""

    def __init__(self, cfg):
        super().__init__()
        f, h = cfg["fpn_channels"], cfg["head_channels"]
        g = group_count(h, cfg["channels_per_group"])

        def branch():
            return nn.ModuleList(ConvGnRelu(f if i == 0 else h, h, 1, g) for i in range(cfg["head_convs"]))

        self.cls_convs = branch()
        self.reg_convs = branch()
        last = f if cfg["head_convs"] == 0 else h
        self.gfl_cls = nn.Conv2d(last, cfg["num_classes"], 3, padding=1)
        self.gfl_reg = nn.Conv2d(last, 4 * (cfg["reg_max"] + 1), 3, padding=1)
        self.scales = nn.ModuleList(Scale() for _ in FPN_STRIDES)

    def forward(self, fpn):
        cls, reg = [], []
        for p, scale in zip(fpn, self.scales):
            c = p
            for layer in self.cls_convs:
                c = layer(c)
            r = p
            for layer in self.reg_convs:
                r = layer(r)
            cls.append(self.gfl_cls(c))
            reg.append(scale(self.gfl_reg(r)))
        return cls, reg


class TinyGFL(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = parse_config(config_json(cfg))
        self.backbone = Backbone(self.config)
        self.neck = Neck(self.config)
        self.head = Head(self.config)

    def forward(self, images):
        """``images`` [B, 3, H, W], H and W multiples of 32 -> stages (strides 4-32), fpn P3-P5, cls, reg."""
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[2] % 32 or images.shape[3] % 32:
            raise ValueError(f"images: expected [B, 3, H, W] with H and W multiples of 32, got {list(images.shape)}")
        stages = self.backbone(images)
        fpn = self.neck(stages)
        cls, reg = self.head(fpn)
        return {"stages": stages, "fpn": fpn, "cls": cls, "reg": reg}


# ----------------------------------------------------------------------------------------------
# Checkpoints


def read_safetensors(path):
    """All tensors of a safetensors file and its metadata."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, metadata


def load_checkpoint(path):
    """A detkd checkpoint as ``(model, config, classes)``, loaded with ``strict=True``."""
    tensors, metadata = read_safetensors(path)
    if MODEL_KEY not in metadata:
        raise ValueError(f"{path}: no `{MODEL_KEY}` metadata (not written by detkd train/distill)")
    cfg = parse_config(metadata[MODEL_KEY])
    classes = json.loads(metadata.get(CLASSES_KEY, "[]"))
    model = TinyGFL(cfg)
    model.load_state_dict(tensors, strict=True)
    return model, cfg, classes


def write_safetensors(path, tensors, metadata):
    """Writes a safetensors file deterministically: sorted metadata, then the tensors by name."""
    header = {"__metadata__": {k: metadata[k] for k in sorted(metadata)}}
    chunks = []
    offset = 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        if t.dtype == torch.float32:
            code, data = "F32", t.numpy().astype("<f4", copy=False).tobytes()
        elif t.dtype == torch.int64:
            code, data = "I64", t.numpy().astype("<i8", copy=False).tobytes()
        else:
            raise TypeError(f"{name}: {t.dtype} (write float32 or int64)")
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)
    Path(path).write_bytes(struct.pack("<Q", len(head)) + head + b"".join(chunks))


def save_checkpoint(path, model, classes):
    """``model``'s state dict in float32 with detkd's metadata: a file ``detkd eval`` reads."""
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    metadata = {MODEL_KEY: config_json(model.config), CLASSES_KEY: json.dumps(classes, separators=(",", ":"))}
    write_safetensors(path, tensors, metadata)


# ----------------------------------------------------------------------------------------------
# The interop fixture


def randomize(model, generator):
    """Every parameter random, none an identity: convolutions Kaiming-normal (fan-in, so activations stay
    of order one), biases N(0, 0.1^2), GroupNorm weights 1 + N(0, 0.2^2) and biases N(0, 0.2^2), and the
    level scales distinct values in [0.5, 1.5]."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".scale"):
                p.copy_(0.5 + torch.rand(p.shape, generator=generator))
            elif p.dim() == 4:
                fan_in = p.shape[1] * p.shape[2] * p.shape[3]
                p.copy_(torch.randn(p.shape, generator=generator) * (2.0 / fan_in) ** 0.5)
            elif ".gn" in name and name.endswith(".weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=generator))
            elif ".gn" in name and name.endswith(".bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=generator))
            elif name.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=generator))
            else:
                raise AssertionError(f"no initialisation rule for {name} {list(p.shape)}")


def outputs_by_name(out):
    named = {}
    for key, prefix in (("stages", "stage"), ("fpn", "fpn"), ("cls", "cls"), ("reg", "reg")):
        for i, t in enumerate(out[key]):
            named[f"expected.{prefix}.{i}"] = t
    return named


def write_fixture(out_dir):
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(FIXTURE_SEED)
    model = TinyGFL(FIXTURE_CONFIG)
    randomize(model, generator)
    images = torch.randn(FIXTURE_BATCH, generator=generator)

    # The reference in float64 from the float32 values (widening is exact), rounded to float32 at the end.
    reference = TinyGFL(FIXTURE_CONFIG).double()
    reference.load_state_dict({k: v.double() for k, v in model.state_dict().items()}, strict=True)
    with torch.no_grad():
        expected = {k: v.float() for k, v in outputs_by_name(reference(images.double())).items()}

    ckpt_path = out_dir / "tiny_gfl.safetensors"
    io_path = out_dir / "tiny_gfl_io.safetensors"
    save_checkpoint(ckpt_path, model, FIXTURE_CLASSES)
    write_safetensors(io_path, {"input.images": images, **expected}, {"seed": str(FIXTURE_SEED)})

    # Read both back: the checkpoint loads strictly into a fresh module and reproduces the outputs.
    loaded, cfg, classes = load_checkpoint(ckpt_path)
    assert cfg == FIXTURE_CONFIG and classes == FIXTURE_CLASSES, (cfg, classes)
    io_tensors, _ = read_safetensors(io_path)
    assert torch.equal(io_tensors["input.images"], images)
    with torch.no_grad():
        again = outputs_by_name(loaded(io_tensors["input.images"]))
    assert sorted(again) == sorted(expected) == sorted(k for k in io_tensors if k.startswith("expected."))
    for k, want in expected.items():
        assert torch.equal(io_tensors[k], want), k
        err = ((again[k] - want).abs().max() / want.abs().max()).item()
        assert err <= 1e-5, (k, err)
    for path in (ckpt_path, io_path):
        size = path.stat().st_size
        assert size < FIXTURE_MAX_BYTES, (path, size)
        print(f"wrote {path} ({size} bytes)")
    for k, v in expected.items():
        print(f"  {k:18} {list(v.shape)}")


# ----------------------------------------------------------------------------------------------
# Command line


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", nargs="?", help="a detkd checkpoint (.safetensors) to load strictly")
    parser.add_argument("--image-size", type=int, default=128, help="side of the random square batch (multiple of 32)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="seed of the random batch")
    parser.add_argument("--write-fixture", metavar="DIR", help="write the interop fixture into DIR instead")
    args = parser.parse_args(argv)
    if (args.checkpoint is None) == (args.write_fixture is None):
        parser.error("give either a CHECKPOINT or --write-fixture DIR")
    if args.write_fixture is not None:
        write_fixture(args.write_fixture)
        return 0
    if args.image_size <= 0 or args.image_size % 32:
        parser.error(f"--image-size must be a positive multiple of 32, got {args.image_size}")
    if args.batch_size <= 0:
        parser.error(f"--batch-size must be >= 1, got {args.batch_size}")

    model, cfg, classes = load_checkpoint(args.checkpoint)
    model.eval()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.checkpoint}: loaded strictly, {len(model.state_dict())} tensors, {n_params} parameters")
    print(f"  {MODEL_KEY}: {config_json(cfg)}")
    print(f"  {CLASSES_KEY}: {classes}")
    generator = torch.Generator().manual_seed(args.seed)
    images = torch.randn((args.batch_size, 3, args.image_size, args.image_size), generator=generator)
    with torch.no_grad():
        out = model(images)
    print(f"forward on images {list(images.shape)} (seed {args.seed}):")
    for k, v in outputs_by_name(out).items():
        name = k[len("expected."):]
        print(f"  {name:8} {str(list(v.shape)):20} finite={bool(torch.isfinite(v).all())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
