//! Gradchecks, cross-checks against direct formulas, validation, empty inputs and non-finite propagation
//! on the CPU. PyTorch fixtures and CUDA parity live in tests/prototype.rs.

use super::*;
use crate::autograd::{gradcheck, GradcheckOptions};
use crate::ops::similarity::{cosine_cross, CosineConfig};
use crate::testing::{assert_close, Rng};

fn tensor(data: Vec<f64>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(data, shape).unwrap()
}

fn labels(v: &[i64]) -> Tensor {
    Tensor::from_vec(v.to_vec(), &[v.len()]).unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_vec::<f64>().unwrap()
}

fn random(seed: u64, shape: &[usize]) -> Vec<f64> {
    Rng::new(seed).normal_vec(shape.iter().product())
}

fn config(temperature: f64, output: AssignmentOutput) -> SoftAssignConfig {
    SoftAssignConfig {
        temperature,
        output,
    }
}

const OUTPUTS: [AssignmentOutput; 2] = [
    AssignmentOutput::Probabilities,
    AssignmentOutput::LogProbabilities,
];

/// `softmax_k(−‖x_i − p_k‖²/τ)` (or its log) by direct differences, in f64.
fn direct_assignment(x: &[f64], p: &[f64], d: usize, cfg: &SoftAssignConfig) -> Vec<f64> {
    let (n, k) = (x.len() / d.max(1), p.len() / d.max(1));
    let mut out = Vec::with_capacity(n * k);
    for i in 0..n {
        let z: Vec<f64> = (0..k)
            .map(|j| {
                let d2: f64 = (0..d).map(|c| (x[i * d + c] - p[j * d + c]).powi(2)).sum();
                -d2 / cfg.temperature
            })
            .collect();
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = z.iter().map(|v| (v - m).exp()).sum();
        out.extend(z.iter().map(|v| match cfg.output {
            AssignmentOutput::Probabilities => (v - m).exp() / sum,
            AssignmentOutput::LogProbabilities => v - m - sum.ln(),
        }));
    }
    out
}

// ---------------------------------------------------------------------------------------------------------
// Gradchecks (f64, PyTorch tolerances)

#[test]
fn gradcheck_soft_assignment_x_and_prototypes() {
    let (n, k, d) = (4, 5, 3);
    for (seed, tau) in [(1, 0.7), (2, 2.0), (3, 9.0)] {
        for output in OUTPUTS {
            let cfg = config(tau, output);
            let xp = random(seed, &[n + k, d]);
            let split = |v: &[f64]| {
                (
                    tensor(v[..n * d].to_vec(), &[n, d]),
                    tensor(v[n * d..].to_vec(), &[k, d]),
                )
            };
            let report = gradcheck(
                |v| {
                    let (x, p) = split(v);
                    Ok(values(&soft_assignment(&x, &p, &cfg)?))
                },
                |v, g| {
                    let (x, p) = split(v);
                    let out = soft_assignment(&x, &p, &cfg)?;
                    let g = tensor(g.to_vec(), &[n, k]);
                    let (dx, dp) = soft_assignment_backward(&x, &p, &out, &g, &cfg, true)?;
                    let mut flat = values(&dx);
                    flat.extend(values(&dp.unwrap()));
                    Ok(flat)
                },
                &xp,
                &GradcheckOptions::default(),
            )
            .unwrap_or_else(|e| panic!("tau={tau} {output:?}: {e}"));
            assert!(report.nonzero_entries > n * k, "tau={tau} {output:?}");
        }
    }
}

#[test]
fn gradient_without_prototypes_matches_and_skips_dp() {
    let (x, p) = (
        tensor(random(4, &[6, 4]), &[6, 4]),
        tensor(random(5, &[3, 4]), &[3, 4]),
    );
    let cfg = config(3.0, AssignmentOutput::Probabilities);
    let out = soft_assignment(&x, &p, &cfg).unwrap();
    let g = tensor(random(6, &[6, 3]), &[6, 3]);
    let (dx, dp) = soft_assignment_backward(&x, &p, &out, &g, &cfg, true).unwrap();
    let (dx_only, none) = soft_assignment_backward(&x, &p, &out, &g, &cfg, false).unwrap();
    assert!(none.is_none());
    assert_eq!(values(&dx), values(&dx_only));
    assert_eq!(dp.unwrap().shape(), &[3, 4]);
}

/// The expansions `dX = 2(diag(G1)X − GP)`, `dP = 2(diag(Gᵀ1)P − GᵀX)` against the per-pair sums
/// `dx_i = 2Σ_k G_ik(x_i − p_k)`, `dp_k = −2Σ_i G_ik(x_i − p_k)` with `G = −a(da − Σa·da)/τ`.
#[test]
fn backward_matches_the_per_pair_formula() {
    let (n, k, d, tau) = (5, 4, 3, 1.5);
    let (xv, pv, gv) = (random(7, &[n, d]), random(8, &[k, d]), random(9, &[n, k]));
    let cfg = config(tau, AssignmentOutput::Probabilities);
    let (x, p) = (tensor(xv.clone(), &[n, d]), tensor(pv.clone(), &[k, d]));
    let a = values(&soft_assignment(&x, &p, &cfg).unwrap());
    let mut dx = vec![0.0; n * d];
    let mut dp = vec![0.0; k * d];
    for i in 0..n {
        let dot: f64 = (0..k).map(|j| a[i * k + j] * gv[i * k + j]).sum();
        for j in 0..k {
            let g = -a[i * k + j] * (gv[i * k + j] - dot) / tau;
            for c in 0..d {
                let diff = xv[i * d + c] - pv[j * d + c];
                dx[i * d + c] += 2.0 * g * diff;
                dp[j * d + c] -= 2.0 * g * diff;
            }
        }
    }
    let out = tensor(a, &[n, k]);
    let (gx, gp) =
        soft_assignment_backward(&x, &p, &out, &tensor(gv, &[n, k]), &cfg, true).unwrap();
    assert_close("dx", &values(&gx), &dx, 1e-12);
    assert_close("dp", &values(&gp.unwrap()), &dp, 1e-12);
}

/// A rounded output (rows that do not sum to 1 exactly, as half storage gives) barely moves the gradient
/// of points far from the prototypes, thanks to the renormalisation: without it, `Σ_k G_ik` would be the
/// rounding error and `dx` would carry it times `‖x_i‖`.
#[test]
fn backward_is_robust_to_a_rounded_output() {
    let (n, k, d) = (6, 5, 4);
    let xv: Vec<f64> = random(50, &[n, d]).iter().map(|v| v + 40.0).collect();
    let pv: Vec<f64> = random(51, &[k, d]).iter().map(|v| 0.3 * v).collect();
    let (x, p) = (tensor(xv, &[n, d]), tensor(pv, &[k, d]));
    let g = tensor(random(52, &[n, k]), &[n, k]);
    for output in OUTPUTS {
        let cfg = config(20.0, output);
        let exact = soft_assignment(&x, &p, &cfg).unwrap();
        let rounded = exact
            .to_dtype(DType::F16)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap();
        if output == AssignmentOutput::Probabilities {
            let off: f64 = values(&rounded)
                .chunks(k)
                .map(|r| (r.iter().sum::<f64>() - 1.0).abs())
                .sum();
            assert!(
                off > 1e-6,
                "the rounding must actually break the normalisation"
            );
        }
        let (want, want_p) = soft_assignment_backward(&x, &p, &exact, &g, &cfg, true).unwrap();
        let (got, got_p) = soft_assignment_backward(&x, &p, &rounded, &g, &cfg, true).unwrap();
        assert_close(
            &format!("dx {output:?}"),
            &values(&got),
            &values(&want),
            1e-3,
        );
        assert_close(
            &format!("dp {output:?}"),
            &values(&got_p.unwrap()),
            &values(&want_p.unwrap()),
            1e-3,
        );
    }
}

// ---------------------------------------------------------------------------------------------------------
// Forward against direct formulas; edge cases

#[test]
fn soft_assignment_matches_direct_differences() {
    let (n, k, d) = (7, 6, 5);
    let (xv, pv) = (random(10, &[n, d]), random(11, &[k, d]));
    let (x, p) = (tensor(xv.clone(), &[n, d]), tensor(pv.clone(), &[k, d]));
    for tau in [0.5, 1.0, 4.0] {
        for output in OUTPUTS {
            let cfg = config(tau, output);
            let got = values(&soft_assignment(&x, &p, &cfg).unwrap());
            assert_close(
                &format!("tau={tau} {output:?}"),
                &got,
                &direct_assignment(&xv, &pv, d, &cfg),
                1e-12,
            );
        }
        let prob = values(&soft_assignment(&x, &p, &config(tau, OUTPUTS[0])).unwrap());
        for row in prob.chunks(k) {
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-14);
        }
    }
}

#[test]
fn large_logits_are_stable() {
    // Points ~100 away from every prototype: logits ≈ −1e4, far below where exp underflows (−745 in f64,
    // −104 in f32); the max-subtraction keeps the rows exact.
    let (n, k, d) = (4, 5, 3);
    let xv: Vec<f64> = random(12, &[n, d]).iter().map(|v| v + 60.0).collect();
    let pv: Vec<f64> = random(13, &[k, d]).iter().map(|v| v * 3.0).collect();
    let (x, p) = (tensor(xv.clone(), &[n, d]), tensor(pv.clone(), &[k, d]));
    for output in OUTPUTS {
        let cfg = config(1.0, output);
        let want = direct_assignment(&xv, &pv, d, &cfg);
        for dtype in [DType::F64, DType::F32] {
            let got = soft_assignment(
                &x.to_dtype(dtype).unwrap(),
                &p.to_dtype(dtype).unwrap(),
                &cfg,
            )
            .unwrap();
            let got = values(&got);
            assert!(
                got.iter().all(|v| v.is_finite()),
                "{output:?} {dtype}: {got:?}"
            );
            if output == AssignmentOutput::Probabilities {
                for row in got.chunks(k) {
                    assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-5, "{dtype}");
                }
            }
            // f32: the expansion's cancellation, ~1e-7·‖x‖² ≈ 1e-3 absolute in a logit of 1e4.
            let tol = if dtype == DType::F64 { 1e-9 } else { 1e-2 };
            assert_close(&format!("{output:?} {dtype}"), &got, &want, tol);
        }
    }
    // The log output stays finite and exact where probabilities underflow to 0.
    let log = values(&soft_assignment(&x, &p, &config(1.0, OUTPUTS[1])).unwrap());
    assert!(
        log.iter().any(|&v| v < -800.0),
        "some log a below f64's exp range"
    );
}

#[test]
fn single_prototype_and_empty_inputs() {
    // K = 1: every row is assigned with probability 1 (log 0) and the gradient is exactly 0.
    let x = tensor(random(14, &[3, 4]), &[3, 4]);
    let p = tensor(random(15, &[1, 4]), &[1, 4]);
    for output in OUTPUTS {
        let cfg = config(2.0, output);
        let out = soft_assignment(&x, &p, &cfg).unwrap();
        let want = if output == AssignmentOutput::Probabilities {
            1.0
        } else {
            0.0
        };
        assert_eq!(values(&out), vec![want; 3]);
        let g = tensor(random(16, &[3, 1]), &[3, 1]);
        let (dx, dp) = soft_assignment_backward(&x, &p, &out, &g, &cfg, true).unwrap();
        assert!(values(&dx).iter().all(|&v| v == 0.0), "{output:?}");
        assert!(values(&dp.unwrap()).iter().all(|&v| v == 0.0), "{output:?}");
    }

    let cfg = SoftAssignConfig::default();
    let none = tensor(vec![], &[0, 4]);
    let out = soft_assignment(&none, &p, &cfg).unwrap();
    assert_eq!(out.shape(), &[0, 1]);
    let (dx, dp) =
        soft_assignment_backward(&none, &p, &out, &tensor(vec![], &[0, 1]), &cfg, true).unwrap();
    assert_eq!(
        (dx.shape(), dp.as_ref().unwrap().shape()),
        (&[0, 4][..], &[1, 4][..])
    );
    assert!(values(&dp.unwrap()).iter().all(|&v| v == 0.0));

    let no_prototypes = tensor(vec![], &[0, 4]);
    let out = soft_assignment(&x, &no_prototypes, &cfg).unwrap();
    assert_eq!(out.shape(), &[3, 0]);
    let g = tensor(vec![], &[3, 0]);
    let (dx, dp) = soft_assignment_backward(&x, &no_prototypes, &out, &g, &cfg, true).unwrap();
    assert_eq!(
        (dx.shape(), dp.unwrap().shape()),
        (&[3, 4][..], &[0, 4][..])
    );
    assert!(values(&dx).iter().all(|&v| v == 0.0));

    // D = 0: every distance is 0, every row uniform.
    let (xf, pf) = (tensor(vec![], &[2, 0]), tensor(vec![], &[4, 0]));
    assert_eq!(
        values(&soft_assignment(&xf, &pf, &cfg).unwrap()),
        vec![0.25; 8]
    );
}

#[test]
fn coincident_point_is_assigned_without_nan() {
    // x equals p_0: D² = 0 exactly (or clamped rounding noise); finite results and gradients.
    let pv = random(17, &[3, 4]);
    let x = tensor(pv[..4].to_vec(), &[1, 4]);
    let p = tensor(pv.clone(), &[3, 4]);
    let cfg = config(8.0, AssignmentOutput::Probabilities);
    let out = soft_assignment(&x, &p, &cfg).unwrap();
    assert_close(
        "coincident",
        &values(&out),
        &direct_assignment(&pv[..4], &pv, 4, &cfg),
        1e-12,
    );
    let g = tensor(vec![1.0, -0.5, 0.25], &[1, 3]);
    let (dx, dp) = soft_assignment_backward(&x, &p, &out, &g, &cfg, true).unwrap();
    assert!(values(&dx)
        .iter()
        .chain(&values(&dp.unwrap()))
        .all(|v| v.is_finite()));
}

#[test]
fn into_variant_matches_and_checks_out() {
    let x = tensor(random(18, &[4, 3]), &[4, 3]);
    let p = tensor(random(19, &[2, 3]), &[2, 3]);
    let cfg = config(1.5, AssignmentOutput::LogProbabilities);
    let mut out = tensor(vec![f64::NAN; 8], &[4, 2]);
    soft_assignment_into(&x, &p, &cfg, &mut out).unwrap();
    assert_eq!(
        values(&out),
        values(&soft_assignment(&x, &p, &cfg).unwrap())
    );
    let mut wrong_shape = tensor(vec![0.0; 8], &[2, 4]);
    let err = soft_assignment_into(&x, &p, &cfg, &mut wrong_shape)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`out`: expected shape [4, 2]"), "{err}");
    let mut wrong_dtype = Tensor::zeros(&[4, 2], DType::F32, &Device::Cpu).unwrap();
    let err = soft_assignment_into(&x, &p, &cfg, &mut wrong_dtype)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`out`: expected f64"), "{err}");
}

#[test]
fn half_storage_matches_f64_on_the_rounded_inputs() {
    let (n, k, d) = (9, 7, 6);
    let (xv, pv, gv) = (
        random(20, &[n, d]),
        random(21, &[k, d]),
        random(22, &[n, k]),
    );
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let tol = if dtype == DType::F32 { 1e-5 } else { 1e-2 };
        let x = tensor(xv.clone(), &[n, d]).to_dtype(dtype).unwrap();
        let p = tensor(pv.clone(), &[k, d]).to_dtype(dtype).unwrap();
        let g = tensor(gv.clone(), &[n, k]).to_dtype(dtype).unwrap();
        let wide = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        for output in OUTPUTS {
            let cfg = config(d as f64, output);
            let got = soft_assignment(&x, &p, &cfg).unwrap();
            assert_eq!(got.dtype(), dtype);
            let want = soft_assignment(&wide(&x), &wide(&p), &cfg).unwrap();
            assert_close(
                &format!("forward {dtype} {output:?}"),
                &values(&got),
                &values(&want),
                tol,
            );
            // Both backward passes read the same (rounded) forward output.
            let (dx, dp) = soft_assignment_backward(&x, &p, &got, &g, &cfg, true).unwrap();
            let (wx, wp) =
                soft_assignment_backward(&wide(&x), &wide(&p), &wide(&got), &wide(&g), &cfg, true)
                    .unwrap();
            assert_eq!((dx.dtype(), dp.as_ref().unwrap().dtype()), (dtype, dtype));
            let what = format!("{dtype} {output:?}");
            assert_close(&format!("dx {what}"), &values(&dx), &values(&wx), tol);
            assert_close(
                &format!("dp {what}"),
                &values(&dp.unwrap()),
                &values(&wp.unwrap()),
                tol,
            );
        }
    }
}

#[test]
fn results_are_deterministic() {
    let x = tensor(random(23, &[60, 33]), &[60, 33])
        .to_dtype(DType::F32)
        .unwrap();
    let p = tensor(random(24, &[41, 33]), &[41, 33])
        .to_dtype(DType::F32)
        .unwrap();
    let g = tensor(random(25, &[60, 41]), &[60, 41])
        .to_dtype(DType::F32)
        .unwrap();
    let cfg = config(30.0, AssignmentOutput::Probabilities);
    let bits = |t: &Tensor| -> Vec<u32> {
        t.as_slice::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    };
    let out = soft_assignment(&x, &p, &cfg).unwrap();
    let (dx, dp) = soft_assignment_backward(&x, &p, &out, &g, &cfg, true).unwrap();
    let dp = dp.unwrap();
    for _ in 0..3 {
        let again = soft_assignment(&x, &p, &cfg).unwrap();
        assert_eq!(bits(&out), bits(&again));
        let (dx2, dp2) = soft_assignment_backward(&x, &p, &again, &g, &cfg, true).unwrap();
        assert_eq!(bits(&dx), bits(&dx2));
        assert_eq!(bits(&dp), bits(&dp2.unwrap()));
    }
}

#[test]
fn non_finite_values_poison_their_rows() {
    let mut xv = random(26, &[3, 4]);
    xv[5] = f64::NAN; // row 1
    let x = tensor(xv, &[3, 4]);
    let p = tensor(random(27, &[5, 4]), &[5, 4]);
    for output in OUTPUTS {
        let cfg = config(2.0, output);
        let out = values(&soft_assignment(&x, &p, &cfg).unwrap());
        assert!(out[5..10].iter().all(|v| v.is_nan()), "{output:?}: {out:?}");
        assert!(out[..5].iter().chain(&out[10..]).all(|v| v.is_finite()));
    }
    // An infinite point is at infinite distance from everything: NaN row (∞ − ∞), never a finite guess.
    let mut xv = random(28, &[2, 4]);
    xv[0] = f64::INFINITY;
    let out = values(&soft_assignment(&tensor(xv, &[2, 4]), &p, &Default::default()).unwrap());
    assert!(out[..5].iter().all(|v| v.is_nan()), "{out:?}");
}

// ---------------------------------------------------------------------------------------------------------
// Max-cosine match and robustness weights

/// Direct reference: the cosine matrix from the similarity ops, masked to each row's class, first maximum.
fn direct_match(
    x: &Tensor,
    row_labels: &[i64],
    p: &Tensor,
    proto_labels: &[i64],
) -> (Vec<f64>, Vec<i64>) {
    let k = proto_labels.len();
    let cos = if k == 0 {
        vec![]
    } else {
        values(&cosine_cross(x, p, &CosineConfig::default()).unwrap())
    };
    row_labels
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let mut best = (f64::NAN, -1i64);
            for j in 0..k {
                if proto_labels[j] == c && (best.1 < 0 || cos[i * k + j] > best.0) {
                    best = (cos[i * k + j], j as i64);
                }
            }
            best
        })
        .unzip()
}

fn assert_same_with_nan(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if w.is_nan() {
            assert!(g.is_nan(), "{what}[{i}]: {g} where NaN was expected");
        } else {
            assert!((g - w).abs() <= tol, "{what}[{i}]: {g} vs {w}");
        }
    }
}

#[test]
fn max_cosine_matches_the_masked_maximum() {
    let (n, k, d) = (12, 9, 5);
    let x = tensor(random(30, &[n, d]), &[n, d]);
    let p = tensor(random(31, &[k, d]), &[k, d]);
    // Class 3 has no prototype; class 0 one; classes 1 and 2 several, not contiguous.
    let proto_labels = [1, 2, 0, 1, 2, 1, 4, 2, 1];
    let row_labels = [0, 1, 2, 3, 4, 1, 2, 3, 0, 4, 1, 2];
    let cfg = MaxCosineConfig {
        num_classes: 5,
        ..Default::default()
    };
    let got = max_cosine_match(&x, &labels(&row_labels), &p, &labels(&proto_labels), &cfg).unwrap();
    let (sim, idx) = direct_match(&x, &row_labels, &p, &proto_labels);
    assert_eq!(got.index.to_vec::<i64>().unwrap(), idx);
    assert_same_with_nan("similarity", &values(&got.similarity), &sim, 1e-14);
    assert_eq!(got.similarity.dtype(), DType::F64);
    for (i, &c) in row_labels.iter().enumerate() {
        assert_eq!(idx[i] == -1, c == 3, "row {i}");
    }

    // Into-variant, with outputs that are overwritten.
    let mut out = MaxCosineMatch {
        similarity: tensor(vec![7.0; n], &[n]),
        index: labels(&vec![99; n]),
    };
    max_cosine_match_into(
        &x,
        &labels(&row_labels),
        &p,
        &labels(&proto_labels),
        &cfg,
        &mut out,
    )
    .unwrap();
    assert_eq!(out.index.to_vec::<i64>().unwrap(), idx);
    let mut wrong = MaxCosineMatch {
        similarity: tensor(vec![0.0; n], &[n]),
        index: tensor(vec![0.0; n], &[n]),
    };
    let err = max_cosine_match_into(
        &x,
        &labels(&row_labels),
        &p,
        &labels(&proto_labels),
        &cfg,
        &mut wrong,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("`index`: expected i64"), "{err}");
}

#[test]
fn max_cosine_ties_zero_rows_and_nan() {
    // p_1 = 2·p_0 (same direction): the tie goes to the first index. A zero row has cosine 0 with
    // everything; a NaN row reads NaN.
    let p = tensor(vec![1.0, 2.0, 0.0, 2.0, 4.0, 0.0, -1.0, 0.5, 0.5], &[3, 3]);
    let x = tensor(
        vec![0.5, 1.0, 0.1, 0.0, 0.0, 0.0, f64::NAN, 1.0, 1.0],
        &[3, 3],
    );
    let proto = labels(&[0, 0, 0]);
    let got = max_cosine_match(&x, &labels(&[0, 0, 0]), &p, &proto, &Default::default()).unwrap();
    let idx = got.index.to_vec::<i64>().unwrap();
    let sim = values(&got.similarity);
    assert_eq!(idx[0], 0, "first of two equal cosines");
    assert_eq!(
        (idx[1], sim[1]),
        (0, 0.0),
        "zero row: cosine 0, first candidate"
    );
    assert!(
        sim[2].is_nan() && idx[2] == 0,
        "NaN propagates: {sim:?} {idx:?}"
    );

    // D = 0 behaves like zero rows.
    let got = max_cosine_match(
        &tensor(vec![], &[2, 0]),
        &labels(&[1, 0]),
        &tensor(vec![], &[3, 0]),
        &labels(&[0, 1, 1]),
        &Default::default(),
    )
    .unwrap();
    assert_eq!(got.index.to_vec::<i64>().unwrap(), vec![1, 0]);
    assert_eq!(values(&got.similarity), vec![0.0, 0.0]);
}

#[test]
fn max_cosine_and_weights_on_empty_inputs() {
    let x = tensor(random(32, &[3, 4]), &[3, 4]);
    let p = tensor(random(33, &[2, 4]), &[2, 4]);
    let cfg = MaxCosineConfig::default();
    // N = 0.
    let none = tensor(vec![], &[0, 4]);
    let got = max_cosine_match(&none, &labels(&[]), &p, &labels(&[0, 1]), &cfg).unwrap();
    assert_eq!(
        (got.similarity.shape(), got.index.shape()),
        (&[0][..], &[0][..])
    );
    // K = 0: every row unmatched; weights all 1.
    let no_protos = tensor(vec![], &[0, 4]);
    let got = max_cosine_match(&x, &labels(&[0, 1, 2]), &no_protos, &labels(&[]), &cfg).unwrap();
    assert_eq!(got.index.to_vec::<i64>().unwrap(), vec![-1; 3]);
    assert!(values(&got.similarity).iter().all(|v| v.is_nan()));
    let inputs = RobustWeightInputs {
        student: &x,
        teacher: &x,
        labels: &labels(&[0, 1, 2]),
        student_prototypes: &no_protos,
        teacher_prototypes: &no_protos,
        prototype_labels: &labels(&[]),
    };
    assert_eq!(
        values(&gkd_robust_weights(&inputs, &cfg).unwrap()),
        vec![1.0; 3]
    );
    let inputs = RobustWeightInputs {
        student: &none,
        teacher: &none,
        labels: &labels(&[]),
        ..inputs
    };
    assert_eq!(gkd_robust_weights(&inputs, &cfg).unwrap().shape(), &[0]);
}

#[test]
fn robust_weights_follow_the_formula() {
    let (n, k, ds, dt) = (10, 8, 6, 4);
    let s = tensor(random(34, &[n, ds]), &[n, ds]);
    let t = tensor(random(35, &[n, dt]), &[n, dt]);
    let ps = tensor(random(36, &[k, ds]), &[k, ds]);
    let pt = tensor(random(37, &[k, dt]), &[k, dt]);
    let proto_labels = [0, 1, 1, 2, 0, 2, 2, 1];
    let row_labels = [0, 1, 2, 3, 2, 1, 0, 3, 1, 2];
    let cfg = MaxCosineConfig {
        num_classes: 4,
        ..Default::default()
    };
    let (rl, pl) = (labels(&row_labels), labels(&proto_labels));
    let inputs = RobustWeightInputs {
        student: &s,
        teacher: &t,
        labels: &rl,
        student_prototypes: &ps,
        teacher_prototypes: &pt,
        prototype_labels: &pl,
    };
    let got = values(&gkd_robust_weights(&inputs, &cfg).unwrap());
    let (ss, _) = direct_match(&s, &row_labels, &ps, &proto_labels);
    let (st, _) = direct_match(&t, &row_labels, &pt, &proto_labels);
    let want: Vec<f64> = ss
        .iter()
        .zip(&st)
        .zip(&row_labels)
        .map(|((a, b), &c)| if c == 3 { 1.0 } else { 1.0 - (a - b).abs() })
        .collect();
    assert_close("weights", &got, &want, 1e-14);
    assert!(got.iter().all(|&w| (-1.0..=1.0).contains(&w) || w == 1.0));
    let mut out = tensor(vec![f64::NAN; n], &[n]);
    gkd_robust_weights_into(&inputs, &cfg, &mut out).unwrap();
    assert_eq!(values(&out), got);

    // A NaN feature makes its row's weight NaN, and only that one.
    let mut tv = values(&t);
    tv[2 * dt] = f64::NAN;
    let t_bad = tensor(tv, &[n, dt]);
    let bad = values(
        &gkd_robust_weights(
            &RobustWeightInputs {
                teacher: &t_bad,
                ..inputs
            },
            &cfg,
        )
        .unwrap(),
    );
    assert!(bad[2].is_nan());
    assert_eq!(bad.iter().filter(|v| v.is_nan()).count(), 1);
}

#[test]
fn half_storage_match_agrees_with_f64() {
    let (n, k, d) = (20, 12, 16);
    let xv = random(38, &[n, d]);
    let pv = random(39, &[k, d]);
    let row_labels: Vec<i64> = (0..n as i64).map(|i| i % 4).collect();
    let proto_labels: Vec<i64> = (0..k as i64).map(|i| i % 3).collect();
    let cfg = MaxCosineConfig {
        num_classes: 4,
        ..Default::default()
    };
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let tol = if dtype == DType::F32 { 1e-6 } else { 1e-2 };
        let x = tensor(xv.clone(), &[n, d]).to_dtype(dtype).unwrap();
        let p = tensor(pv.clone(), &[k, d]).to_dtype(dtype).unwrap();
        let got =
            max_cosine_match(&x, &labels(&row_labels), &p, &labels(&proto_labels), &cfg).unwrap();
        assert_eq!(got.similarity.dtype(), dtype);
        let (want, _) = direct_match(
            &x.to_dtype(DType::F64).unwrap(),
            &row_labels,
            &p.to_dtype(DType::F64).unwrap(),
            &proto_labels,
        );
        assert_same_with_nan(&format!("{dtype}"), &values(&got.similarity), &want, tol);
    }
}

// ---------------------------------------------------------------------------------------------------------
// Validation

#[test]
fn bad_inputs_are_clear_errors() {
    let x = tensor(random(40, &[4, 3]), &[4, 3]);
    let p = tensor(random(41, &[2, 3]), &[2, 3]);
    let p5 = tensor(random(42, &[2, 5]), &[2, 5]);
    let r3 = tensor(vec![0.0; 24], &[2, 3, 4]);
    let x32 = x.to_dtype(DType::F32).unwrap();
    let ints = labels(&[1, 2, 3, 4]);
    let a = soft_assignment(&x, &p, &Default::default()).unwrap();
    let g = tensor(vec![0.0; 8], &[4, 2]);
    let cfg = SoftAssignConfig::default();
    let tau = |t: f64| config(t, AssignmentOutput::Probabilities);
    let err = |r: Result<Tensor>| r.unwrap_err().to_string();
    let err2 = |r: Result<(Tensor, Option<Tensor>)>| r.unwrap_err().to_string();
    let err_m = |r: Result<MaxCosineMatch>| r.unwrap_err().to_string();

    let (rl, pl) = (labels(&[0, 1, 0, 1]), labels(&[1, 0]));
    let mc = MaxCosineConfig {
        num_classes: 2,
        ..Default::default()
    };
    let m = |x: &Tensor, l: &Tensor, p: &Tensor, q: &Tensor, c: &MaxCosineConfig| {
        err_m(max_cosine_match(x, l, p, q, c))
    };
    let weights = |inputs: RobustWeightInputs<'_>| err(gkd_robust_weights(&inputs, &mc));
    let t4 = tensor(random(43, &[4, 2]), &[4, 2]);
    let pt = tensor(random(44, &[2, 2]), &[2, 2]);
    let good = RobustWeightInputs {
        student: &x,
        teacher: &t4,
        labels: &rl,
        student_prototypes: &p,
        teacher_prototypes: &pt,
        prototype_labels: &pl,
    };
    assert!(gkd_robust_weights(&good, &mc).is_ok());
    let (t3, pt3) = (tensor(vec![0.0; 6], &[3, 2]), tensor(vec![0.0; 6], &[3, 2]));
    let t4_32 = t4.to_dtype(DType::F32).unwrap();
    let pt_d3 = tensor(vec![0.0; 6], &[2, 3]);

    let cases: Vec<(String, &str)> = vec![
        (err(soft_assignment(&r3, &p, &cfg)), "`x`: expected shape [rows, D], got [2, 3, 4]"),
        (err(soft_assignment(&x, &r3, &cfg)), "`prototypes`: expected shape [rows, D]"),
        (
            err(soft_assignment(&x, &p5, &cfg)),
            "`prototypes`: expected shape [K, 3] (the same D as `x`), got [2, 5]",
        ),
        (err(soft_assignment(&x, &x32, &cfg)), "`prototypes`: expected dtype f64, got f32"),
        (err(soft_assignment(&ints, &p, &cfg)), "`x`: expected shape [rows, D]"),
        (
            err(soft_assignment(&ints.reshape(&[2, 2]).unwrap(), &p, &cfg)),
            "`x`: expected dtype a float dtype",
        ),
        (err(soft_assignment(&x, &p, &tau(0.0))), "`temperature`: must be finite and > 0, got 0"),
        (err(soft_assignment(&x, &p, &tau(-1.0))), "`temperature`: must be finite and > 0, got -1"),
        (err(soft_assignment(&x, &p, &tau(f64::NAN))), "`temperature`: must be finite and > 0, got NaN"),
        (err(soft_assignment(&x, &p, &tau(f64::INFINITY))), "`temperature`: must be finite and > 0, got inf"),
        (
            err2(soft_assignment_backward(&x, &p, &g.reshape(&[2, 4]).unwrap(), &a, &cfg, true)),
            "`output`: expected shape [4, 2], got [2, 4]",
        ),
        (
            err2(soft_assignment_backward(&x, &p, &a, &x, &cfg, true)),
            "`grad_out`: expected shape [4, 2], got [4, 3]",
        ),
        (
            err2(soft_assignment_backward(&x, &p, &a, &a.to_dtype(DType::F32).unwrap(), &cfg, true)),
            "`grad_out`: expected dtype f64, got f32",
        ),
        (
            err2(soft_assignment_backward(&x, &p, &a, &a, &tau(0.0), true)),
            "`temperature`",
        ),
        (
            err2(soft_assignment_backward(&x, &p5, &a, &a, &cfg, true)),
            "`prototypes`: expected shape [K, 3]",
        ),
        // Max-cosine match.
        (m(&r3, &rl, &p, &pl, &mc), "`x`: expected shape [rows, D]"),
        (m(&x, &rl, &p5, &pl, &mc), "`prototypes`: expected shape [K, 3]"),
        (m(&x, &rl, &x32, &pl, &mc), "`prototypes`: expected dtype f64, got f32"),
        (
            m(&x, &labels(&[0, 1]), &p, &pl, &mc),
            "`labels`: expected shape [4] (one label per row of `x`), got [2]",
        ),
        (
            m(&x, &rl, &p, &labels(&[0, 1, 1]), &mc),
            "`prototype_labels`: expected shape [2] (one label per row of `prototypes`), got [3]",
        ),
        (
            m(&x, &tensor(vec![0.0; 4], &[4]), &p, &pl, &mc),
            "`labels`: expected dtype i64, got f64",
        ),
        (
            m(&x, &rl, &p, &tensor(vec![0.0; 2], &[2]), &mc),
            "`prototype_labels`: expected dtype i64, got f64",
        ),
        (
            m(&x, &labels(&[0, 1, 2, 0]), &p, &pl, &mc),
            "`labels`: entry 2 is 2, outside [0, 2) (num_classes = 2)",
        ),
        (
            m(&x, &labels(&[0, -1, 1, 0]), &p, &pl, &mc),
            "`labels`: entry 1 is -1, outside [0, 2)",
        ),
        (
            m(&x, &rl, &p, &labels(&[5, 0]), &mc),
            "`prototype_labels`: entry 0 is 5, outside [0, 2)",
        ),
        (
            m(&x, &rl, &p, &pl, &MaxCosineConfig { num_classes: 0, ..mc }),
            "`num_classes`: must be at least 1",
        ),
        (
            m(&x, &rl, &p, &pl, &MaxCosineConfig { eps: 0.0, ..mc }),
            "`eps`: must be finite and > 0",
        ),
        (
            m(&x, &rl, &p, &pl, &MaxCosineConfig { eps: f64::NAN, ..mc }),
            "`eps`: must be finite and > 0",
        ),
        // Robust weights.
        (weights(RobustWeightInputs { teacher: &t3, ..good }), "`teacher`: expected shape [4, Dt] (one row per student row), got [3, 2]"),
        (weights(RobustWeightInputs { teacher: &t4_32, ..good }), "`teacher`: expected dtype f64, got f32"),
        (
            weights(RobustWeightInputs { teacher_prototypes: &pt3, ..good }),
            "`teacher_prototypes`: expected shape [2, Dt] (paired with the student prototypes), got [3, 2]",
        ),
        (
            weights(RobustWeightInputs { teacher_prototypes: &pt_d3, ..good }),
            "`teacher_prototypes`: expected shape [K, 2] (the same D as `teacher`), got [2, 3]",
        ),
        (
            weights(RobustWeightInputs { student_prototypes: &p5, ..good }),
            "`student_prototypes`: expected shape [K, 3] (the same D as `student`)",
        ),
        (
            weights(RobustWeightInputs { labels: &labels(&[0, 3, 0, 0]), ..good }),
            "`labels`: entry 1 is 3, outside [0, 2)",
        ),
        (
            weights(RobustWeightInputs { student: &r3, ..good }),
            "`student`: expected shape [rows, D]",
        ),
    ];
    // More rows than the product kernels' grid takes (an [N, 0] tensor holds no data).
    let tall = Tensor::zeros(&[65_535 * 64 + 1, 0], DType::F64, &Device::Cpu).unwrap();
    let flat = Tensor::zeros(&[2, 0], DType::F64, &Device::Cpu).unwrap();
    for message in [
        err(soft_assignment(&tall, &flat, &cfg)),
        err(soft_assignment(&flat, &tall, &cfg)),
    ] {
        assert!(
            message.contains("rows = 4194241 exceeds 4194240"),
            "{message}"
        );
    }
    assert!(max_cosine_match(&x, &rl, &p, &pl, &mc).is_ok());
    for (message, expected) in cases {
        assert!(
            message.contains(expected),
            "`{message}` does not mention `{expected}`"
        );
    }
}
