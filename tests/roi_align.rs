//! RoIAlign against torchvision (golden fixtures from scripts/make_fixtures.py, via the `detkd parity`
//! runner) and CUDA against the CPU reference. GPU tests print `SKIP` without a driver and fail under
//! `DETKD_REQUIRE_GPU=1`.

use detkd::ops::roi_align::{
    roi_align, roi_align_backward, roi_align_into, roi_align_multilevel,
    roi_align_multilevel_backward, FpnLevels, LevelRule, RoiAlignConfig,
};
use detkd::tensor::io::{self, NamedTensors};
use detkd::testing::{assert_close, host, Rng};
use detkd::{DType, Device, Tensor};

/// Every fixture, embedded so the test binary runs anywhere (e.g. carried to a GPU machine).
macro_rules! fixtures {
    ($($name:literal),* $(,)?) => {
        [$(($name, include_bytes!(concat!("fixtures/roi_align/", $name, ".safetensors")).as_slice())),*]
    };
}
const FIXTURES: [(&str, &[u8]); 12] = fixtures![
    "tv_reference",
    "aligned_fixed",
    "unaligned_adaptive",
    "aligned_adaptive",
    "outside_boxes",
    "degenerate_aligned",
    "degenerate_unaligned",
    "degenerate_aligned_fixed",
    "last_batch_index",
    "empty_rois",
    "multilevel_detectron2",
    "multilevel_mmdet",
];

/// Runs the fixture's op with `dtype` on `device` and compares every result with torchvision's.
fn check_fixture(name: &str, bytes: &[u8], dtype: DType, device: &Device, tol: f64) {
    let mut inputs = io::from_bytes(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    inputs.metadata.insert("dtype".into(), dtype.name().into());
    let results = detkd::parity::run(&inputs, device).unwrap_or_else(|e| panic!("{name}: {e}"));
    let expected: Vec<&String> = inputs
        .tensors
        .keys()
        .filter(|k| k.starts_with("expected."))
        .collect();
    assert!(
        expected.len() >= 2,
        "{name}: fixture has no expected output and gradient"
    );
    for key in expected {
        let result_name = &key["expected.".len()..];
        let got = results
            .get(result_name)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = inputs.get(key).unwrap();
        assert_eq!(got.shape(), want.shape(), "{name}/{result_name}");
        assert_eq!(got.dtype(), dtype, "{name}/{result_name}");
        assert_close(
            &format!("{name}/{result_name} ({dtype} on {device})"),
            &got.to_vec::<f64>().unwrap(),
            &want.to_vec::<f64>().unwrap(),
            tol,
        );
    }
}

#[test]
fn cpu_matches_torchvision_fixtures() {
    for (name, bytes) in FIXTURES {
        check_fixture(name, bytes, DType::F64, &Device::Cpu, 1e-12);
        check_fixture(name, bytes, DType::F32, &Device::Cpu, 1e-5);
        check_fixture(name, bytes, DType::BF16, &Device::Cpu, 1e-2);
    }
}

#[test]
fn fixtures_cover_the_required_cases() {
    let meta = |name: &str| -> NamedTensors {
        io::from_bytes(FIXTURES.iter().find(|(n, _)| *n == name).unwrap().1).unwrap()
    };
    let aligned: Vec<String> = FIXTURES
        .iter()
        .map(|(n, _)| meta(n).metadata["aligned"].clone())
        .collect();
    assert!(aligned.contains(&"true".into()) && aligned.contains(&"false".into()));
    let sampling: Vec<i32> = FIXTURES
        .iter()
        .map(|(n, _)| meta(n).metadata["sampling_ratio"].parse().unwrap())
        .collect();
    assert!(sampling.iter().any(|&s| s > 0) && sampling.iter().any(|&s| s <= 0));
    assert_eq!(meta("empty_rois").get("rois").unwrap().shape(), &[0, 5]);
    let last = meta("last_batch_index");
    let n = last.get("features").unwrap().shape()[0];
    let rois = last.get("rois").unwrap().to_vec::<f64>().unwrap();
    assert!(rois.chunks(5).any(|r| r[0] as usize == n - 1));
}

#[test]
fn parity_tool_round_trips_through_a_file() {
    let (name, bytes) = FIXTURES[1];
    let dir = std::env::temp_dir().join(format!("detkd-parity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join(format!("{name}.safetensors"));
    std::fs::write(&input, bytes).unwrap();
    let loaded = io::load(&input).unwrap();
    let results = detkd::parity::run(&loaded, &Device::Cpu).unwrap();
    let out = dir.join("out.safetensors");
    let named: Vec<(&str, &Tensor)> = results
        .tensors
        .iter()
        .map(|(n, t)| (n.as_str(), t))
        .collect();
    io::save(&out, named, &results.metadata).unwrap();
    let back = io::load(&out).unwrap();
    assert_eq!(back.metadata["device"], "cpu");
    assert_eq!(
        back.get("output").unwrap().to_vec::<f64>().unwrap(),
        results.get("output").unwrap().to_vec::<f64>().unwrap()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn parity_rejects_bad_metadata() {
    let mut inputs = io::from_bytes(FIXTURES[1].1).unwrap();
    for (key, value, expected) in [
        ("op", "conv", "unknown op `conv`"),
        ("aligned", "yes", "`aligned`: expected `true` or `false`"),
        ("output_size", "7", "`output_size`: expected `PH,PW`"),
        (
            "sampling_ratio",
            "two",
            "`sampling_ratio`: expected an integer",
        ),
        ("dtype", "f8", "`dtype`"),
    ] {
        let old = inputs.metadata.insert(key.into(), value.into());
        let err = detkd::parity::run(&inputs, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{key}={value}: {err}");
        match old {
            Some(v) => inputs.metadata.insert(key.into(), v),
            None => inputs.metadata.remove(key),
        };
    }
    inputs.metadata.remove("spatial_scale");
    let err = detkd::parity::run(&inputs, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`spatial_scale`") && err.contains("missing"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------------------
// CUDA vs CPU

/// A random RoIAlign problem: features, RoIs partly outside the map, an upstream gradient.
struct Problem {
    features: Vec<f64>,
    shape: [usize; 4],
    rois: Vec<f64>,
    grad_out: Vec<f64>,
    cfg: RoiAlignConfig,
    scale: f64,
}

fn random_problem(seed: u64) -> Problem {
    let mut rng = Rng::new(seed);
    let shape = [
        1 + rng.below(3),
        1 + rng.below(40),
        3 + rng.below(30),
        3 + rng.below(30),
    ];
    let scale = [1.0, 0.5, 0.25][rng.below(3)];
    let k = 1 + rng.below(60);
    let (img_h, img_w) = (shape[2] as f64 / scale, shape[3] as f64 / scale);
    let mut rois = Vec::with_capacity(k * 5);
    for _ in 0..k {
        let x1 = rng.uniform(-0.2 * img_w, img_w);
        let y1 = rng.uniform(-0.2 * img_h, img_h);
        let (w, h) = (rng.uniform(0.0, 0.7 * img_w), rng.uniform(0.0, 0.7 * img_h));
        rois.extend([rng.below(shape[0]) as f64, x1, y1, x1 + w, y1 + h]);
    }
    let cfg = RoiAlignConfig {
        output_size: (1 + rng.below(7), 1 + rng.below(7)),
        sampling_ratio: [-1, 0, 1, 2, 3][rng.below(5)],
        aligned: rng.below(2) == 0,
        deterministic: false,
    };
    let features = rng.normal_vec(shape.iter().product());
    let grad_out = rng.normal_vec(k * shape[1] * cfg.output_size.0 * cfg.output_size.1);
    Problem {
        features,
        shape,
        rois,
        grad_out,
        cfg,
        scale,
    }
}

#[test]
fn cuda_matches_cpu_on_random_shapes() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_matches_cpu_on_random_shapes") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    for seed in 0..24 {
        let p = random_problem(1000 + seed);
        let k = p.rois.len() / 5;
        let out_shape = [k, p.shape[1], p.cfg.output_size.0, p.cfg.output_size.1];
        let rois = host(&p.rois, &[k, 5], DType::F32);
        // Reference: f64 CPU on the inputs as rounded to each dtype.
        for (dtype, fwd_tol, bwd_tol) in [
            (DType::F32, 1e-5, 1e-4),
            (DType::F16, 1e-2, 1e-2),
            (DType::BF16, 1e-2, 1e-2),
        ] {
            let features = host(&p.features, &p.shape, dtype);
            let grad_out = host(&p.grad_out, &out_shape, dtype);
            let want_fwd = roi_align(
                &features.to_dtype(DType::F64).unwrap(),
                &rois,
                p.scale,
                &p.cfg,
            )
            .unwrap()
            .to_vec::<f64>()
            .unwrap();
            let want_bwd = roi_align_backward(
                &grad_out.to_dtype(DType::F64).unwrap(),
                &rois,
                &p.shape,
                p.scale,
                &p.cfg,
            )
            .unwrap()
            .to_vec::<f64>()
            .unwrap();

            // Forward into a NaN-poisoned buffer so any element the kernel skips shows up.
            let mut out = host(&vec![f64::NAN; want_fwd.len()], &out_shape, dtype)
                .to_device(&gpu)
                .unwrap();
            roi_align_into(
                &features.to_device(&gpu).unwrap(),
                &rois.to_device(&gpu).unwrap(),
                p.scale,
                &p.cfg,
                &mut out,
            )
            .unwrap();
            let what = format!("seed {seed} {dtype} {:?} scale {}", p.cfg, p.scale);
            assert_close(
                &format!("forward {what}"),
                &out.to_vec::<f64>().unwrap(),
                &want_fwd,
                fwd_tol,
            );

            for deterministic in [false, true] {
                let cfg = RoiAlignConfig {
                    deterministic,
                    ..p.cfg.clone()
                };
                let grad = roi_align_backward(
                    &grad_out.to_device(&gpu).unwrap(),
                    &rois,
                    &p.shape,
                    p.scale,
                    &cfg,
                )
                .unwrap();
                assert_eq!(grad.dtype(), dtype);
                assert_close(
                    &format!("backward deterministic={deterministic} {what}"),
                    &grad.to_vec::<f64>().unwrap(),
                    &want_bwd,
                    bwd_tol,
                );
            }
        }
    }
}

#[test]
fn cuda_deterministic_backward_is_bitwise_reproducible() {
    let Some(gpu) =
        detkd::cuda::gpu_for_test("cuda_deterministic_backward_is_bitwise_reproducible")
    else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    // Many RoIs on a small map: heavy contention, where atomic order varies most.
    let mut rng = Rng::new(77);
    let shape = [2, 16, 12, 12];
    let k = 400;
    let mut rois = Vec::new();
    for _ in 0..k {
        let (x1, y1) = (rng.uniform(0.0, 40.0), rng.uniform(0.0, 40.0));
        rois.extend([
            rng.below(2) as f64,
            x1,
            y1,
            x1 + rng.uniform(1.0, 30.0),
            y1 + rng.uniform(1.0, 30.0),
        ]);
    }
    let rois = host(&rois, &[k, 5], DType::F32);
    let cfg = RoiAlignConfig {
        deterministic: true,
        ..RoiAlignConfig::default()
    };
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let g = host(&rng.normal_vec(k * 16 * 49), &[k, 16, 7, 7], dtype)
            .to_device(&gpu)
            .unwrap();
        let bits = |t: Tensor| -> Vec<u64> {
            t.to_vec::<f64>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        let first = bits(roi_align_backward(&g, &rois, &shape, 0.25, &cfg).unwrap());
        for _ in 0..3 {
            assert_eq!(
                first,
                bits(roi_align_backward(&g, &rois, &shape, 0.25, &cfg).unwrap()),
                "{dtype}"
            );
        }
    }
}

#[test]
fn cuda_deterministic_backward_turns_nonfinite_upstream_into_nan() {
    let Some(gpu) =
        detkd::cuda::gpu_for_test("cuda_deterministic_backward_turns_nonfinite_upstream_into_nan")
    else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let rois = host(&[0., 0.5, 0.5, 3.5, 3.5], &[1, 5], DType::F32);
    let cfg = RoiAlignConfig {
        output_size: (2, 2),
        deterministic: true,
        ..RoiAlignConfig::default()
    };
    let g = host(&[1.0, f64::INFINITY, 0.5, 0.25], &[1, 1, 2, 2], DType::F32)
        .to_device(&gpu)
        .unwrap();
    let grad = roi_align_backward(&g, &rois, &[1, 1, 4, 4], 1.0, &cfg)
        .unwrap()
        .to_vec::<f64>()
        .unwrap();
    assert!(grad.iter().all(|v| v.is_nan()), "{grad:?}");
}

#[test]
fn cuda_multilevel_matches_cpu() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_multilevel_matches_cpu") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(404);
    let levels = FpnLevels::p2_p5(LevelRule::Detectron2);
    let shapes: Vec<[usize; 4]> = [(32, 40), (16, 20), (8, 10), (4, 5)]
        .iter()
        .map(|&(h, w)| [2, 8, h, w])
        .collect();
    let k = 80;
    let mut rois = Vec::new();
    for _ in 0..k {
        let size = rng.uniform(8.0, 500.0);
        let (x1, y1) = (rng.uniform(-10.0, 150.0), rng.uniform(-10.0, 120.0));
        rois.extend([
            rng.below(2) as f64,
            x1,
            y1,
            x1 + size,
            y1 + size * rng.uniform(0.5, 2.0),
        ]);
    }
    let rois = host(&rois, &[k, 5], DType::F32);
    let used = detkd::ops::roi_align::assign_levels(&rois, &levels).unwrap();
    assert!(
        (0..4).all(|l| used.contains(&l)),
        "every level gets RoIs: {used:?}"
    );
    let features: Vec<Vec<f64>> = shapes
        .iter()
        .map(|s| rng.normal_vec(s.iter().product()))
        .collect();
    let grad_out = rng.normal_vec(k * 8 * 49);
    let cfg = RoiAlignConfig::default();
    let shape_refs: Vec<&[usize]> = shapes.iter().map(|s| &s[..]).collect();
    let cpu_f: Vec<Tensor> = features
        .iter()
        .zip(&shapes)
        .map(|(f, s)| host(f, s, DType::F64))
        .collect();
    let cpu_refs: Vec<&Tensor> = cpu_f.iter().collect();
    let want_fwd = roi_align_multilevel(&cpu_refs, &rois, &levels, &cfg)
        .unwrap()
        .to_vec::<f64>()
        .unwrap();
    let want_bwd = roi_align_multilevel_backward(
        &host(&grad_out, &[k, 8, 7, 7], DType::F64),
        &rois,
        &shape_refs,
        &levels,
        &cfg,
    )
    .unwrap();
    let gpu_f: Vec<Tensor> = features
        .iter()
        .zip(&shapes)
        .map(|(f, s)| host(f, s, DType::F32).to_device(&gpu).unwrap())
        .collect();
    let gpu_refs: Vec<&Tensor> = gpu_f.iter().collect();
    let got = roi_align_multilevel(&gpu_refs, &rois, &levels, &cfg).unwrap();
    assert_close(
        "multilevel forward",
        &got.to_vec::<f64>().unwrap(),
        &want_fwd,
        1e-5,
    );
    for deterministic in [false, true] {
        let cfg = RoiAlignConfig {
            deterministic,
            ..cfg.clone()
        };
        let g = host(&grad_out, &[k, 8, 7, 7], DType::F32)
            .to_device(&gpu)
            .unwrap();
        let grads = roi_align_multilevel_backward(&g, &rois, &shape_refs, &levels, &cfg).unwrap();
        for (l, (got, want)) in grads.iter().zip(&want_bwd).enumerate() {
            assert_close(
                &format!("multilevel backward level {l} deterministic={deterministic}"),
                &got.to_vec::<f64>().unwrap(),
                &want.to_vec::<f64>().unwrap(),
                1e-4,
            );
        }
    }
}

#[test]
fn cuda_matches_torchvision_fixtures() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_matches_torchvision_fixtures") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    for (name, bytes) in FIXTURES {
        check_fixture(name, bytes, DType::F32, &gpu, 1e-5);
    }
}

#[test]
fn cuda_rejects_mixed_devices_and_f64() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_rejects_mixed_devices_and_f64") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let f = host(&[0.5; 32], &[1, 2, 4, 4], DType::F32);
    assert!(
        f.to_dtype(DType::F64).unwrap().to_device(&gpu).is_err(),
        "f64 cannot live on the GPU"
    );
    let small = host(&[0.5; 8], &[1, 2, 2, 2], DType::F32);
    let rois = host(&[0., 0.5, 0.5, 3.5, 3.5], &[1, 5], DType::F32);
    let levels = FpnLevels {
        spatial_scales: vec![1.0, 0.5],
        rule: LevelRule::Mmdet,
    };
    let on_gpu = f.to_device(&gpu).unwrap();
    let err = roi_align_multilevel(
        &[&on_gpu, &small],
        &rois,
        &levels,
        &RoiAlignConfig::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("`features[1]`") && err.contains("cpu"),
        "{err}"
    );
}
