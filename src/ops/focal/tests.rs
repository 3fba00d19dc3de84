//! Gradchecks, stability, reductions, validation and CPU dtype tests for the focal losses. Peer fixtures
//! and CUDA parity live in tests/focal.rs.

use super::*;
use crate::autograd::{gradcheck, GradcheckOptions};
use crate::testing::{assert_close, Rng};

fn tensor(data: Vec<f64>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(data, shape).unwrap()
}

fn labels(values: &[i64]) -> Tensor {
    Tensor::from_vec(values.to_vec(), &[values.len()]).unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_vec::<f64>().unwrap()
}

const REDUCTIONS: [Reduction; 3] = [Reduction::None, Reduction::Mean, Reduction::Sum];

/// Runs a gradcheck of `loss(x)` against `grad(x, upstream)` and insists the Jacobian is not all zero.
fn check(
    what: &str,
    x: &[f64],
    loss: impl Fn(&Tensor) -> Result<Tensor>,
    grad: impl Fn(&Tensor, &Tensor) -> Result<Tensor>,
    shape: &[usize],
    out_shape: &[usize],
) {
    let forward = |x: &[f64]| loss(&tensor(x.to_vec(), shape))?.to_vec::<f64>();
    let backward = |x: &[f64], g: &[f64]| {
        grad(&tensor(x.to_vec(), shape), &tensor(g.to_vec(), out_shape))?.to_vec::<f64>()
    };
    let report = gradcheck(forward, backward, x, &GradcheckOptions::default())
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        report.nonzero_entries > 0,
        "{what}: all-zero Jacobian proves nothing"
    );
}

fn out_shape(reduction: Reduction, unreduced: &[usize]) -> Vec<usize> {
    if reduction == Reduction::None {
        unreduced.to_vec()
    } else {
        Vec::new()
    }
}

#[test]
fn gradcheck_torchvision() {
    let shape = [3, 5];
    let mut seed = 0;
    for (gamma, alpha) in [
        (2.0, 0.25),
        (1.5, -1.0),
        (0.0, 0.5),
        (3.0, 0.7),
        (1.0, 0.25),
    ] {
        for soft in [false, true] {
            for reduction in REDUCTIONS {
                seed += 1;
                let mut rng = Rng::new(seed);
                let x: Vec<f64> = (0..15).map(|_| 2.5 * rng.normal()).collect();
                let t: Vec<f64> = (0..15)
                    .map(|_| {
                        if soft {
                            rng.uniform(0.05, 0.95)
                        } else {
                            rng.below(2) as f64
                        }
                    })
                    .collect();
                let targets = tensor(t, &shape);
                let cfg = SigmoidFocalConfig {
                    alpha,
                    gamma,
                    reduction,
                };
                check(
                    &format!("torchvision {cfg:?} soft={soft}"),
                    &x,
                    |x| sigmoid_focal_loss(x, &targets, &cfg),
                    |x, g| sigmoid_focal_loss_backward(g, x, &targets, &cfg),
                    &shape,
                    &out_shape(reduction, &shape),
                );
            }
        }
    }
}

#[test]
fn gradcheck_mmcv() {
    let (n, c) = (5, 4);
    let labels = labels(&[0, 4, 3, 1, 4]); // rows 1 and 4 are background
    let weight = tensor(vec![0.5, 2.0, 1.5, 0.75], &[c]);
    let mut seed = 100;
    for (gamma, alpha) in [(2.0, 0.25), (1.5, 0.4), (0.0, 0.25), (2.5, 0.9)] {
        for with_weight in [false, true] {
            for reduction in REDUCTIONS {
                seed += 1;
                let x = Rng::new(seed)
                    .normal_vec(n * c)
                    .iter()
                    .map(|v| 3.0 * v)
                    .collect::<Vec<_>>();
                let cfg = MmcvFocalConfig {
                    gamma,
                    alpha,
                    reduction,
                };
                let w = with_weight.then_some(&weight);
                check(
                    &format!("mmcv {cfg:?} weight={with_weight}"),
                    &x,
                    |x| sigmoid_focal_loss_mmcv(x, &labels, w, &cfg),
                    |x, g| sigmoid_focal_loss_mmcv_backward(g, x, &labels, w, &cfg),
                    &[n, c],
                    &out_shape(reduction, &[n, c]),
                );
            }
        }
    }
}

#[test]
fn gradcheck_quality() {
    let (n, c) = (6, 3);
    let labels = labels(&[2, 3, 0, 1, 3, 0]);
    let scores = tensor(vec![0.83, 0.0, 0.41, 0.67, 0.0, 0.12], &[n]);
    let weight = tensor(vec![1.0, 0.3, 2.0, 0.8, 1.2, 0.5], &[n]);
    let mut seed = 200;
    for beta in [2.0, 1.5, 3.0] {
        for with_weight in [false, true] {
            for (reduction, avg_factor) in [
                (Reduction::None, None),
                (Reduction::Sum, None),
                (Reduction::Mean, None),
                (Reduction::Mean, Some(2.5)),
            ] {
                seed += 1;
                let x: Vec<f64> = Rng::new(seed)
                    .normal_vec(n * c)
                    .iter()
                    .map(|v| 2.0 * v)
                    .collect();
                let cfg = QualityFocalConfig {
                    beta,
                    reduction,
                    avg_factor,
                };
                let w = with_weight.then_some(&weight);
                check(
                    &format!("quality {cfg:?} weight={with_weight}"),
                    &x,
                    |x| quality_focal_loss(x, &labels, &scores, w, &cfg),
                    |x, g| quality_focal_loss_backward(g, x, &labels, &scores, w, &cfg),
                    &[n, c],
                    &out_shape(reduction, &[n]),
                );
            }
        }
    }
}

/// The fused entries reproduce forward + backward exactly on the CPU (same sums, same products).
#[test]
fn fused_equals_forward_and_backward() {
    let (n, c) = (40, 7);
    let mut rng = Rng::new(9);
    let x = rng
        .normal_vec(n * c)
        .iter()
        .map(|v| 4.0 * v)
        .collect::<Vec<_>>();
    let t: Vec<f64> = (0..n * c).map(|_| rng.below(2) as f64).collect();
    let lab: Vec<i64> = (0..n).map(|_| rng.below(c + 1) as i64).collect();
    let s: Vec<f64> = (0..n).map(|_| rng.uniform(0.0, 1.0)).collect();
    let w: Vec<f64> = (0..n).map(|_| rng.uniform(0.5, 2.0)).collect();
    let wc: Vec<f64> = (0..c).map(|_| rng.uniform(0.5, 2.0)).collect();
    let g = 0.37;
    for dtype in [DType::F64, DType::F32] {
        let cast = |v: &[f64], shape: &[usize]| tensor(v.to_vec(), shape).to_dtype(dtype).unwrap();
        let (logits, targets) = (cast(&x, &[n, c]), cast(&t, &[n, c]));
        let (lab, scores) = (labels(&lab), cast(&s, &[n]));
        let (weight, class_weight) = (cast(&w, &[n]), cast(&wc, &[c]));
        let upstream = cast(&[g], &[]);
        let same = |what: &str, fused: LossAndGrad, loss: Tensor, grad: Tensor| {
            assert_eq!(values(&fused.loss), values(&loss), "{what} {dtype} loss");
            assert_eq!(values(&fused.grad), values(&grad), "{what} {dtype} grad");
        };
        for reduction in [Reduction::Mean, Reduction::Sum] {
            let cfg = SigmoidFocalConfig {
                reduction,
                ..Default::default()
            };
            same(
                "torchvision",
                sigmoid_focal_loss_fused(&logits, &targets, &cfg, g).unwrap(),
                sigmoid_focal_loss(&logits, &targets, &cfg).unwrap(),
                sigmoid_focal_loss_backward(&upstream, &logits, &targets, &cfg).unwrap(),
            );
            let cfg = MmcvFocalConfig {
                reduction,
                ..Default::default()
            };
            let wc = Some(&class_weight);
            same(
                "mmcv",
                sigmoid_focal_loss_mmcv_fused(&logits, &lab, wc, &cfg, g).unwrap(),
                sigmoid_focal_loss_mmcv(&logits, &lab, wc, &cfg).unwrap(),
                sigmoid_focal_loss_mmcv_backward(&upstream, &logits, &lab, wc, &cfg).unwrap(),
            );
            let cfg = QualityFocalConfig {
                reduction,
                ..Default::default()
            };
            let w = Some(&weight);
            same(
                "quality",
                quality_focal_loss_fused(&logits, &lab, &scores, w, &cfg, g).unwrap(),
                quality_focal_loss(&logits, &lab, &scores, w, &cfg).unwrap(),
                quality_focal_loss_backward(&upstream, &logits, &lab, &scores, w, &cfg).unwrap(),
            );
        }
    }
}

/// Logits of ±1e4 (and everything between) give finite losses and gradients in f32 and f64, with the
/// values the formulas give in the limit.
#[test]
fn extreme_logits_are_finite() {
    let extremes = [
        -1e4, -1e3, -100.0, -88.0, -87.0, -50.0, -20.0, -1e-3, 0.0, 1e-3, 20.0, 50.0, 87.0, 88.0,
        100.0, 1e3, 1e4,
    ];
    let c = 2;
    let n = extremes.len();
    // Row r: logits (x_r, -x_r); label alternates class 0, class 1, background.
    let x: Vec<f64> = extremes.iter().flat_map(|&v| [v, -v]).collect();
    let lab: Vec<i64> = (0..n).map(|r| (r % 3) as i64).collect();
    let t: Vec<f64> = (0..n * c)
        .map(|i| [0.0, 1.0, 0.5][(i / c) % 3] * ((i % 2) as f64))
        .collect();
    let s: Vec<f64> = (0..n).map(|r| [1.0, 0.0, 0.6, 0.25][r % 4]).collect();
    for dtype in [DType::F32, DType::F64, DType::BF16] {
        let cast = |v: &[f64], shape: &[usize]| tensor(v.to_vec(), shape).to_dtype(dtype).unwrap();
        let logits = cast(&x, &[n, c]);
        let (targets, scores, lab) = (cast(&t, &[n, c]), cast(&s, &[n]), labels(&lab));
        let finite = |what: &str, t: Tensor| {
            let v = values(&t);
            assert!(v.iter().all(|v| v.is_finite()), "{what} {dtype}: {v:?}");
        };
        for reduction in REDUCTIONS {
            let g = if reduction == Reduction::None {
                cast(&vec![0.5; n * c], &[n, c])
            } else {
                cast(&[0.5], &[])
            };
            let g_rows = cast(&vec![0.5; n], &[n]);
            let g_quality = if reduction == Reduction::None {
                &g_rows
            } else {
                &g
            };
            let cfg = SigmoidFocalConfig {
                reduction,
                ..Default::default()
            };
            finite(
                "tv loss",
                sigmoid_focal_loss(&logits, &targets, &cfg).unwrap(),
            );
            finite(
                "tv grad",
                sigmoid_focal_loss_backward(&g, &logits, &targets, &cfg).unwrap(),
            );
            let cfg = MmcvFocalConfig {
                reduction,
                ..Default::default()
            };
            finite(
                "mmcv loss",
                sigmoid_focal_loss_mmcv(&logits, &lab, None, &cfg).unwrap(),
            );
            finite(
                "mmcv grad",
                sigmoid_focal_loss_mmcv_backward(&g, &logits, &lab, None, &cfg).unwrap(),
            );
            let cfg = QualityFocalConfig {
                reduction,
                ..Default::default()
            };
            finite(
                "qfl loss",
                quality_focal_loss(&logits, &lab, &scores, None, &cfg).unwrap(),
            );
            finite(
                "qfl grad",
                quality_focal_loss_backward(g_quality, &logits, &lab, &scores, None, &cfg).unwrap(),
            );
        }
    }

    // Limits, in f32: a confidently wrong logit of 1e4.
    let (a, x) = (0.25f32, 1e4f32);
    let (loss, grad) = cpu::torchvision_element(x, 0.0, a, 2.0, true);
    assert_eq!((loss, grad), ((1.0 - a) * x, 1.0 - a));
    let (loss, grad) = cpu::torchvision_element(-x, 1.0, a, 2.0, true);
    assert_eq!((loss, grad), (a * x, -a));
    let log_floor = LOG_FLT_MIN as f32;
    let (loss, grad) = cpu::mmcv_element(-x, true, a, 2.0);
    assert_eq!((loss, grad), (-a * log_floor, -a));
    let (loss, grad) = cpu::mmcv_element(x, false, a, 2.0);
    assert_eq!((loss, grad), (-(1.0 - a) * log_floor, 1.0 - a));
    let (loss, grad) = cpu::quality_element(x, 0.0, 2.0);
    assert_eq!((loss, grad), (x, 1.0));
    let (loss, grad) = cpu::quality_element(-x, 0.5, 2.0);
    assert_eq!((loss, grad), (0.5 * x * 0.25, -0.125));
}

/// mmcv's clamp: for |x| > 87.34 its loss saturates where torchvision's (stable BCE) keeps growing.
#[test]
fn mmcv_clamps_logs_where_torchvision_does_not() {
    let (loss_mmcv, _) = cpu::mmcv_element(-100.0f64, true, 0.25, 2.0);
    assert!(
        (loss_mmcv - 0.25 * -LOG_FLT_MIN).abs() < 1e-12,
        "{loss_mmcv}"
    );
    let (loss_tv, _) = cpu::torchvision_element(-100.0f64, 1.0, 0.25, 2.0, true);
    assert!((loss_tv - 25.0).abs() < 1e-12, "{loss_tv}");
    // Inside the clamp both conventions agree for binary targets.
    for x in [-30.0f64, -2.0, 0.7, 15.0] {
        for (positive, t) in [(true, 1.0), (false, 0.0)] {
            let (l_m, g_m) = cpu::mmcv_element(x, positive, 0.25, 2.0);
            let (l_t, g_t) = cpu::torchvision_element(x, t, 0.25, 2.0, true);
            assert!(
                (l_m - l_t).abs() <= 1e-12 * l_t.abs().max(1.0),
                "{x} {positive}"
            );
            assert!(
                (g_m - g_t).abs() <= 1e-12 * g_t.abs().max(1.0),
                "{x} {positive}"
            );
        }
    }
}

#[test]
fn mmcv_weight_is_indexed_by_the_row_label() {
    let (n, c) = (4, 3);
    let x = Rng::new(3).normal_vec(n * c);
    let logits = tensor(x, &[n, c]);
    let lab = labels(&[2, 3, 0, 1]); // row 1 is background
    let w = [0.5, 2.0, 3.0];
    let weight = tensor(w.to_vec(), &[c]);
    let cfg = MmcvFocalConfig {
        reduction: Reduction::None,
        ..Default::default()
    };
    let plain = values(&sigmoid_focal_loss_mmcv(&logits, &lab, None, &cfg).unwrap());
    let weighted = values(&sigmoid_focal_loss_mmcv(&logits, &lab, Some(&weight), &cfg).unwrap());
    let row_factor = [3.0, 1.0, 0.5, 2.0];
    for i in 0..n * c {
        assert_eq!(weighted[i], plain[i] * row_factor[i / c], "element {i}");
    }
}

#[test]
fn reductions_divide_by_their_counts() {
    let (n, c) = (5, 4);
    let mut rng = Rng::new(17);
    let logits = tensor(rng.normal_vec(n * c), &[n, c]);
    let targets = tensor((0..n * c).map(|_| rng.below(2) as f64).collect(), &[n, c]);
    let lab = labels(&[0, 4, 2, 3, 1]);
    let scores = tensor(vec![0.9, 0.0, 0.5, 0.3, 0.7], &[n]);
    let weight = tensor(vec![1.0, 2.0, 0.5, 1.5, 0.25], &[n]);
    let scalar = |t: Tensor| {
        assert_eq!(t.shape(), &[] as &[usize]);
        values(&t)[0]
    };
    let sum_of = |t: Tensor| values(&t).iter().sum::<f64>();

    let tv = |reduction| SigmoidFocalConfig {
        reduction,
        ..Default::default()
    };
    let total = sum_of(sigmoid_focal_loss(&logits, &targets, &tv(Reduction::None)).unwrap());
    let sum = scalar(sigmoid_focal_loss(&logits, &targets, &tv(Reduction::Sum)).unwrap());
    let mean = scalar(sigmoid_focal_loss(&logits, &targets, &tv(Reduction::Mean)).unwrap());
    assert!((sum - total).abs() < 1e-12 && (mean - total / (n * c) as f64).abs() < 1e-12);

    let mm = |reduction| MmcvFocalConfig {
        reduction,
        ..Default::default()
    };
    let total = sum_of(sigmoid_focal_loss_mmcv(&logits, &lab, None, &mm(Reduction::None)).unwrap());
    let mean = scalar(sigmoid_focal_loss_mmcv(&logits, &lab, None, &mm(Reduction::Mean)).unwrap());
    assert!(
        (mean - total / n as f64).abs() < 1e-12,
        "mmcv mean divides by N"
    );

    let q = |reduction, avg_factor| QualityFocalConfig {
        reduction,
        avg_factor,
        ..Default::default()
    };
    let w = Some(&weight);
    let per_anchor =
        quality_focal_loss(&logits, &lab, &scores, w, &q(Reduction::None, None)).unwrap();
    assert_eq!(per_anchor.shape(), &[n]);
    let total = sum_of(per_anchor);
    let mean =
        scalar(quality_focal_loss(&logits, &lab, &scores, w, &q(Reduction::Mean, None)).unwrap());
    assert!((mean - total / n as f64).abs() < 1e-12);
    let avg = scalar(
        quality_focal_loss(&logits, &lab, &scores, w, &q(Reduction::Mean, Some(3.0))).unwrap(),
    );
    assert!((avg - total / (3.0 + AVG_FACTOR_EPS)).abs() < 1e-12);
    // avg_factor with `none` is ignored, as in mmdet.
    let none =
        quality_focal_loss(&logits, &lab, &scores, w, &q(Reduction::None, Some(3.0))).unwrap();
    assert!((sum_of(none) - total).abs() < 1e-12);
}

/// QFL's per-anchor loss written out for one row by hand.
#[test]
fn quality_matches_its_formula() {
    let x = [0.3f64, -1.2, 2.0];
    let logits = tensor(x.to_vec(), &[1, 3]);
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    let bce = |v: f64, y: f64| -(y * sig(v).ln() + (1.0 - y) * (1.0 - sig(v)).ln());
    let s = 0.7;
    let want = bce(x[0], 0.0) * sig(x[0]).powi(2)
        + bce(x[1], s) * (s - sig(x[1])).abs().powi(2)
        + bce(x[2], 0.0) * sig(x[2]).powi(2);
    let got = quality_focal_loss(
        &logits,
        &labels(&[1]),
        &tensor(vec![s], &[1]),
        None,
        &QualityFocalConfig {
            reduction: Reduction::None,
            ..Default::default()
        },
    )
    .unwrap();
    assert!((values(&got)[0] - want).abs() < 1e-12);
}

#[test]
fn empty_inputs() {
    let logits = tensor(vec![], &[0, 4]);
    let targets = tensor(vec![], &[0, 4]);
    let lab = labels(&[]);
    let scores = tensor(vec![], &[0]);
    for reduction in REDUCTIONS {
        let tv = SigmoidFocalConfig {
            reduction,
            ..Default::default()
        };
        let mm = MmcvFocalConfig {
            reduction,
            ..Default::default()
        };
        let q = QualityFocalConfig {
            reduction,
            ..Default::default()
        };
        let outs = [
            sigmoid_focal_loss(&logits, &targets, &tv).unwrap(),
            sigmoid_focal_loss_mmcv(&logits, &lab, None, &mm).unwrap(),
            quality_focal_loss(&logits, &lab, &scores, None, &q).unwrap(),
        ];
        for (k, out) in outs.iter().enumerate() {
            match reduction {
                Reduction::None => assert_eq!(out.numel(), 0, "{k}"),
                // 0/0, as torch's mean of an empty tensor and mmcv's sum / N.
                Reduction::Mean => assert!(values(out)[0].is_nan(), "{k}"),
                Reduction::Sum => assert_eq!(values(out), vec![0.0], "{k}"),
            }
        }
        let g = if reduction == Reduction::None {
            tensor(vec![], &[0, 4])
        } else {
            tensor(vec![1.0], &[])
        };
        let grad = sigmoid_focal_loss_backward(&g, &logits, &targets, &tv).unwrap();
        assert_eq!(grad.shape(), &[0, 4]);
    }
    // QFL with avg_factor over nothing: 0 / (avg_factor + eps) = 0.
    let q = QualityFocalConfig {
        avg_factor: Some(0.0),
        ..Default::default()
    };
    let out = quality_focal_loss(&logits, &lab, &scores, None, &q).unwrap();
    assert_eq!(values(&out), vec![0.0]);
    // C = 0 with N > 0: every label must be background; per-anchor losses are 0, the mean is 0.
    let logits = tensor(vec![], &[3, 0]);
    let lab = labels(&[0, 0, 0]);
    let scores = tensor(vec![0.5; 3], &[3]);
    let out =
        quality_focal_loss(&logits, &lab, &scores, None, &QualityFocalConfig::default()).unwrap();
    assert_eq!(values(&out), vec![0.0]);
    let fused = quality_focal_loss_fused(
        &logits,
        &lab,
        &scores,
        None,
        &QualityFocalConfig::default(),
        1.0,
    )
    .unwrap();
    assert_eq!(fused.grad.shape(), &[3, 0]);
}

#[test]
fn half_storage_matches_f32_compute_on_cpu() {
    let (n, c) = (30, 9);
    let mut rng = Rng::new(23);
    let x: Vec<f64> = rng.normal_vec(n * c).iter().map(|v| 3.0 * v).collect();
    let lab: Vec<i64> = (0..n).map(|_| rng.below(c + 1) as i64).collect();
    let s: Vec<f64> = (0..n).map(|_| rng.uniform(0.0, 1.0)).collect();
    let cfg = QualityFocalConfig {
        reduction: Reduction::None,
        ..Default::default()
    };
    for dtype in [DType::F16, DType::BF16] {
        // Reference: f32 compute on the inputs as rounded to the half type.
        let logits = tensor(x.clone(), &[n, c]).to_dtype(dtype).unwrap();
        let scores = tensor(s.clone(), &[n]).to_dtype(dtype).unwrap();
        let want = quality_focal_loss(
            &logits.to_dtype(DType::F32).unwrap(),
            &labels(&lab),
            &scores.to_dtype(DType::F32).unwrap(),
            None,
            &cfg,
        )
        .unwrap();
        let got = quality_focal_loss(&logits, &labels(&lab), &scores, None, &cfg).unwrap();
        assert_eq!(got.dtype(), dtype);
        assert_close(&format!("{dtype}"), &values(&got), &values(&want), 1e-2);
    }
}

#[test]
fn reduction_names_round_trip() {
    for r in REDUCTIONS {
        assert_eq!(Reduction::from_name(r.name()), Some(r));
    }
    assert_eq!(Reduction::from_name("batchmean"), None);
}

#[test]
fn defaults_are_the_official_values() {
    let tv = SigmoidFocalConfig::default();
    assert_eq!(
        (tv.alpha, tv.gamma, tv.reduction),
        (0.25, 2.0, Reduction::None)
    );
    let mm = MmcvFocalConfig::default();
    assert_eq!(
        (mm.alpha, mm.gamma, mm.reduction),
        (0.25, 2.0, Reduction::Mean)
    );
    let q = QualityFocalConfig::default();
    assert_eq!(
        (q.beta, q.reduction, q.avg_factor),
        (2.0, Reduction::Mean, None)
    );
    assert_eq!(LOG_FLT_MIN, (f32::MIN_POSITIVE as f64).ln());
}

// ---------------------------------------------------------------------------------------------------------
// Validation: every rule, with the argument named in the message

fn err(r: Result<impl std::fmt::Debug>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn torchvision_rejects_bad_input() {
    let logits = tensor(vec![0.5; 6], &[2, 3]);
    let targets = tensor(vec![1.0; 6], &[2, 3]);
    let cfg = SigmoidFocalConfig::default();
    let e = err(sigmoid_focal_loss(
        &logits,
        &tensor(vec![1.0; 6], &[3, 2]),
        &cfg,
    ));
    assert!(e.contains("`targets`") && e.contains("[2, 3]"), "{e}");
    let e = err(sigmoid_focal_loss(
        &logits,
        &targets.to_dtype(DType::F32).unwrap(),
        &cfg,
    ));
    assert!(e.contains("`targets`") && e.contains("f32"), "{e}");
    let ints = Tensor::from_vec(vec![1i64; 6], &[2, 3]).unwrap();
    let e = err(sigmoid_focal_loss(&ints, &ints, &cfg));
    assert!(e.contains("`logits`") && e.contains("float"), "{e}");
    for (alpha, gamma, arg) in [
        (f64::NAN, 2.0, "`alpha`"),
        (0.25, -1.0, "`gamma`"),
        (0.25, f64::INFINITY, "`gamma`"),
    ] {
        let bad = SigmoidFocalConfig {
            alpha,
            gamma,
            ..cfg.clone()
        };
        let e = err(sigmoid_focal_loss(&logits, &targets, &bad));
        assert!(e.contains(arg), "{e}");
    }
    // grad_out must have the loss's shape and the logits' dtype.
    let e = err(sigmoid_focal_loss_backward(
        &tensor(vec![1.0], &[]),
        &logits,
        &targets,
        &cfg,
    ));
    assert!(e.contains("`grad_out`") && e.contains("[2, 3]"), "{e}");
    let mean = SigmoidFocalConfig {
        reduction: Reduction::Mean,
        ..cfg.clone()
    };
    let e = err(sigmoid_focal_loss_backward(
        &tensor(vec![1.0; 2], &[2]),
        &logits,
        &targets,
        &mean,
    ));
    assert!(e.contains("`grad_out`") && e.contains("[] or [1]"), "{e}");
    assert!(
        sigmoid_focal_loss_backward(&tensor(vec![1.0], &[1]), &logits, &targets, &mean).is_ok()
    );
    let g32 = tensor(vec![1.0], &[]).to_dtype(DType::F32).unwrap();
    let e = err(sigmoid_focal_loss_backward(&g32, &logits, &targets, &mean));
    assert!(e.contains("`grad_out`") && e.contains("f32"), "{e}");
    // Fused needs a scalar loss and a finite upstream gradient.
    let e = err(sigmoid_focal_loss_fused(&logits, &targets, &cfg, 1.0));
    assert!(e.contains("`reduction`") && e.contains("fused"), "{e}");
    let e = err(sigmoid_focal_loss_fused(&logits, &targets, &mean, f64::NAN));
    assert!(e.contains("`grad_output`"), "{e}");
}

#[test]
fn label_forms_reject_bad_input() {
    let logits = tensor(vec![0.5; 6], &[2, 3]);
    let lab = labels(&[0, 3]);
    let scores = tensor(vec![0.5, 0.0], &[2]);
    let mm = MmcvFocalConfig::default();
    let q = QualityFocalConfig::default();
    let mmcv = |logits: &Tensor, labels: &Tensor, weight: Option<&Tensor>| {
        err(sigmoid_focal_loss_mmcv(logits, labels, weight, &mm))
    };
    let quality =
        |labels: &Tensor, scores: &Tensor, weight: Option<&Tensor>, cfg: &QualityFocalConfig| {
            err(quality_focal_loss(&logits, labels, scores, weight, cfg))
        };

    let e = mmcv(&tensor(vec![0.5; 6], &[6]), &lab, None);
    assert!(e.contains("`logits`") && e.contains("[N, C]"), "{e}");
    for bad in [labels(&[-1, 0]), labels(&[0, 4])] {
        let e = mmcv(&logits, &bad, None);
        assert!(
            e.contains("`labels`") && e.contains("outside [0, 3]"),
            "{e}"
        );
        let e = quality(&bad, &scores, None, &q);
        assert!(e.contains("`labels`") && e.contains("row"), "{e}");
    }
    let e = mmcv(&logits, &labels(&[0, 1, 2]), None);
    assert!(e.contains("`labels`") && e.contains("[2]"), "{e}");
    let e = mmcv(&logits, &tensor(vec![0.0, 1.0], &[2]), None);
    assert!(e.contains("`labels`") && e.contains("i64"), "{e}");
    let e = mmcv(&logits, &lab, Some(&tensor(vec![1.0; 2], &[2])));
    assert!(e.contains("`weight`") && e.contains("[C]"), "{e}");
    let e = mmcv(
        &logits,
        &lab,
        Some(&tensor(vec![1.0; 3], &[3]).to_dtype(DType::F32).unwrap()),
    );
    assert!(e.contains("`weight`") && e.contains("f32"), "{e}");
    let bad = MmcvFocalConfig {
        gamma: -0.5,
        ..mm.clone()
    };
    assert!(err(sigmoid_focal_loss_mmcv(&logits, &lab, None, &bad)).contains("`gamma`"));
    let bad = MmcvFocalConfig {
        alpha: f64::INFINITY,
        ..mm.clone()
    };
    assert!(err(sigmoid_focal_loss_mmcv(&logits, &lab, None, &bad)).contains("`alpha`"));

    for (bad, what) in [
        (tensor(vec![1.5, 0.0], &[2]), "got 1.5"),
        (tensor(vec![-0.1, 0.0], &[2]), "got -0.1"),
        (tensor(vec![0.5, f64::NAN], &[2]), "row 1"),
    ] {
        let e = quality(&lab, &bad, None, &q);
        assert!(e.contains("`scores`") && e.contains(what), "{e}");
    }
    let e = quality(&lab, &tensor(vec![0.5; 3], &[3]), None, &q);
    assert!(e.contains("`scores`") && e.contains("[N]"), "{e}");
    let e = quality(&lab, &scores.to_dtype(DType::F32).unwrap(), None, &q);
    assert!(e.contains("`scores`") && e.contains("f32"), "{e}");
    let e = quality(&lab, &scores, Some(&tensor(vec![1.0; 3], &[3])), &q);
    assert!(e.contains("`weight`") && e.contains("[N]"), "{e}");
    for cfg in [
        QualityFocalConfig {
            beta: -1.0,
            ..q.clone()
        },
        QualityFocalConfig {
            beta: f64::NAN,
            ..q.clone()
        },
    ] {
        assert!(quality(&lab, &scores, None, &cfg).contains("`beta`"));
    }
    for (cfg, what) in [
        (
            QualityFocalConfig {
                avg_factor: Some(-1.0),
                ..q.clone()
            },
            ">= 0",
        ),
        (
            QualityFocalConfig {
                avg_factor: Some(f64::NAN),
                ..q.clone()
            },
            "finite",
        ),
        (
            QualityFocalConfig {
                avg_factor: Some(2.0),
                reduction: Reduction::Sum,
                ..q.clone()
            },
            "`sum`",
        ),
    ] {
        let e = quality(&lab, &scores, None, &cfg);
        assert!(e.contains("`avg_factor`") && e.contains(what), "{e}");
    }
    // grad_out of QFL's unreduced loss is per anchor.
    let none = QualityFocalConfig {
        reduction: Reduction::None,
        ..q.clone()
    };
    let e = err(quality_focal_loss_backward(
        &tensor(vec![1.0; 6], &[2, 3]),
        &logits,
        &lab,
        &scores,
        None,
        &none,
    ));
    assert!(e.contains("`grad_out`") && e.contains("[2]"), "{e}");
    let e = err(quality_focal_loss_fused(
        &logits, &lab, &scores, None, &none, 1.0,
    ));
    assert!(e.contains("`reduction`"), "{e}");
}
