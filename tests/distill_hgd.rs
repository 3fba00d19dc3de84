//! The HGD engineering proposal against its PyTorch reference (scripts/make_fixtures_hgd.py, through the
//! `detkd parity` runner), and its CUDA path against the CPU at TinyGFL's shapes. GPU tests print `SKIP`
//! without a driver and fail under `DETKD_REQUIRE_GPU=1`.

use detkd::distill::hgd::{HgdConfig, HgdDistiller, HgdInputs};
use detkd::distill::{DetectorShape, ImageTargets, MethodGradients};
use detkd::nn::ParamStore;
use detkd::tensor::io::{self, NamedTensors};
use detkd::testing::{assert_close, vals, Rng};
use detkd::{DType, Device, Tensor};

macro_rules! fixtures {
    ($($name:literal),* $(,)?) => {
        [$(($name, include_bytes!(concat!("fixtures/methods/", $name, ".safetensors")).as_slice())),*]
    };
}
const FIXTURES: [(&str, &[u8]); 5] = fixtures![
    "hgd_default",
    "hgd_resized_student",
    "hgd_micro_off",
    "hgd_macro_off",
    "hgd_no_boxes",
];

fn fixture(name: &str) -> NamedTensors {
    let bytes = FIXTURES.iter().find(|(n, _)| *n == name).unwrap().1;
    io::from_bytes(bytes).unwrap()
}

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
        assert_eq!(got.dtype(), dtype, "{what}");
        assert_close(&what, &vals(got), &vals(want), tol);
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
    let f = fixture("hgd_resized_student");
    let (s, t) = (
        f.get("student.stage.1").unwrap().shape().to_vec(),
        f.get("teacher.stage.1").unwrap().shape().to_vec(),
    );
    assert_ne!(s[2..], t[2..], "the student map is resized");
    assert_eq!(
        fixture("hgd_micro_off").metadata["micro_weighting"],
        "false"
    );
    assert_eq!(
        fixture("hgd_macro_off").metadata["macro_weighting"],
        "false"
    );
    assert_eq!(fixture("hgd_no_boxes").get("boxes").unwrap().numel(), 0);
    // Every stage and level gets a gradient.
    let f = fixture("hgd_default");
    for k in ["stage.0", "stage.1", "fpn.0", "fpn.1"] {
        let g = vals(f.get(&format!("expected.grad.student.{k}")).unwrap());
        assert!(g.iter().any(|&v| v != 0.0), "{k}");
    }
}

#[test]
fn parity_rejects_bad_files() {
    let mut f = fixture("hgd_default");
    f.metadata.insert("micro_weighting".into(), "maybe".into());
    assert!(detkd::parity::run(&f, &Device::Cpu)
        .unwrap_err()
        .to_string()
        .contains("`true` or `false`"));
    let mut f = fixture("hgd_default");
    f.metadata.insert("stage_strides".into(), "4".into());
    assert!(detkd::parity::run(&f, &Device::Cpu).is_err());
    let mut f = fixture("hgd_default");
    f.tensors.insert(
        "box_image".into(),
        Tensor::from_vec(vec![0i64, 0, 2], &[3]).unwrap(),
    );
    assert!(detkd::parity::run(&f, &Device::Cpu)
        .unwrap_err()
        .to_string()
        .contains("out of range"));
}

// ---------------------------------------------------------------------------------------------------------
// CUDA against the CPU

/// TinyGFL's maps: stages at strides 4–32 and FPN at 8–32 on `side` px images; the student's widths are
/// half the teacher's. `coarse`: the student's stages at half the teacher's resolution (resize path).
fn maps(
    seed: u64,
    b: usize,
    side: usize,
    coarse: bool,
) -> (Vec<Tensor>, Vec<Tensor>, Vec<ImageTargets>) {
    let mut rng = Rng::new(seed);
    let mut normal = |shape: &[usize]| {
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
    let (mut s, mut t) = (Vec::new(), Vec::new());
    for (stride, cs) in [(4, 16), (8, 32), (16, 64), (32, 128)] {
        let n = side / stride;
        let ns = if coarse { (n / 2).max(1) } else { n };
        s.push(normal(&[b, cs, ns, ns]));
        t.push(normal(&[b, 2 * cs, n, n]));
    }
    for stride in [8, 16, 32] {
        let n = side / stride;
        s.push(normal(&[b, 32, n, n]));
        t.push(normal(&[b, 64, n, n]));
    }
    let mut rng = Rng::new(seed + 100);
    let images = (0..b)
        .map(|_| {
            let mut t = ImageTargets::default();
            for _ in 0..rng.below(4) {
                let (w, h) = (rng.uniform(6.0, 64.0), rng.uniform(6.0, 64.0));
                let (x, y) = (
                    rng.uniform(0.0, side as f64 - w),
                    rng.uniform(0.0, side as f64 - h),
                );
                t.boxes.push([x, y, x + w, y + h]);
                t.labels.push(0);
            }
            t
        })
        .collect();
    (s, t, images)
}

fn run_on(
    device: &Device,
    cfg: &HgdConfig,
    s: &[Tensor],
    t: &[Tensor],
    images: &[ImageTargets],
) -> MethodGradients {
    let shape = |k: usize| DetectorShape {
        stage_channels: vec![16 * k, 32 * k, 64 * k, 128 * k],
        fpn_channels: 32 * k,
        num_classes: 8,
        reg_max: 16,
    };
    let mut store = ParamStore::new();
    let d = HgdDistiller::new(&mut store, &shape(1), &shape(2), 3, cfg.clone(), 3).unwrap();
    store.to_device(device).unwrap();
    let s: Vec<Tensor> = s.iter().map(|x| x.to_device(device).unwrap()).collect();
    let t: Vec<Tensor> = t.iter().map(|x| x.to_device(device).unwrap()).collect();
    d.compute(&store, &side(&s), &side(&t), images).unwrap()
}

fn side(v: &[Tensor]) -> HgdInputs<'_> {
    HgdInputs {
        stages: v[..4].iter().collect(),
        stage_strides: vec![4.0, 8.0, 16.0, 32.0],
        fpn: v[4..].iter().collect(),
        fpn_strides: vec![8.0, 16.0, 32.0],
    }
}

/// The CUDA test's setup on the CPU: a finite loss, bitwise-identical reruns.
#[test]
fn tiny_gfl_shapes_are_deterministic_on_the_cpu() {
    let (s, t, images) = maps(2, 2, 128, true);
    let a = run_on(&Device::Cpu, &HgdConfig::default(), &s, &t, &images);
    let b = run_on(&Device::Cpu, &HgdConfig::default(), &s, &t, &images);
    assert!(a.loss.is_finite() && a.loss > 0.0);
    assert_eq!(a.loss.to_bits(), b.loss.to_bits());
    assert_eq!(a.student_grads.len(), 7);
    for (x, y) in a.student_grads.iter().zip(&b.student_grads) {
        assert_eq!(vals(x), vals(y));
    }
}

#[test]
fn cuda_matches_cpu_at_tiny_gfl_shapes() {
    let Some(gpu) = detkd::cuda::gpu_for_test("distill_hgd::cuda_matches_cpu_at_tiny_gfl_shapes")
    else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    for (seed, b, side, coarse, cfg) in [
        (1, 4, 128, false, HgdConfig::default()),
        (2, 2, 128, true, HgdConfig::default()),
        (
            3,
            2,
            256,
            false,
            HgdConfig {
                micro_weighting: false,
                ..HgdConfig::default()
            },
        ),
    ] {
        let (s, t, images) = maps(seed, b, side, coarse);
        let cpu = run_on(&Device::Cpu, &cfg, &s, &t, &images);
        let cuda = run_on(&gpu, &cfg, &s, &t, &images);
        let what = format!("seed {seed} ({b}×{side} px, coarse {coarse})");
        assert!(
            (cuda.loss - cpu.loss).abs() <= 1e-5 * cpu.loss.abs(),
            "{what}: loss {} vs {}",
            cuda.loss,
            cpu.loss
        );
        for (k, (c, g)) in cpu
            .student_grads
            .iter()
            .zip(&cuda.student_grads)
            .enumerate()
        {
            assert!(matches!(g.device(), Device::Cuda(_)));
            assert_close(&format!("{what}: stage {k}"), &vals(g), &vals(c), 1e-4);
        }
        assert_eq!(cpu.param_grads.len(), cuda.param_grads.len());
        for ((id, c), (_, g)) in cpu.param_grads.iter().zip(&cuda.param_grads) {
            assert_close(&format!("{what}: param {id:?}"), &vals(g), &vals(c), 1e-4);
        }
    }
}

#[test]
fn cuda_matches_pytorch_fixtures() {
    let Some(gpu) = detkd::cuda::gpu_for_test("distill_hgd::cuda_matches_pytorch_fixtures") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    for (name, bytes) in FIXTURES {
        check_fixture(name, bytes, DType::F32, &gpu, 2e-5);
    }
}
