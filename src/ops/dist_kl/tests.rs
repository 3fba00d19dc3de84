//! Gradchecks, closed-form checks, validation and CPU dtype tests for the distribution losses. Peer
//! fixtures (PyTorch compositions of mmdet's formulas) and CUDA parity live in tests/dist_kl.rs.

use super::*;
use crate::autograd::{gradcheck, GradcheckOptions};
use crate::testing::{assert_close, Rng};

fn tensor(data: Vec<f64>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(data, shape).unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_vec::<f64>().unwrap()
}

/// `[R]` upstream for `none`, a scalar otherwise.
fn upstream_shape(reduction: Reduction, rows: usize) -> Vec<usize> {
    match reduction {
        Reduction::None => vec![rows],
        _ => vec![],
    }
}

fn scaled_normals(rng: &mut Rng, n: usize, scale: f64) -> Vec<f64> {
    rng.normal_vec(n).into_iter().map(|v| v * scale).collect()
}

fn kl_cfg(temperature: f64, normalizer: KlNormalizer, reduction: Reduction) -> KdKlConfig {
    KdKlConfig {
        temperature,
        normalizer,
        reduction,
        loss_weight: 0.75,
    }
}

/// Gradcheck of the KD KL with respect to the student logits.
fn check_kl(
    rows: usize,
    bins: usize,
    cfg: &KdKlConfig,
    weighted: bool,
    avg: Option<f64>,
    seed: u64,
) {
    let mut rng = Rng::new(seed);
    let scale = cfg.temperature * 1.5;
    let student = scaled_normals(&mut rng, rows * bins, scale);
    let teacher = tensor(scaled_normals(&mut rng, rows * bins, scale), &[rows, bins]);
    let weight = tensor((0..rows).map(|_| rng.uniform(0.1, 2.0)).collect(), &[rows]);
    let weighting = LossWeighting::new(weighted.then_some(&weight), avg);
    let shape = [rows, bins];
    let forward = |x: &[f64]| {
        kd_kl_div(&tensor(x.to_vec(), &shape), &teacher, weighting, cfg)?.to_vec::<f64>()
    };
    let backward = |x: &[f64], g: &[f64]| {
        let grad_out = tensor(g.to_vec(), &upstream_shape(cfg.reduction, rows));
        kd_kl_div_backward(
            &grad_out,
            &tensor(x.to_vec(), &shape),
            &teacher,
            weighting,
            cfg,
        )?
        .to_vec::<f64>()
    };
    let report = gradcheck(forward, backward, &student, &GradcheckOptions::default())
        .unwrap_or_else(|e| panic!("{cfg:?} weighted={weighted} avg={avg:?}: {e}"));
    assert!(report.nonzero_entries > 0);
}

#[test]
fn gradcheck_kd_kl_every_reduction_and_normalizer() {
    for (i, reduction) in [Reduction::None, Reduction::Sum, Reduction::Mean]
        .into_iter()
        .enumerate()
    {
        for normalizer in [KlNormalizer::MeanOverBins, KlNormalizer::SumOverBins] {
            for temperature in [1.0, 10.0] {
                let cfg = kl_cfg(temperature, normalizer, reduction);
                check_kl(5, 17, &cfg, i != 1, None, 10 + i as u64);
            }
        }
    }
    // mean with avg_factor, class-logit width, and a temperature below 1
    check_kl(
        4,
        17,
        &kl_cfg(10.0, KlNormalizer::MeanOverBins, Reduction::Mean),
        true,
        Some(6.5),
        20,
    );
    check_kl(
        3,
        80,
        &kl_cfg(2.0, KlNormalizer::MeanOverBins, Reduction::Mean),
        false,
        None,
        21,
    );
    check_kl(
        4,
        5,
        &kl_cfg(0.5, KlNormalizer::SumOverBins, Reduction::Sum),
        true,
        None,
        22,
    );
}

/// DFL targets in `[0, n)` away from nothing in particular (the loss is smooth in the logits for any target),
/// including integers and values just below `n`.
fn dfl_targets(rng: &mut Rng, rows: usize, reg_max: usize) -> Vec<f64> {
    let n = reg_max as f64;
    (0..rows)
        .map(|i| match i % 5 {
            0 => (i % reg_max) as f64,
            1 => n - 0.01,
            _ => rng.uniform(0.0, n - 0.1),
        })
        .collect()
}

fn check_dfl(rows: usize, cfg: &DflConfig, weighted: bool, avg: Option<f64>, seed: u64) {
    let mut rng = Rng::new(seed);
    let bins = cfg.reg_max + 1;
    let pred = scaled_normals(&mut rng, rows * bins, 3.0);
    let label = tensor(dfl_targets(&mut rng, rows, cfg.reg_max), &[rows]);
    let weight = tensor((0..rows).map(|_| rng.uniform(0.1, 2.0)).collect(), &[rows]);
    let weighting = LossWeighting::new(weighted.then_some(&weight), avg);
    let shape = [rows, bins];
    let forward = |x: &[f64]| {
        distribution_focal_loss(&tensor(x.to_vec(), &shape), &label, weighting, cfg)?
            .to_vec::<f64>()
    };
    let backward = |x: &[f64], g: &[f64]| {
        let grad_out = tensor(g.to_vec(), &upstream_shape(cfg.reduction, rows));
        distribution_focal_loss_backward(
            &grad_out,
            &tensor(x.to_vec(), &shape),
            &label,
            weighting,
            cfg,
        )?
        .to_vec::<f64>()
    };
    let report = gradcheck(forward, backward, &pred, &GradcheckOptions::default())
        .unwrap_or_else(|e| panic!("{cfg:?} weighted={weighted} avg={avg:?}: {e}"));
    assert!(report.nonzero_entries > 0);
}

#[test]
fn gradcheck_dfl_every_reduction() {
    for (i, reduction) in [Reduction::None, Reduction::Sum, Reduction::Mean]
        .into_iter()
        .enumerate()
    {
        let cfg = DflConfig {
            reduction,
            loss_weight: 0.25,
            ..DflConfig::default()
        };
        check_dfl(6, &cfg, i != 1, None, 30 + i as u64);
    }
    let cfg = DflConfig {
        reg_max: 4,
        ..DflConfig::gfl()
    };
    check_dfl(7, &cfg, true, Some(3.0), 33);
}

#[test]
fn gradcheck_integral() {
    let cfg = IntegralConfig::default();
    let shape = [3, 4, 17];
    let x = scaled_normals(&mut Rng::new(40), 3 * 4 * 17, 2.5);
    let forward = |x: &[f64]| integral(&tensor(x.to_vec(), &shape), &cfg)?.to_vec::<f64>();
    let backward = |x: &[f64], g: &[f64]| {
        integral_backward(
            &tensor(g.to_vec(), &[3, 4]),
            &tensor(x.to_vec(), &shape),
            &cfg,
        )?
        .to_vec::<f64>()
    };
    let report = gradcheck(forward, backward, &x, &GradcheckOptions::default()).unwrap();
    assert!(report.nonzero_entries > 0);

    let small = IntegralConfig { reg_max: 3 };
    let x = scaled_normals(&mut Rng::new(41), 4, 1.0);
    let forward = |x: &[f64]| integral(&tensor(x.to_vec(), &[4]), &small)?.to_vec::<f64>();
    let backward = |x: &[f64], g: &[f64]| {
        integral_backward(&tensor(g.to_vec(), &[]), &tensor(x.to_vec(), &[4]), &small)?
            .to_vec::<f64>()
    };
    gradcheck(forward, backward, &x, &GradcheckOptions::default()).unwrap();
}

/// The mmdet formulas written out naively in f64 (no max subtraction: inputs are moderate).
fn naive_kl_rows(s: &[f64], t: &[f64], bins: usize, temperature: f64, mean_bins: bool) -> Vec<f64> {
    s.chunks(bins)
        .zip(t.chunks(bins))
        .map(|(s, t)| {
            let softmax = |z: &[f64]| -> Vec<f64> {
                let e: Vec<f64> = z.iter().map(|v| (v / temperature).exp()).collect();
                let sum: f64 = e.iter().sum();
                e.iter().map(|v| v / sum).collect()
            };
            let (ps, pt) = (softmax(s), softmax(t));
            let kl: f64 = pt.iter().zip(&ps).map(|(a, b)| a * (a.ln() - b.ln())).sum();
            let c = if mean_bins { 1.0 / bins as f64 } else { 1.0 };
            c * temperature * temperature * kl
        })
        .collect()
}

#[test]
fn kd_kl_matches_the_written_out_formula_and_reductions() {
    let (rows, bins) = (6, 17);
    let mut rng = Rng::new(50);
    let s = scaled_normals(&mut rng, rows * bins, 8.0);
    let t = scaled_normals(&mut rng, rows * bins, 8.0);
    let w: Vec<f64> = (0..rows).map(|_| rng.uniform(0.0, 2.0)).collect();
    let (st, tt, wt) = (
        tensor(s.clone(), &[rows, bins]),
        tensor(t.clone(), &[rows, bins]),
        tensor(w.clone(), &[rows]),
    );
    for normalizer in [KlNormalizer::MeanOverBins, KlNormalizer::SumOverBins] {
        let raw = naive_kl_rows(&s, &t, bins, 10.0, normalizer == KlNormalizer::MeanOverBins);
        let weighted: Vec<f64> = raw.iter().zip(&w).map(|(l, w)| 0.75 * l * w).collect();
        let sum: f64 = weighted.iter().sum();
        let some_w = LossWeighting::new(Some(&wt), None);
        let cases: Vec<(KdKlConfig, LossWeighting<'_>, Vec<f64>)> = vec![
            (
                kl_cfg(10.0, normalizer, Reduction::None),
                some_w,
                weighted.clone(),
            ),
            (kl_cfg(10.0, normalizer, Reduction::Sum), some_w, vec![sum]),
            (
                kl_cfg(10.0, normalizer, Reduction::Mean),
                some_w,
                vec![sum / rows as f64],
            ),
            (
                kl_cfg(10.0, normalizer, Reduction::Mean),
                LossWeighting::new(Some(&wt), Some(4.0)),
                vec![sum / (4.0 + AVG_FACTOR_EPS)],
            ),
            (
                // avg_factor is ignored without a reduction, as in mmdet
                kl_cfg(10.0, normalizer, Reduction::None),
                LossWeighting::new(Some(&wt), Some(4.0)),
                weighted.clone(),
            ),
        ];
        for (cfg, weighting, want) in cases {
            let got = kd_kl_div(&st, &tt, weighting, &cfg).unwrap();
            assert_eq!(got.shape(), &upstream_shape(cfg.reduction, rows)[..]);
            assert_close(&format!("{cfg:?}"), &values(&got), &want, 1e-12);
        }
    }
    // Identical distributions: zero loss and zero gradient.
    let cfg = KdKlConfig::default();
    let zero = kd_kl_div(&st, &st, LossWeighting::NONE, &cfg).unwrap();
    assert!(values(&zero)[0].abs() < 1e-14);
    let g =
        kd_kl_div_backward(&tensor(vec![1.0], &[]), &st, &st, LossWeighting::NONE, &cfg).unwrap();
    assert!(values(&g).iter().all(|v| v.abs() < 1e-14));
}

#[test]
fn kd_kl_is_stable_for_large_logits() {
    // ±50 logits at T = 1: exp would overflow f32 without the max subtraction (e^50 ≈ 5e21 is fine, but
    // ±500 is not); the loss stays finite and matches f64.
    let (rows, bins) = (4, 17);
    let mut rng = Rng::new(51);
    let s: Vec<f64> = (0..rows * bins)
        .map(|_| rng.uniform(-500.0, 500.0))
        .collect();
    let t: Vec<f64> = (0..rows * bins)
        .map(|_| rng.uniform(-500.0, 500.0))
        .collect();
    let cfg = kl_cfg(1.0, KlNormalizer::MeanOverBins, Reduction::None);
    let want = values(
        &kd_kl_div(
            &tensor(s.clone(), &[rows, bins]),
            &tensor(t.clone(), &[rows, bins]),
            LossWeighting::NONE,
            &cfg,
        )
        .unwrap(),
    );
    assert!(want.iter().all(|v| v.is_finite() && *v >= 0.0), "{want:?}");
    let s32 = tensor(s, &[rows, bins]).to_dtype(DType::F32).unwrap();
    let t32 = tensor(t, &[rows, bins]).to_dtype(DType::F32).unwrap();
    let got = kd_kl_div(&s32, &t32, LossWeighting::NONE, &cfg).unwrap();
    assert_close("f32 large logits", &values(&got), &want, 1e-5);
    let grad = kd_kl_div_backward(
        &Tensor::from_vec(vec![1.0f32; rows], &[rows]).unwrap(),
        &s32,
        &t32,
        LossWeighting::NONE,
        &cfg,
    )
    .unwrap();
    assert!(values(&grad).iter().all(|v| v.is_finite()));
}

#[test]
fn dfl_matches_cross_entropy_at_integer_and_interpolated_targets() {
    let z = vec![0.3, -1.2, 2.0, 0.7, -0.4];
    let lse = z.iter().map(|v: &f64| v.exp()).sum::<f64>().ln();
    let ce = |i: usize| lse - z[i];
    let pred = tensor([z.clone(), z.clone(), z.clone()].concat(), &[3, 5]);
    let label = tensor(vec![2.0, 2.25, 3.9], &[3]);
    let cfg = DflConfig {
        reg_max: 4,
        reduction: Reduction::None,
        loss_weight: 1.0,
    };
    let got = values(&distribution_focal_loss(&pred, &label, LossWeighting::NONE, &cfg).unwrap());
    let want = [
        ce(2),
        0.75 * ce(2) + 0.25 * ce(3),
        (4.0 - 3.9) * ce(3) + (3.9 - 3.0) * ce(4),
    ];
    assert_close("dfl", &got, &want, 1e-12);
    // The gradient of the integer target is softmax − one-hot.
    let g = values(
        &distribution_focal_loss_backward(
            &tensor(vec![1.0, 0.0, 0.0], &[3]),
            &pred,
            &label,
            LossWeighting::NONE,
            &cfg,
        )
        .unwrap(),
    );
    let q: Vec<f64> = z.iter().map(|v| (v - lse).exp()).collect();
    let mut want = q.clone();
    want[2] -= 1.0;
    assert_close("dfl grad", &g[..5], &want, 1e-12);
    assert!(g[5..].iter().all(|&v| v == 0.0));
}

#[test]
fn integral_is_the_expected_bin() {
    let cfg = IntegralConfig { reg_max: 4 };
    // A near one-hot at bin 3 and a uniform row.
    let z = tensor(
        vec![-40.0, -40.0, -40.0, 40.0, -40.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        &[2, 5],
    );
    let d = values(&integral(&z, &cfg).unwrap());
    assert_close("integral", &d, &[3.0, 2.0], 1e-12);
    let err = integral(&tensor(vec![0.0; 17], &[17]), &cfg)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`logits`: expected shape [..., 5]"), "{err}");
}

#[test]
fn fused_entries_match_forward_and_backward() {
    let (rows, bins) = (9, 17);
    let mut rng = Rng::new(60);
    let s = tensor(scaled_normals(&mut rng, rows * bins, 10.0), &[rows, bins]);
    let t = tensor(scaled_normals(&mut rng, rows * bins, 10.0), &[rows, bins]);
    let w = tensor((0..rows).map(|_| rng.uniform(0.0, 1.0)).collect(), &[rows]);
    let label = tensor(dfl_targets(&mut rng, rows, 16), &[rows]);
    for dtype in [DType::F64, DType::F32, DType::BF16] {
        let tol = match dtype {
            DType::F64 => 1e-13,
            DType::F32 => 1e-6,
            _ => 1e-2,
        };
        let (s, t, w) = (
            s.to_dtype(dtype).unwrap(),
            t.to_dtype(dtype).unwrap(),
            w.to_dtype(dtype).unwrap(),
        );
        for (reduction, avg) in [
            (Reduction::Sum, None),
            (Reduction::Mean, None),
            (Reduction::Mean, Some(7.0)),
        ] {
            let weighting = LossWeighting::new(Some(&w), avg);
            let grad_out = tensor(vec![-1.5], &[]).to_dtype(dtype).unwrap();

            let cfg = KdKlConfig {
                reduction,
                ..KdKlConfig::ld()
            };
            let fused = kd_kl_div_fused(&s, &t, weighting, &cfg, -1.5).unwrap();
            let loss = kd_kl_div(&s, &t, weighting, &cfg).unwrap();
            let grad = kd_kl_div_backward(&grad_out, &s, &t, weighting, &cfg).unwrap();
            assert_eq!((fused.loss.shape(), fused.loss.dtype()), (&[][..], dtype));
            assert_eq!(fused.grad.dtype(), dtype);
            assert_close("kl fused loss", &values(&fused.loss), &values(&loss), tol);
            assert_close("kl fused grad", &values(&fused.grad), &values(&grad), tol);

            let cfg = DflConfig {
                reduction,
                ..DflConfig::gfl()
            };
            let fused = distribution_focal_loss_fused(&s, &label, weighting, &cfg, -1.5).unwrap();
            let loss = distribution_focal_loss(&s, &label, weighting, &cfg).unwrap();
            let grad =
                distribution_focal_loss_backward(&grad_out, &s, &label, weighting, &cfg).unwrap();
            assert_close("dfl fused loss", &values(&fused.loss), &values(&loss), tol);
            assert_close("dfl fused grad", &values(&fused.grad), &values(&grad), tol);
        }
    }
}

#[test]
fn half_storage_matches_f32_compute_on_cpu() {
    let (rows, bins) = (20, 17);
    let mut rng = Rng::new(70);
    let s = scaled_normals(&mut rng, rows * bins, 20.0);
    let t = scaled_normals(&mut rng, rows * bins, 20.0);
    let label = tensor(dfl_targets(&mut rng, rows, 16), &[rows]);
    let cfg = KdKlConfig {
        reduction: Reduction::None,
        ..KdKlConfig::default()
    };
    let dfl = DflConfig {
        reduction: Reduction::None,
        ..DflConfig::default()
    };
    let icfg = IntegralConfig::default();
    let g: Vec<f64> = rng.normal_vec(rows);
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        // Reference: f64 on the inputs as rounded to `dtype`.
        let round = |v: &[f64], shape: &[usize]| tensor(v.to_vec(), shape).to_dtype(dtype).unwrap();
        let (sd, td, gd) = (
            round(&s, &[rows, bins]),
            round(&t, &[rows, bins]),
            round(&g, &[rows]),
        );
        let wide = |x: &Tensor| x.to_dtype(DType::F64).unwrap();
        let tol = if dtype == DType::F32 { 1e-5 } else { 1e-2 };
        let check = |what: &str, got: Tensor, want: Tensor| {
            assert_eq!(got.dtype(), dtype, "{what}");
            assert_close(
                &format!("{what} {dtype}"),
                &values(&got),
                &values(&want),
                tol,
            );
        };
        let none = LossWeighting::NONE;
        check(
            "kl",
            kd_kl_div(&sd, &td, none, &cfg).unwrap(),
            kd_kl_div(&wide(&sd), &wide(&td), none, &cfg).unwrap(),
        );
        check(
            "kl grad",
            kd_kl_div_backward(&gd, &sd, &td, none, &cfg).unwrap(),
            kd_kl_div_backward(&wide(&gd), &wide(&sd), &wide(&td), none, &cfg).unwrap(),
        );
        check(
            "dfl",
            distribution_focal_loss(&sd, &label, none, &dfl).unwrap(),
            distribution_focal_loss(&wide(&sd), &label, none, &dfl).unwrap(),
        );
        check(
            "dfl grad",
            distribution_focal_loss_backward(&gd, &sd, &label, none, &dfl).unwrap(),
            distribution_focal_loss_backward(&wide(&gd), &wide(&sd), &label, none, &dfl).unwrap(),
        );
        check(
            "integral",
            integral(&sd, &icfg).unwrap(),
            integral(&wide(&sd), &icfg).unwrap(),
        );
        check(
            "integral grad",
            integral_backward(&gd, &sd, &icfg).unwrap(),
            integral_backward(&wide(&gd), &wide(&sd), &icfg).unwrap(),
        );
    }
}

#[test]
fn empty_rows_give_empty_or_reduced_results_without_nan_except_plain_mean() {
    let s = tensor(vec![], &[0, 17]);
    let label = tensor(vec![], &[0]);
    let grad1 = tensor(vec![1.0], &[]);
    let cases = [
        (Reduction::None, None, None),
        (Reduction::Sum, None, Some(0.0)),
        (Reduction::Mean, Some(3.0), Some(0.0)),
        (Reduction::Mean, None, Some(f64::NAN)),
    ];
    for (reduction, avg, want) in cases {
        let weighting = LossWeighting::new(None, avg);
        let kl = KdKlConfig {
            reduction,
            ..KdKlConfig::default()
        };
        let dfl = DflConfig {
            reduction,
            ..DflConfig::default()
        };
        for loss in [
            kd_kl_div(&s, &s, weighting, &kl).unwrap(),
            distribution_focal_loss(&s, &label, weighting, &dfl).unwrap(),
        ] {
            match want {
                None => assert_eq!(loss.shape(), &[0]),
                Some(w) if w.is_nan() => assert!(values(&loss)[0].is_nan()),
                Some(w) => assert_eq!(values(&loss), vec![w]),
            }
        }
        let g = if reduction == Reduction::None {
            tensor(vec![], &[0])
        } else {
            grad1.try_clone().unwrap()
        };
        assert_eq!(
            kd_kl_div_backward(&g, &s, &s, weighting, &kl)
                .unwrap()
                .shape(),
            &[0, 17]
        );
        assert_eq!(
            distribution_focal_loss_backward(&g, &s, &label, weighting, &dfl)
                .unwrap()
                .shape(),
            &[0, 17]
        );
        if reduction != Reduction::None {
            let fused = kd_kl_div_fused(&s, &s, weighting, &kl, 1.0).unwrap();
            assert_eq!(fused.grad.shape(), &[0, 17]);
        }
    }
    let empty = tensor(vec![], &[0, 3, 17]);
    assert_eq!(
        integral(&empty, &IntegralConfig::default())
            .unwrap()
            .shape(),
        &[0, 3]
    );
    let g =
        integral_backward(&tensor(vec![], &[0, 3]), &empty, &IntegralConfig::default()).unwrap();
    assert_eq!(g.shape(), &[0, 3, 17]);
}

#[test]
fn dfl_targets_are_validated_in_the_compute_precision() {
    let pred64 = tensor(vec![0.0; 3 * 17], &[3, 17]);
    let pred32 = pred64.to_dtype(DType::F32).unwrap();
    let cfg = DflConfig::default();
    let run = |pred: &Tensor, labels: Vec<f64>| {
        distribution_focal_loss(pred, &tensor(labels, &[3]), LossWeighting::NONE, &cfg)
    };
    // Just below the last bin: fine in f64, rounds to 16 in f32.
    assert!(run(&pred64, vec![0.0, 3.5, 16.0 - 1e-9]).is_ok());
    let err = run(&pred32, vec![0.0, 3.5, 16.0 - 1e-9])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("element 2") && err.contains("rounds to 16 in f32"),
        "{err}"
    );
    assert!(run(&pred32, vec![0.0, 3.5, 15.99999]).is_ok());
    for (labels, expected) in [
        (
            vec![0.0, 16.0, 1.0],
            "element 1 is 16: must lie in [0, reg_max = 16)",
        ),
        (vec![-0.5, 1.0, 1.0], "element 0 is -0.5"),
        (vec![0.0, f64::NAN, 1.0], "must be finite"),
        (vec![0.0, 1.0, f64::INFINITY], "must be finite"),
    ] {
        let err = run(&pred64, labels).unwrap_err().to_string();
        assert!(err.contains("`label`") && err.contains(expected), "{err}");
    }
}

/// Every validation rule, each with the substring its message must contain.
#[test]
fn bad_inputs_are_clear_errors() {
    let s = tensor(vec![0.5; 4 * 17], &[4, 17]);
    let t = tensor(vec![0.25; 4 * 17], &[4, 17]);
    let w = tensor(vec![1.0; 4], &[4]);
    let kl = KdKlConfig::default();
    let none = LossWeighting::NONE;
    let err = |r: Result<Tensor>| r.unwrap_err().to_string();
    let cases: Vec<(String, &str)> = vec![
        (
            err(kd_kl_div(&tensor(vec![0.0; 17], &[17]), &t, none, &kl)),
            "`student`: expected shape [R, B]",
        ),
        (
            err(kd_kl_div(&tensor(vec![], &[4, 0]), &t, none, &kl)),
            "with B >= 1",
        ),
        (
            err(kd_kl_div(
                &s,
                &tensor(vec![0.0; 4 * 16], &[4, 16]),
                none,
                &kl,
            )),
            "`teacher`: expected shape [4, 17]",
        ),
        (
            err(kd_kl_div(&s, &t.to_dtype(DType::F32).unwrap(), none, &kl)),
            "`teacher`: expected dtype f64, got f32",
        ),
        (
            err(kd_kl_div(
                &tensor(vec![0.0; 4], &[2, 2]).to_dtype(DType::I64).unwrap(),
                &tensor(vec![0.0; 4], &[2, 2]).to_dtype(DType::I64).unwrap(),
                none,
                &kl,
            )),
            "`student`: expected dtype a float dtype",
        ),
        (
            err(kd_kl_div(
                &s,
                &t,
                none,
                &KdKlConfig {
                    temperature: 0.0,
                    ..kl.clone()
                },
            )),
            "`temperature`: must be finite and > 0",
        ),
        (
            err(kd_kl_div(
                &s,
                &t,
                none,
                &KdKlConfig {
                    temperature: f64::NAN,
                    ..kl.clone()
                },
            )),
            "`temperature`",
        ),
        (
            err(kd_kl_div(
                &s,
                &t,
                none,
                &KdKlConfig {
                    loss_weight: f64::INFINITY,
                    ..kl.clone()
                },
            )),
            "`loss_weight`: must be finite",
        ),
        (
            err(kd_kl_div(
                &s,
                &t,
                LossWeighting::new(Some(&tensor(vec![1.0; 3], &[3])), None),
                &kl,
            )),
            "`weight`: expected shape [4]",
        ),
        (
            err(kd_kl_div(
                &s,
                &t,
                LossWeighting::new(Some(&w.to_dtype(DType::F32).unwrap()), None),
                &kl,
            )),
            "`weight`: expected dtype f64, got f32",
        ),
        (
            err(kd_kl_div(&s, &t, LossWeighting::new(None, Some(-1.0)), &kl)),
            "`avg_factor`: must be finite and >= 0",
        ),
        (
            err(kd_kl_div(
                &s,
                &t,
                LossWeighting::new(None, Some(f64::NAN)),
                &kl,
            )),
            "`avg_factor`",
        ),
        (
            err(kd_kl_div(
                &s,
                &t,
                LossWeighting::new(None, Some(2.0)),
                &KdKlConfig {
                    reduction: Reduction::Sum,
                    ..kl.clone()
                },
            )),
            "cannot be used with reduction `sum`",
        ),
        (
            err(kd_kl_div_fused(
                &s,
                &t,
                none,
                &KdKlConfig {
                    reduction: Reduction::None,
                    ..kl.clone()
                },
                1.0,
            )
            .map(|f| f.loss)),
            "needs reduction `sum` or `mean`",
        ),
        (
            err(kd_kl_div_fused(&s, &t, none, &kl, f64::NAN).map(|f| f.loss)),
            "`grad_scale`: must be finite",
        ),
        // backward: the upstream gradient's shape, dtype
        (
            err(kd_kl_div_backward(
                &tensor(vec![1.0; 4], &[4]),
                &s,
                &t,
                none,
                &kl,
            )),
            "`grad_out`: expected shape [] or [1] (a scalar, reduction `mean`)",
        ),
        (
            err(kd_kl_div_backward(
                &tensor(vec![1.0], &[]),
                &s,
                &t,
                none,
                &KdKlConfig {
                    reduction: Reduction::None,
                    ..kl.clone()
                },
            )),
            "`grad_out`: expected shape [4] (one per row",
        ),
        (
            err(kd_kl_div_backward(
                &tensor(vec![1.0], &[1]).to_dtype(DType::F32).unwrap(),
                &s,
                &t,
                none,
                &kl,
            )),
            "`grad_out`: expected dtype f64, got f32",
        ),
        // DFL
        (
            err(distribution_focal_loss(
                &tensor(vec![0.0; 4 * 8], &[4, 8]),
                &w,
                none,
                &DflConfig::default(),
            )),
            "`pred`: expected shape [N, 17] (samples, reg_max + 1 bins)",
        ),
        (
            err(distribution_focal_loss(
                &s,
                &tensor(vec![1.0; 3], &[3]),
                none,
                &DflConfig::default(),
            )),
            "`label`: expected shape [4]",
        ),
        (
            err(distribution_focal_loss(
                &s,
                &w.to_dtype(DType::I64).unwrap(),
                none,
                &DflConfig::default(),
            )),
            "`label`: expected dtype a float dtype",
        ),
        (
            err(distribution_focal_loss(
                &tensor(vec![0.0; 4], &[4, 1]),
                &w,
                none,
                &DflConfig {
                    reg_max: 0,
                    ..DflConfig::default()
                },
            )),
            "`reg_max`: must be >= 1",
        ),
        // Integral
        (
            err(integral(
                &tensor(vec![0.0; 16], &[16]),
                &IntegralConfig::default(),
            )),
            "`logits`: expected shape [..., 17]",
        ),
        (
            err(integral_backward(
                &tensor(vec![0.0; 3], &[3]),
                &s,
                &IntegralConfig::default(),
            )),
            "`grad_out`: expected shape [4]",
        ),
        (
            err(integral_backward(
                &w.to_dtype(DType::F32).unwrap(),
                &s,
                &IntegralConfig::default(),
            )),
            "`grad_out`: expected dtype f64, got f32",
        ),
    ];
    for (message, expected) in cases {
        assert!(
            message.contains(expected),
            "`{message}` does not mention `{expected}`"
        );
    }

    // Caller-provided outputs must have the right shape, dtype and device.
    let mut wrong = Tensor::zeros(&[4, 16], DType::F64, &Device::Cpu).unwrap();
    let e = kd_kl_div_backward_into(&tensor(vec![1.0], &[]), &s, &t, none, &kl, &mut wrong)
        .unwrap_err();
    assert!(
        e.to_string().contains("`grad`: expected shape [4, 17]"),
        "{e}"
    );
    let mut wrong = Tensor::zeros(&[4, 17], DType::F32, &Device::Cpu).unwrap();
    let e = kd_kl_div_fused_into(&s, &t, none, &kl, 1.0, &mut wrong).unwrap_err();
    assert!(
        e.to_string()
            .contains("expected f64 on cpu, got f32 on cpu"),
        "{e}"
    );
    let mut wrong = Tensor::zeros(&[3], DType::F64, &Device::Cpu).unwrap();
    let e = integral_into(&s, &IntegralConfig::default(), &mut wrong).unwrap_err();
    assert!(e.to_string().contains("`out`: expected shape [4]"), "{e}");
}

#[test]
fn into_variants_write_the_same_values() {
    let mut rng = Rng::new(80);
    let s = tensor(scaled_normals(&mut rng, 5 * 17, 5.0), &[5, 17]);
    let t = tensor(scaled_normals(&mut rng, 5 * 17, 5.0), &[5, 17]);
    let label = tensor(dfl_targets(&mut rng, 5, 16), &[5]);
    let g = tensor(vec![0.5], &[]);
    let none = LossWeighting::NONE;
    let poisoned = || tensor(vec![f64::NAN; 5 * 17], &[5, 17]);

    let kl = KdKlConfig::default();
    let mut out = poisoned();
    kd_kl_div_backward_into(&g, &s, &t, none, &kl, &mut out).unwrap();
    assert_eq!(
        values(&out),
        values(&kd_kl_div_backward(&g, &s, &t, none, &kl).unwrap())
    );
    let mut out = poisoned();
    let loss = kd_kl_div_fused_into(&s, &t, none, &kl, 0.5, &mut out).unwrap();
    let fused = kd_kl_div_fused(&s, &t, none, &kl, 0.5).unwrap();
    assert_eq!(
        (values(&out), values(&loss)),
        (values(&fused.grad), values(&fused.loss))
    );

    let dfl = DflConfig::default();
    let mut out = poisoned();
    distribution_focal_loss_backward_into(&g, &s, &label, none, &dfl, &mut out).unwrap();
    assert_eq!(
        values(&out),
        values(&distribution_focal_loss_backward(&g, &s, &label, none, &dfl).unwrap())
    );
    let mut out = poisoned();
    let loss = distribution_focal_loss_fused_into(&s, &label, none, &dfl, 0.5, &mut out).unwrap();
    let fused = distribution_focal_loss_fused(&s, &label, none, &dfl, 0.5).unwrap();
    assert_eq!(
        (values(&out), values(&loss)),
        (values(&fused.grad), values(&fused.loss))
    );

    let icfg = IntegralConfig::default();
    let mut d = tensor(vec![f64::NAN; 5], &[5]);
    integral_into(&s, &icfg, &mut d).unwrap();
    assert_eq!(values(&d), values(&integral(&s, &icfg).unwrap()));
    let up = tensor(vec![1.0, -2.0, 0.5, 3.0, 0.0], &[5]);
    let mut out = poisoned();
    integral_backward_into(&up, &s, &icfg, &mut out).unwrap();
    assert_eq!(
        values(&out),
        values(&integral_backward(&up, &s, &icfg).unwrap())
    );
}

#[test]
fn config_defaults_are_the_official_values() {
    let kl = KdKlConfig::default();
    assert_eq!(
        (kl.temperature, kl.normalizer, kl.reduction, kl.loss_weight),
        (10.0, KlNormalizer::MeanOverBins, Reduction::Mean, 1.0)
    );
    assert_eq!(KdKlConfig::ld().loss_weight, 0.25);
    let dfl = DflConfig::default();
    assert_eq!(
        (dfl.reg_max, dfl.reduction, dfl.loss_weight),
        (16, Reduction::Mean, 1.0)
    );
    assert_eq!(DflConfig::gfl().loss_weight, 0.25);
    assert_eq!(IntegralConfig::default().reg_max, 16);
    for r in [Reduction::None, Reduction::Sum, Reduction::Mean] {
        assert_eq!(Reduction::from_name(r.name()), Some(r));
    }
    for n in [KlNormalizer::MeanOverBins, KlNormalizer::SumOverBins] {
        assert_eq!(KlNormalizer::from_name(n.name()), Some(n));
    }
    assert_eq!(Reduction::from_name("batchmean"), None);
}
