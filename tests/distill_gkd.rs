//! GKD against PyTorch (golden fixtures from scripts/make_fixtures_gkd.py, run through the `detkd parity`
//! runner: the whole loss, its terms, the robustness weights, every student and adapter gradient, and the
//! prototype generation), and the CUDA path against the CPU at TinyGFL's shapes. GPU tests print `SKIP`
//! without a driver and fail under `DETKD_REQUIRE_GPU=1`.

use detkd::distill::gkd::{
    GkdConfig, GkdDistiller, GkdInputs, GkdPrototypes, GlobalKnowledge, LevelPrototypes,
};
use detkd::distill::{DenseAssignment, DetectorShape, ImageTargets, MethodGradients, StepContext};
use detkd::nn::ParamStore;
use detkd::tensor::io::{self, NamedTensors};
use detkd::testing::{assert_close, vals, Rng};
use detkd::{DType, Device, Tensor};

macro_rules! fixtures {
    ($($name:literal),* $(,)?) => {
        [$(($name, include_bytes!(concat!("fixtures/methods/", $name, ".safetensors")).as_slice())),*]
    };
}
const FIXTURES: [(&str, &[u8]); 9] = fixtures![
    "gkd_released",
    "gkd_first_epoch",
    "gkd_global_cosine",
    "gkd_global_soft_assignment",
    "gkd_no_positives",
    "gkd_background_only",
    "gkd_unweighted",
    "gkd_prototypes_clusters",
    "gkd_prototypes_sparse_classes",
];

fn fixture(name: &str) -> NamedTensors {
    let bytes = FIXTURES.iter().find(|(n, _)| *n == name).unwrap().1;
    io::from_bytes(bytes).unwrap()
}

/// Runs the fixture with `dtype` on `device` and compares every result with PyTorch's.
fn check_fixture(name: &str, bytes: &[u8], dtype: DType, device: &Device, tol: f64) {
    let mut inputs = io::from_bytes(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    inputs.metadata.insert("dtype".into(), dtype.name().into());
    let results = detkd::parity::run(&inputs, device).unwrap_or_else(|e| panic!("{name}: {e}"));
    let expected: Vec<&String> = inputs
        .tensors
        .keys()
        .filter(|k| k.starts_with("expected."))
        .collect();
    assert!(!expected.is_empty(), "{name}: no expected result");
    assert_eq!(
        expected.len(),
        results.tensors.len(),
        "{name}: results {:?}",
        results.tensors.keys().collect::<Vec<_>>()
    );
    for key in expected {
        let result_name = &key["expected.".len()..];
        let got = results
            .get(result_name)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = inputs.get(key).unwrap();
        let what = format!("{name}/{result_name} ({dtype} on {device})");
        assert_eq!(got.shape(), want.shape(), "{what}");
        if want.dtype() == DType::I64 {
            assert_eq!(
                got.to_vec::<i64>().unwrap(),
                want.to_vec::<i64>().unwrap(),
                "{what}"
            );
            continue;
        }
        assert_eq!(got.dtype(), dtype, "{what}");
        // Each term against the total's scale: a term that is exactly 0 in PyTorch must be ~0 here.
        let (g, w) = (vals(got), vals(want));
        if w.len() == 1 {
            let scale = vals(inputs.get("expected.loss").unwrap_or(want))[0]
                .abs()
                .max(w[0].abs());
            assert!(
                (g[0] - w[0]).abs() <= tol * scale.max(1e-300),
                "{what}: {} vs {}",
                g[0],
                w[0]
            );
        } else {
            assert_close(&what, &g, &w, tol);
        }
    }
}

#[test]
fn cpu_matches_pytorch_fixtures() {
    for (name, bytes) in FIXTURES {
        check_fixture(name, bytes, DType::F64, &Device::Cpu, 1e-10);
        check_fixture(name, bytes, DType::F32, &Device::Cpu, 2e-5);
    }
}

#[test]
fn fixtures_cover_the_required_cases() {
    let meta = |name: &str, key: &str| fixture(name).metadata.get(key).cloned();
    // The released configuration with prototypes that do reweight: some r differ from 1 on both levels.
    let f = fixture("gkd_released");
    for l in 0..2 {
        let r = vals(f.get(&format!("expected.robust.{l}")).unwrap());
        assert!(
            r.iter().any(|&v| (v - 1.0).abs() > 1e-2),
            "level {l}: {r:?}"
        );
    }
    // Every level receives foreground, and one box has an empty extent (a single-cell mask).
    assert_eq!(meta("gkd_first_epoch", "epoch").as_deref(), Some("0"));
    assert!(!fixture("gkd_first_epoch")
        .tensors
        .contains_key("prototypes.0.labels"));
    assert_eq!(
        meta("gkd_global_cosine", "global").as_deref(),
        Some("cosine")
    );
    assert_eq!(
        meta("gkd_global_soft_assignment", "global").as_deref(),
        Some("soft_assignment")
    );
    assert_eq!(
        fixture("gkd_no_positives")
            .get("positives")
            .unwrap()
            .numel(),
        0
    );
    assert_eq!(
        fixture("gkd_background_only").get("boxes").unwrap().numel(),
        0
    );
    assert_eq!(
        vals(
            fixture("gkd_background_only")
                .get("expected.loss_kd_point")
                .unwrap()
        ),
        vec![0.0]
    );
    assert_eq!(
        meta("gkd_unweighted", "robust_weights").as_deref(),
        Some("false")
    );
    // The prototype fixtures: every class with enough boxes gets 10 picks; class 1 of the sparse case has
    // one box (no candidate) and class 2 none.
    let p = fixture("gkd_prototypes_clusters");
    let labels = p
        .get("expected.prototype_labels")
        .unwrap()
        .to_vec::<i64>()
        .unwrap();
    for c in 0..3 {
        assert_eq!(labels.iter().filter(|&&l| l == c).count(), 10, "class {c}");
    }
    let p = fixture("gkd_prototypes_sparse_classes");
    let labels = p
        .get("expected.prototype_labels")
        .unwrap()
        .to_vec::<i64>()
        .unwrap();
    assert!(labels.iter().all(|&l| l == 0) && labels.len() == 10);
}

#[test]
fn parity_rejects_bad_files() {
    let mut f = fixture("gkd_released");
    f.metadata.insert("global".into(), "sometimes".into());
    let e = detkd::parity::run(&f, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("off, cosine or soft_assignment"), "{e}");
    let mut f = fixture("gkd_released");
    f.tensors.insert(
        "positive_gt".into(),
        Tensor::from_vec(vec![0i64, 1, 99], &[3]).unwrap(),
    );
    let e = detkd::parity::run(&f, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("out of range"), "{e}");
    let mut f = fixture("gkd_released");
    f.tensors.remove("distill.gkd.adapter.1.bias");
    assert!(detkd::parity::run(&f, &Device::Cpu).is_err());
}

// ---------------------------------------------------------------------------------------------------------
// CUDA against the CPU

/// A TinyGFL-shaped batch: `b` images of `side` px, FPN at strides 8/16/32, `fs` → `ft` channels,
/// 8 classes, 1–4 GT boxes of 6–64 px per image, each positive at 1–3 anchors near its centre.
struct Batch {
    student: Vec<Tensor>,
    teacher: Vec<Tensor>,
    assign: DenseAssignment,
    strides: Vec<f64>,
}

fn batch(seed: u64, b: usize, side: usize, fs: usize, ft: usize) -> Batch {
    let mut rng = Rng::new(seed);
    let strides = vec![8.0, 16.0, 32.0];
    let sizes: Vec<usize> = strides.iter().map(|s| side / *s as usize).collect();
    let normal = |shape: &[usize], rng: &mut Rng| {
        let n = shape.iter().product();
        Tensor::from_vec(
            rng.normal_vec(n)
                .into_iter()
                .map(|v| v as f32)
                .collect::<Vec<_>>(),
            shape,
        )
        .unwrap()
    };
    let mut student = Vec::new();
    let mut teacher = Vec::new();
    for &n in &sizes {
        student.push(normal(&[b, fs, n, n], &mut rng));
        teacher.push(normal(&[b, ft, n, n], &mut rng));
    }
    for &n in &sizes {
        student.push(normal(&[b, 8, n, n], &mut rng));
        teacher.push(normal(&[b, 8, n, n], &mut rng));
    }
    let anchors: usize = sizes.iter().map(|n| n * n).sum();
    let mut images = Vec::new();
    let mut positives = Vec::new();
    for img in 0..b {
        let mut t = ImageTargets::default();
        for _ in 0..1 + rng.below(4) {
            let w = rng.uniform(6.0, 64.0);
            let h = rng.uniform(6.0, 64.0);
            let x = rng.uniform(0.0, side as f64 - w);
            let y = rng.uniform(0.0, side as f64 - h);
            let bx = [x, y, x + w, y + h];
            let label = rng.below(8);
            // Positives: anchors of the finest level around the centre.
            let n = sizes[0];
            let (cx, cy) = (
                ((x + w / 2.0) / 8.0) as usize,
                ((y + h / 2.0) / 8.0) as usize,
            );
            for dx in 0..1 + rng.below(3) {
                let a = img * anchors + cy.min(n - 1) * n + (cx + dx).min(n - 1);
                positives.push((a, bx, label));
            }
            t.boxes.push(bx);
            t.labels.push(label);
        }
        images.push(t);
    }
    positives.sort_by_key(|p| p.0);
    positives.dedup_by_key(|p| p.0);
    let mut points = Vec::new();
    let mut anchor_strides = Vec::new();
    for (&n, &s) in sizes.iter().zip(&strides) {
        for y in 0..n {
            for x in 0..n {
                points.push([(x as f64 + 0.5) * s, (y as f64 + 0.5) * s]);
                anchor_strides.push(s);
            }
        }
    }
    let assign = DenseAssignment {
        batch: b,
        anchors_per_image: anchors,
        anchor_boxes: points
            .iter()
            .map(|p| [p[0] - 16.0, p[1] - 16.0, p[0] + 16.0, p[1] + 16.0])
            .collect(),
        points,
        strides: anchor_strides,
        positives: positives.iter().map(|p| p.0).collect(),
        positive_boxes: positives.iter().map(|p| p.1).collect(),
        positive_labels: positives.iter().map(|p| p.2).collect(),
        thresholds: images.iter().map(|t| vec![0.2; t.boxes.len()]).collect(),
        images,
    };
    Batch {
        student,
        teacher,
        assign,
        strides,
    }
}

fn prototypes(seed: u64, fs: usize, ft: usize) -> GkdPrototypes {
    let mut rng = Rng::new(seed);
    let levels = (0..3)
        .map(|_| {
            let labels: Vec<i64> = (0..8).flat_map(|c| vec![c; 1 + (c as usize % 3)]).collect();
            let k = labels.len();
            LevelPrototypes {
                student: Tensor::from_vec(rng.normal_vec(k * fs), &[k, fs]).unwrap(),
                teacher: Tensor::from_vec(rng.normal_vec(k * ft), &[k, ft]).unwrap(),
                labels: Tensor::from_vec(labels, &[k]).unwrap(),
                source_rows: (0..k).collect(),
            }
        })
        .collect();
    GkdPrototypes {
        levels,
        num_classes: 8,
    }
}

fn run_on(device: &Device, cfg: &GkdConfig, data: &Batch, fs: usize, ft: usize) -> MethodGradients {
    let shape = |c| DetectorShape {
        stage_channels: vec![],
        fpn_channels: c,
        num_classes: 8,
        reg_max: 16,
    };
    let mut store = ParamStore::new();
    let mut d = GkdDistiller::new(&mut store, &shape(fs), &shape(ft), 3, cfg.clone(), 5).unwrap();
    d.set_prototypes(prototypes(9, fs, ft)).unwrap();
    store.to_device(device).unwrap();
    let s: Vec<Tensor> = data
        .student
        .iter()
        .map(|t| t.to_device(device).unwrap())
        .collect();
    let t: Vec<Tensor> = data
        .teacher
        .iter()
        .map(|t| t.to_device(device).unwrap())
        .collect();
    let ctx = StepContext {
        assignment: &data.assign,
        student_gfl: None,
        epoch: 2,
        num_epochs: 12,
        step_seed: 0,
        image_size: (0, 0),
    };
    d.compute(
        &store,
        &side(&s, &data.strides),
        &side(&t, &data.strides),
        &ctx,
    )
    .unwrap()
}

/// FPN levels then class maps, three of each.
fn side<'a>(v: &'a [Tensor], strides: &[f64]) -> GkdInputs<'a> {
    GkdInputs {
        fpn: v[..3].iter().collect(),
        fpn_strides: strides.to_vec(),
        cls: v[3..].iter().collect(),
    }
}

/// The CUDA test's setup on the CPU: a valid batch, a finite loss, bitwise-identical reruns.
#[test]
fn tiny_gfl_shapes_are_deterministic_on_the_cpu() {
    let data = batch(1, 4, 128, 32, 64);
    assert!(!data.assign.positives.is_empty());
    let cfg = GkdConfig {
        global: GlobalKnowledge::Cosine,
        ..GkdConfig::default()
    };
    let a = run_on(&Device::Cpu, &cfg, &data, 32, 64);
    let b = run_on(&Device::Cpu, &cfg, &data, 32, 64);
    assert!(a.loss.is_finite() && a.loss > 0.0);
    assert_eq!(a.loss.to_bits(), b.loss.to_bits());
    for (x, y) in a.student_grads.iter().zip(&b.student_grads) {
        assert_eq!(vals(x), vals(y));
    }
    let wide = run_on(
        &Device::Cpu,
        &GkdConfig::default(),
        &batch(4, 2, 320, 64, 128),
        64,
        128,
    );
    assert!(wide.loss.is_finite() && wide.student_grads.len() == 6);
}

#[test]
fn cuda_matches_cpu_at_tiny_gfl_shapes() {
    let Some(gpu) = detkd::cuda::gpu_for_test("distill_gkd::cuda_matches_cpu_at_tiny_gfl_shapes")
    else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    for (seed, b, side, fs, ft, global) in [
        (1, 4, 128, 32, 64, GlobalKnowledge::Off),
        (2, 2, 128, 32, 64, GlobalKnowledge::Cosine),
        (
            3,
            2,
            128,
            32,
            64,
            GlobalKnowledge::SoftAssignment { temperature: 0.2 },
        ),
        (4, 2, 320, 64, 128, GlobalKnowledge::Off),
    ] {
        let data = batch(seed, b, side, fs, ft);
        let cfg = GkdConfig {
            global,
            ..GkdConfig::default()
        };
        let cpu = run_on(&Device::Cpu, &cfg, &data, fs, ft);
        let cuda = run_on(&gpu, &cfg, &data, fs, ft);
        let what = format!("seed {seed} ({b}×{side} px, {fs}→{ft}, {global:?})");
        assert!(
            (cuda.loss - cpu.loss).abs() <= 1e-5 * cpu.loss.abs(),
            "{what}: loss {} vs {}",
            cuda.loss,
            cpu.loss
        );
        for ((n, c), (_, g)) in cpu.terms.iter().zip(&cuda.terms) {
            assert!(
                (g - c).abs() <= 1e-5 * cpu.loss.abs(),
                "{what}: {n} {g} vs {c}"
            );
        }
        for (k, (c, g)) in cpu
            .student_grads
            .iter()
            .zip(&cuda.student_grads)
            .enumerate()
        {
            assert!(matches!(g.device(), Device::Cuda(_)));
            assert_close(
                &format!("{what}: student grad {k}"),
                &vals(g),
                &vals(c),
                1e-4,
            );
        }
        assert_eq!(cpu.param_grads.len(), cuda.param_grads.len());
        for ((id, c), (_, g)) in cpu.param_grads.iter().zip(&cuda.param_grads) {
            assert_close(&format!("{what}: param {id:?}"), &vals(g), &vals(c), 1e-4);
        }
    }
}

#[test]
fn cuda_matches_pytorch_fixtures() {
    let Some(gpu) = detkd::cuda::gpu_for_test("distill_gkd::cuda_matches_pytorch_fixtures") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    for (name, bytes) in FIXTURES {
        check_fixture(name, bytes, DType::F32, &gpu, 2e-5);
    }
}
