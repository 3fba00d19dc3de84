//! Focal losses against their peers (torchvision; mmcv's and mmdet's formulas in PyTorch; golden fixtures
//! from scripts/make_fixtures_focal.py, via the `detkd parity` runner) and CUDA against the CPU reference.
//! GPU tests print `SKIP` without a driver and fail under `DETKD_REQUIRE_GPU=1`.

use detkd::ops::focal::{
    quality_focal_loss, quality_focal_loss_backward, quality_focal_loss_fused, sigmoid_focal_loss,
    sigmoid_focal_loss_backward, sigmoid_focal_loss_fused, sigmoid_focal_loss_mmcv,
    sigmoid_focal_loss_mmcv_backward, sigmoid_focal_loss_mmcv_fused, MmcvFocalConfig,
    QualityFocalConfig, Reduction, SigmoidFocalConfig,
};
use detkd::tensor::io::{self, NamedTensors};
use detkd::testing::{assert_close, assert_close_nan, host, vals, Rng};
use detkd::{DType, Device, Tensor};

/// Every fixture, embedded so the test binary runs anywhere (e.g. carried to a GPU machine).
macro_rules! fixtures {
    ($($name:literal),* $(,)?) => {
        [$(($name, include_bytes!(concat!("fixtures/focal/", $name, ".safetensors")).as_slice())),*]
    };
}
const FIXTURES: [(&str, &[u8]); 25] = fixtures![
    "tv_default_none",
    "tv_soft_mean_rank3",
    "tv_no_alpha_gamma1.5_sum",
    "tv_gamma0_mean",
    "tv_gamma3_soft_none",
    "tv_extreme_none",
    "tv_extreme_sum",
    "tv_empty_mean",
    "tv_empty_sum",
    "mmcv_default_mean",
    "mmcv_weight_none",
    "mmcv_weight_gamma1.5_sum",
    "mmcv_all_background_mean",
    "mmcv_extreme_none",
    "mmcv_extreme_mean",
    "mmcv_empty_mean",
    "qfl_default_mean",
    "qfl_weight_none",
    "qfl_avg_factor_mean",
    "qfl_beta1.5_sum",
    "qfl_all_background_mean",
    "qfl_extreme_none",
    "qfl_extreme_beta1.5_mean",
    "qfl_empty_mean",
    "qfl_empty_avg_factor",
];

fn fixture(name: &str) -> NamedTensors {
    let bytes = FIXTURES.iter().find(|(n, _)| *n == name).unwrap().1;
    io::from_bytes(bytes).unwrap()
}

/// Runs the fixture's op with `dtype` on `device` and compares every result with the peer's: `output`
/// and `grad_logits`, and the fused entry's `fused_output`/`fused_grad_logits` against the same values.
fn check_fixture(name: &str, bytes: &[u8], dtype: DType, device: &Device, tol: f64) {
    let mut inputs = io::from_bytes(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    inputs.metadata.insert("dtype".into(), dtype.name().into());
    let results = detkd::parity::run(&inputs, device).unwrap_or_else(|e| panic!("{name}: {e}"));
    let reduced = inputs.metadata["reduction"] != "none";
    let mut keys = vec!["output", "grad_logits"];
    if reduced {
        keys.extend(["fused_output", "fused_grad_logits"]);
    }
    assert_eq!(results.tensors.len(), keys.len(), "{name}: result names");
    for key in keys {
        let got = results.get(key).unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = inputs
            .get(&format!("expected.{}", key.trim_start_matches("fused_")))
            .unwrap();
        assert_eq!(got.shape(), want.shape(), "{name}/{key}");
        assert_eq!(got.dtype(), dtype, "{name}/{key}");
        assert_close_nan(
            &format!("{name}/{key} ({dtype} on {device})"),
            &got.to_vec::<f64>().unwrap(),
            &want.to_vec::<f64>().unwrap(),
            tol,
        );
    }
}

#[test]
fn cpu_matches_peer_fixtures() {
    for (name, bytes) in FIXTURES {
        check_fixture(name, bytes, DType::F64, &Device::Cpu, 1e-10);
        check_fixture(name, bytes, DType::F32, &Device::Cpu, 1e-5);
        if !name.contains("extreme") {
            // Rounding moderate logits to bf16 moves the loss by well under 1% of its largest value.
            check_fixture(name, bytes, DType::BF16, &Device::Cpu, 1e-2);
        }
    }
}

#[test]
fn fixtures_cover_the_required_cases() {
    for prefix in ["tv_", "mmcv_", "qfl_"] {
        let cases: Vec<NamedTensors> = FIXTURES
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(n, _)| fixture(n))
            .collect();
        let logits: Vec<Vec<f64>> = cases
            .iter()
            .map(|c| c.get("logits").unwrap().to_vec::<f64>().unwrap())
            .collect();
        let has = |v: f64| logits.iter().any(|l| l.contains(&v));
        assert!(has(1e4) && has(-1e4), "{prefix}: logits of ±1e4");
        assert!(
            cases.iter().any(|c| c.get("logits").unwrap().numel() == 0),
            "{prefix}: N = 0"
        );
        for reduction in ["none", "mean", "sum"] {
            if prefix == "mmcv_" || prefix == "qfl_" || reduction != "none" {
                assert!(
                    cases.iter().any(|c| c.metadata["reduction"] == reduction),
                    "{prefix}: reduction {reduction}"
                );
            }
        }
        if prefix == "tv_" {
            continue;
        }
        let classes = |c: &NamedTensors| c.get("logits").unwrap().shape()[1] as i64;
        let labels = |c: &NamedTensors| c.get("labels").unwrap().to_vec::<i64>().unwrap();
        assert!(
            cases.iter().any(|c| labels(c).contains(&classes(c))),
            "{prefix}: background rows"
        );
        assert!(
            cases
                .iter()
                .any(|c| !labels(c).is_empty() && labels(c).iter().all(|&l| l == classes(c))),
            "{prefix}: an all-background batch"
        );
        assert!(
            cases.iter().any(|c| c.tensors.contains_key("weight")),
            "{prefix}: weights"
        );
    }
    assert!(fixture("qfl_avg_factor_mean")
        .metadata
        .contains_key("avg_factor"));
}

#[test]
fn parity_rejects_bad_metadata() {
    let mut inputs = fixture("mmcv_default_mean");
    for (key, value, expected) in [
        (
            "reduction",
            "batchmean",
            "`reduction`: expected none, mean or sum",
        ),
        ("gamma", "two", "`gamma`: expected a float"),
        ("alpha", "nan", "`alpha`: must be finite"),
        ("op", "focal", "unknown op `focal`"),
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
    inputs.tensors.remove("labels");
    let err = detkd::parity::run(&inputs, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`labels`"), "{err}");
}

// ---------------------------------------------------------------------------------------------------------
// CUDA vs CPU

/// A random problem for all three forms: logits with a spread of magnitudes, binary and soft targets,
/// labels with ~1/3 background, IoU scores, per-class and per-anchor weights.
struct Problem {
    n: usize,
    c: usize,
    logits: Vec<f64>,
    targets: Vec<f64>,
    labels: Vec<i64>,
    scores: Vec<f64>,
    class_weight: Vec<f64>,
    anchor_weight: Vec<f64>,
}

fn random_problem(seed: u64) -> Problem {
    let mut rng = Rng::new(seed);
    let n = 1 + rng.below(400);
    let c = 1 + rng.below(90);
    let scale = [1.0, 3.0, 8.0][rng.below(3)];
    let logits = rng.normal_vec(n * c).iter().map(|v| v * scale).collect();
    let soft = rng.below(2) == 0;
    let targets = (0..n * c)
        .map(|_| {
            if soft {
                rng.uniform(0.0, 1.0)
            } else {
                rng.below(2) as f64
            }
        })
        .collect();
    let labels: Vec<i64> = (0..n)
        .map(|_| {
            if rng.below(3) == 0 {
                c as i64
            } else {
                rng.below(c) as i64
            }
        })
        .collect();
    let scores = labels
        .iter()
        .map(|&l| {
            if (l as usize) < c {
                rng.uniform(0.0, 1.0)
            } else {
                0.0
            }
        })
        .collect();
    let class_weight = (0..c).map(|_| rng.uniform(0.25, 2.0)).collect();
    let anchor_weight = (0..n).map(|_| rng.uniform(0.25, 2.0)).collect();
    Problem {
        n,
        c,
        logits,
        targets,
        labels,
        scores,
        class_weight,
        anchor_weight,
    }
}

/// Checks one form's forward, backward and fused entries on the GPU against the f64 CPU reference run on
/// the same (dtype-rounded) inputs.
struct Checker {
    what: String,
    dtype: DType,
    fwd_tol: f64,
    bwd_tol: f64,
}

impl Checker {
    fn close(&self, part: &str, got: &Tensor, want: &Tensor) {
        assert_eq!(got.shape(), want.shape(), "{} {part}", self.what);
        assert_eq!(got.dtype(), self.dtype, "{} {part}", self.what);
        let want_values = vals(want);
        if self.dtype == DType::F16 && want_values.iter().any(|v| v.abs() > 6e4) {
            // Beyond f16's range (a large `sum`): both sides round to inf, nothing to compare.
            return;
        }
        let tol = if part.contains("loss") {
            self.fwd_tol
        } else {
            self.bwd_tol
        };
        assert_close(
            &format!("{} {part}", self.what),
            &vals(got),
            &vals(want),
            tol,
        );
    }
}

#[test]
fn cuda_matches_cpu_on_random_shapes() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_matches_cpu_on_random_shapes") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    for seed in 0..18u64 {
        let p = random_problem(500 + seed);
        let mut rng = Rng::new(900 + seed);
        let gamma = [2.0, 1.5, 0.0, 3.0, 2.0, 0.5][seed as usize % 6];
        let alpha = [0.25, -1.0, 0.6][seed as usize % 3];
        let beta = [2.0, 1.5, 2.5][seed as usize % 3];
        let labels_on_device = seed % 2 == 0;
        let (n, c) = (p.n, p.c);
        for (dtype, fwd_tol, bwd_tol) in [
            (DType::F32, 1e-5, 1e-4),
            (DType::F16, 1e-2, 1e-2),
            (DType::BF16, 1e-2, 1e-2),
        ] {
            let on_gpu = |t: &Tensor| t.to_device(&gpu).unwrap();
            let wide = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
            let logits = host(&p.logits, &[n, c], dtype);
            let targets = host(&p.targets, &[n, c], dtype);
            let scores = host(&p.scores, &[n], dtype);
            let class_weight = host(&p.class_weight, &[c], dtype);
            let anchor_weight = host(&p.anchor_weight, &[n], dtype);
            let labels = Tensor::from_vec(p.labels.clone(), &[n]).unwrap();
            let gpu_labels = if labels_on_device {
                on_gpu(&labels)
            } else {
                labels.try_clone().unwrap()
            };
            let (g_logits, g_targets) = (on_gpu(&logits), on_gpu(&targets));
            // Small inputs: on the device for even seeds, left on the host (uploaded by the op) otherwise.
            let small = |t: &Tensor| {
                if labels_on_device {
                    on_gpu(t)
                } else {
                    t.try_clone().unwrap()
                }
            };
            let (g_scores, g_cw, g_aw) =
                (small(&scores), small(&class_weight), small(&anchor_weight));
            let (w_logits, w_targets, w_scores, w_cw, w_aw) = (
                wide(&logits),
                wide(&targets),
                wide(&scores),
                wide(&class_weight),
                wide(&anchor_weight),
            );
            let upstream_none = rng.normal_vec(n * c);
            let upstream_rows = rng.normal_vec(n);
            let g_value = rng.uniform(0.5, 1.5);
            for reduction in [Reduction::None, Reduction::Mean, Reduction::Sum] {
                let check = Checker {
                    what: format!(
                        "seed {seed} {dtype} N={n} C={c} γ={gamma} α={alpha} β={beta} {reduction:?}"
                    ),
                    dtype,
                    fwd_tol,
                    bwd_tol,
                };
                let reduced = reduction != Reduction::None;
                let up = |rows_only: bool| -> Tensor {
                    if reduced {
                        host(&[g_value], &[], dtype)
                    } else if rows_only {
                        host(&upstream_rows, &[n], dtype)
                    } else {
                        host(&upstream_none, &[n, c], dtype)
                    }
                };

                // torchvision
                let cfg = SigmoidFocalConfig {
                    alpha,
                    gamma,
                    reduction,
                };
                check.close(
                    "tv loss",
                    &sigmoid_focal_loss(&g_logits, &g_targets, &cfg).unwrap(),
                    &sigmoid_focal_loss(&w_logits, &w_targets, &cfg).unwrap(),
                );
                let g = up(false);
                check.close(
                    "tv grad",
                    &sigmoid_focal_loss_backward(&on_gpu(&g), &g_logits, &g_targets, &cfg).unwrap(),
                    &sigmoid_focal_loss_backward(&wide(&g), &w_logits, &w_targets, &cfg).unwrap(),
                );
                if reduced {
                    let got =
                        sigmoid_focal_loss_fused(&g_logits, &g_targets, &cfg, g_value).unwrap();
                    let want =
                        sigmoid_focal_loss_fused(&w_logits, &w_targets, &cfg, g_value).unwrap();
                    check.close("tv fused loss", &got.loss, &want.loss);
                    check.close("tv fused grad", &got.grad, &want.grad);
                }

                // mmcv, with and without the per-class weight
                for weighted in [false, true] {
                    let cfg = MmcvFocalConfig {
                        gamma,
                        alpha: alpha.abs(),
                        reduction,
                    };
                    let (gw, ww) = if weighted {
                        (Some(&g_cw), Some(&w_cw))
                    } else {
                        (None, None)
                    };
                    check.close(
                        "mmcv loss",
                        &sigmoid_focal_loss_mmcv(&g_logits, &gpu_labels, gw, &cfg).unwrap(),
                        &sigmoid_focal_loss_mmcv(&w_logits, &labels, ww, &cfg).unwrap(),
                    );
                    let g = up(false);
                    check.close(
                        "mmcv grad",
                        &sigmoid_focal_loss_mmcv_backward(
                            &on_gpu(&g),
                            &g_logits,
                            &gpu_labels,
                            gw,
                            &cfg,
                        )
                        .unwrap(),
                        &sigmoid_focal_loss_mmcv_backward(&wide(&g), &w_logits, &labels, ww, &cfg)
                            .unwrap(),
                    );
                    if reduced {
                        let got = sigmoid_focal_loss_mmcv_fused(
                            &g_logits,
                            &gpu_labels,
                            gw,
                            &cfg,
                            g_value,
                        )
                        .unwrap();
                        let want =
                            sigmoid_focal_loss_mmcv_fused(&w_logits, &labels, ww, &cfg, g_value)
                                .unwrap();
                        check.close("mmcv fused loss", &got.loss, &want.loss);
                        check.close("mmcv fused grad", &got.grad, &want.grad);
                    }
                }

                // QFL, with and without the per-anchor weight and avg_factor
                for weighted in [false, true] {
                    let cfg = QualityFocalConfig {
                        beta,
                        reduction,
                        avg_factor: (weighted && reduction != Reduction::Sum).then_some(7.5),
                    };
                    let (gw, ww) = if weighted {
                        (Some(&g_aw), Some(&w_aw))
                    } else {
                        (None, None)
                    };
                    check.close(
                        "qfl loss",
                        &quality_focal_loss(&g_logits, &gpu_labels, &g_scores, gw, &cfg).unwrap(),
                        &quality_focal_loss(&w_logits, &labels, &w_scores, ww, &cfg).unwrap(),
                    );
                    let g = up(true);
                    check.close(
                        "qfl grad",
                        &quality_focal_loss_backward(
                            &on_gpu(&g),
                            &g_logits,
                            &gpu_labels,
                            &g_scores,
                            gw,
                            &cfg,
                        )
                        .unwrap(),
                        &quality_focal_loss_backward(
                            &wide(&g),
                            &w_logits,
                            &labels,
                            &w_scores,
                            ww,
                            &cfg,
                        )
                        .unwrap(),
                    );
                    if reduced {
                        let got = quality_focal_loss_fused(
                            &g_logits,
                            &gpu_labels,
                            &g_scores,
                            gw,
                            &cfg,
                            g_value,
                        )
                        .unwrap();
                        let want = quality_focal_loss_fused(
                            &w_logits, &labels, &w_scores, ww, &cfg, g_value,
                        )
                        .unwrap();
                        check.close("qfl fused loss", &got.loss, &want.loss);
                        check.close("qfl fused grad", &got.grad, &want.grad);
                    }
                }
            }
        }
    }
}

#[test]
fn cuda_extreme_logits_are_finite() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_extreme_logits_are_finite") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let extremes = [
        -1e4, -1e3, -100.0, -88.0, -50.0, -17.0, 0.0, 17.0, 50.0, 88.0, 100.0, 1e3, 1e4,
    ];
    let (n, c) = (extremes.len(), 3);
    let x: Vec<f64> = extremes.iter().flat_map(|&v| [v, -v, 0.5 * v]).collect();
    let labels: Vec<i64> = (0..n as i64).map(|r| r % 4).collect();
    let t: Vec<f64> = (0..n * c).map(|i| [0.0, 1.0, 0.4][i % 3]).collect();
    let s: Vec<f64> = (0..n).map(|r| [1.0, 0.0, 0.7][r % 3]).collect();
    let labels = Tensor::from_vec(labels, &[n]).unwrap();
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let d = |v: &[f64], shape: &[usize]| host(v, shape, dtype).to_device(&gpu).unwrap();
        let (logits, targets, scores) = (d(&x, &[n, c]), d(&t, &[n, c]), d(&s, &[n]));
        let finite = |what: &str, t: &Tensor| {
            let v = vals(t);
            assert!(v.iter().all(|v| v.is_finite()), "{what} {dtype}: {v:?}");
        };
        for reduction in [Reduction::Mean, Reduction::Sum] {
            let tv = SigmoidFocalConfig {
                reduction,
                ..Default::default()
            };
            let r = sigmoid_focal_loss_fused(&logits, &targets, &tv, 1.0).unwrap();
            finite("tv loss", &r.loss);
            finite("tv grad", &r.grad);
            let mm = MmcvFocalConfig {
                reduction,
                ..Default::default()
            };
            let r = sigmoid_focal_loss_mmcv_fused(&logits, &labels, None, &mm, 1.0).unwrap();
            finite("mmcv loss", &r.loss);
            finite("mmcv grad", &r.grad);
            let q = QualityFocalConfig {
                reduction,
                ..Default::default()
            };
            let r = quality_focal_loss_fused(&logits, &labels, &scores, None, &q, 1.0).unwrap();
            finite("qfl loss", &r.loss);
            finite("qfl grad", &r.grad);
        }
        let none = QualityFocalConfig {
            reduction: Reduction::None,
            ..Default::default()
        };
        finite(
            "qfl rows",
            &quality_focal_loss(&logits, &labels, &scores, None, &none).unwrap(),
        );
        let tv = SigmoidFocalConfig::default();
        finite(
            "tv none",
            &sigmoid_focal_loss(&logits, &targets, &tv).unwrap(),
        );
    }
}

#[test]
fn cuda_reduced_losses_are_bitwise_reproducible() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_reduced_losses_are_bitwise_reproducible")
    else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let (n, c) = (20_000, 80); // 1.6 M elements: 6250 blocks of partial sums
    let mut rng = Rng::new(31);
    let x: Vec<f32> = (0..n * c).map(|_| (3.0 * rng.normal()) as f32).collect();
    let labels: Vec<i64> = (0..n).map(|_| rng.below(c + 1) as i64).collect();
    let scores: Vec<f32> = labels
        .iter()
        .map(|&l| {
            if (l as usize) < c {
                rng.uniform(0.0, 1.0) as f32
            } else {
                0.0
            }
        })
        .collect();
    let logits = Tensor::from_vec(x, &[n, c])
        .unwrap()
        .to_device(&gpu)
        .unwrap();
    let labels = Tensor::from_vec(labels, &[n])
        .unwrap()
        .to_device(&gpu)
        .unwrap();
    let scores = Tensor::from_vec(scores, &[n])
        .unwrap()
        .to_device(&gpu)
        .unwrap();
    let bits = |t: &Tensor| -> Vec<u64> { vals(t).iter().map(|v| v.to_bits()).collect() };
    let run = || {
        let r = quality_focal_loss_fused(&logits, &labels, &scores, None, &Default::default(), 1.0)
            .unwrap();
        let m = sigmoid_focal_loss_mmcv(&logits, &labels, None, &Default::default()).unwrap();
        (bits(&r.loss), bits(&r.grad), bits(&m))
    };
    let first = run();
    for _ in 0..3 {
        assert_eq!(first, run());
    }
}

#[test]
fn cuda_grid_stride_covers_large_inputs() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_grid_stride_covers_large_inputs") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    // More elements than 65 536 blocks x 256 threads: every thread loops at least once more.
    let numel = 65_536 * 256 + 12_345;
    let mut rng = Rng::new(5);
    let x: Vec<f32> = (0..numel).map(|_| (2.0 * rng.normal()) as f32).collect();
    let t: Vec<f32> = (0..numel).map(|_| rng.below(2) as f32).collect();
    let logits = Tensor::from_vec(x, &[numel]).unwrap();
    let targets = Tensor::from_vec(t, &[numel]).unwrap();
    let cfg = SigmoidFocalConfig {
        reduction: Reduction::Sum,
        ..Default::default()
    };
    let want = sigmoid_focal_loss_fused(&logits, &targets, &cfg, 1.0).unwrap();
    let got = sigmoid_focal_loss_fused(
        &logits.to_device(&gpu).unwrap(),
        &targets.to_device(&gpu).unwrap(),
        &cfg,
        1.0,
    )
    .unwrap();
    assert_close("large loss", &vals(&got.loss), &vals(&want.loss), 1e-5);
    assert_close("large grad", &vals(&got.grad), &vals(&want.grad), 1e-6);
}

#[test]
fn cuda_matches_peer_fixtures() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_matches_peer_fixtures") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    for (name, bytes) in FIXTURES {
        check_fixture(name, bytes, DType::F32, &gpu, 1e-5);
    }
}

#[test]
fn cuda_rejects_mixed_devices() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_rejects_mixed_devices") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let logits = host(&[0.5; 6], &[2, 3], DType::F32);
    let targets = logits.to_device(&gpu).unwrap();
    let err = sigmoid_focal_loss(&logits, &targets, &SigmoidFocalConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("`targets`") && err.contains("cuda"), "{err}");
    // Labels on the GPU with logits on the host: labels may only be on the host or the logits' device.
    let labels = Tensor::from_vec(vec![0i64, 3], &[2])
        .unwrap()
        .to_device(&gpu)
        .unwrap();
    let err = sigmoid_focal_loss_mmcv(&logits, &labels, None, &MmcvFocalConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("`labels`"), "{err}");
    // Out-of-range labels on the device are caught on the host before any launch.
    let bad = Tensor::from_vec(vec![0i64, 4], &[2])
        .unwrap()
        .to_device(&gpu)
        .unwrap();
    let err = sigmoid_focal_loss_mmcv(&targets, &bad, None, &MmcvFocalConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("outside [0, 3]"), "{err}");
}
