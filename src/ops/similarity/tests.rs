//! Gradchecks, cross-checks between the ops, validation, empty inputs and non-finite propagation on the
//! CPU. PyTorch fixtures and CUDA parity live in tests/similarity.rs.

use super::*;
use crate::autograd::{gradcheck, GradcheckOptions};
use crate::testing::{assert_close, Rng};

fn tensor(data: Vec<f64>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(data, shape).unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_vec::<f64>().unwrap()
}

fn random(seed: u64, shape: &[usize]) -> Vec<f64> {
    Rng::new(seed).normal_vec(shape.iter().product())
}

fn check(
    what: &str,
    forward: impl Fn(&[f64]) -> Result<Vec<f64>>,
    backward: impl Fn(&[f64], &[f64]) -> Result<Vec<f64>>,
    x: &[f64],
    opts: &GradcheckOptions,
) {
    let report = gradcheck(forward, backward, x, opts).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        report.nonzero_entries > 0,
        "{what}: all-zero Jacobian proves nothing"
    );
}

const COS: CosineConfig = CosineConfig { eps: DEFAULT_EPS };

// ---------------------------------------------------------------------------------------------------------
// Gradchecks (f64, PyTorch tolerances)

#[test]
fn gradcheck_normalize_rows() {
    let shape = [4, 5];
    let x = random(1, &shape);
    check(
        "normalize_rows",
        |x| Ok(values(&normalize_rows(&tensor(x.to_vec(), &shape), &COS)?)),
        |x, g| {
            normalize_rows_backward(
                &tensor(x.to_vec(), &shape),
                &tensor(g.to_vec(), &shape),
                &COS,
            )
            .map(|t| values(&t))
        },
        &x,
        &GradcheckOptions::default(),
    );
}

#[test]
fn gradcheck_normalize_rows_below_eps() {
    // Rows with ‖x‖ < eps are divided by eps: linear, Jacobian I/eps. Perturbations must stay below eps.
    let cfg = CosineConfig { eps: 1e-3 };
    let shape = [2, 3];
    let x: Vec<f64> = random(2, &shape).iter().map(|v| v * 1e-4).collect();
    let opts = GradcheckOptions {
        eps: 1e-7,
        ..GradcheckOptions::default()
    };
    check(
        "normalize_rows below eps",
        |x| Ok(values(&normalize_rows(&tensor(x.to_vec(), &shape), &cfg)?)),
        |x, g| {
            normalize_rows_backward(
                &tensor(x.to_vec(), &shape),
                &tensor(g.to_vec(), &shape),
                &cfg,
            )
            .map(|t| values(&t))
        },
        &x,
        &opts,
    );
    let out = values(&normalize_rows(&tensor(x.clone(), &shape), &cfg).unwrap());
    assert_close(
        "x / eps",
        &out,
        &x.iter().map(|v| v / 1e-3).collect::<Vec<_>>(),
        1e-15,
    );
}

#[test]
fn gradcheck_cosine_gram() {
    let shape = [5, 4];
    let x = random(3, &shape);
    check(
        "cosine_gram",
        |x| Ok(values(&cosine_gram(&tensor(x.to_vec(), &shape), &COS)?)),
        |x, g| {
            cosine_gram_backward(
                &tensor(x.to_vec(), &shape),
                &tensor(g.to_vec(), &[5, 5]),
                &COS,
            )
            .map(|t| values(&t))
        },
        &x,
        &GradcheckOptions::default(),
    );
}

#[test]
fn gradcheck_cosine_cross() {
    let (sx, sy) = ([3, 4], [5, 4]);
    let xy = random(4, &[8, 4]);
    let split = |v: &[f64]| (tensor(v[..12].to_vec(), &sx), tensor(v[12..].to_vec(), &sy));
    check(
        "cosine_cross",
        |v| {
            let (x, y) = split(v);
            Ok(values(&cosine_cross(&x, &y, &COS)?))
        },
        |v, g| {
            let (x, y) = split(v);
            let (dx, dy) = cosine_cross_backward(&x, &y, &tensor(g.to_vec(), &[3, 5]), true, &COS)?;
            let mut flat = values(&dx);
            flat.extend(values(&dy.unwrap()));
            Ok(flat)
        },
        &xy,
        &GradcheckOptions::default(),
    );
}

#[test]
fn gradcheck_distances_cross_and_self() {
    for kind in [Distance::Squared, Distance::Euclidean] {
        let (sx, sy) = ([3, 4], [4, 4]);
        let xy = random(5, &[7, 4]);
        let split = |v: &[f64]| (tensor(v[..12].to_vec(), &sx), tensor(v[12..].to_vec(), &sy));
        check(
            &format!("{kind:?} cross"),
            |v| {
                let (x, y) = split(v);
                Ok(values(&pairwise_distance(&x, Some(&y), kind)?))
            },
            |v, g| {
                let (x, y) = split(v);
                let out = pairwise_distance(&x, Some(&y), kind)?;
                let g = tensor(g.to_vec(), &[3, 4]);
                let (dx, dy) = pairwise_distance_backward(&x, Some(&y), &out, &g, kind, true)?;
                let mut flat = values(&dx);
                flat.extend(values(&dy.unwrap()));
                Ok(flat)
            },
            &xy,
            &GradcheckOptions::default(),
        );

        let shape = [5, 3];
        let x = random(6, &shape);
        check(
            &format!("{kind:?} self"),
            |v| {
                Ok(values(&pairwise_distance(
                    &tensor(v.to_vec(), &shape),
                    None,
                    kind,
                )?))
            },
            |v, g| {
                let x = tensor(v.to_vec(), &shape);
                let out = pairwise_distance(&x, None, kind)?;
                let g = tensor(g.to_vec(), &[5, 5]);
                let (dx, dy) = pairwise_distance_backward(&x, None, &out, &g, kind, true)?;
                assert!(dy.is_none(), "self mode has no y");
                Ok(values(&dx))
            },
            &x,
            &GradcheckOptions::default(),
        );
    }
}

#[test]
fn gradcheck_dsig_edge_loss() {
    let shape = [7, 6];
    let teacher = tensor(random(7, &shape), &shape);
    let nodes = Tensor::from_vec(vec![5i64, 0, 3, 6, 2], &[5]).unwrap();
    for (nodes, weight) in [(None, 1.0), (Some(&nodes), 2.0)] {
        let cfg = DsigEdgeConfig {
            loss_weight: weight,
            ..DsigEdgeConfig::default()
        };
        let x = random(8, &shape);
        check(
            &format!("dsig nodes={} weight={weight}", nodes.is_some()),
            |v| {
                Ok(values(&dsig_edge_loss(
                    &tensor(v.to_vec(), &shape),
                    &teacher,
                    nodes,
                    &cfg,
                )?))
            },
            |v, g| {
                let s = tensor(v.to_vec(), &shape);
                Ok(values(&dsig_edge_loss_backward(
                    &s, &teacher, nodes, g[0], &cfg,
                )?))
            },
            &x,
            &GradcheckOptions::default(),
        );
    }
}

// ---------------------------------------------------------------------------------------------------------
// Cross-checks between entries

/// The fused loss against a composition of the public ops (gather, cosine_gram, mean, cosine_gram_backward).
#[test]
fn dsig_edge_loss_matches_its_composition() {
    let shape = [9, 11];
    let (xs, xt) = (random(10, &shape), random(11, &shape));
    let student = tensor(xs.clone(), &shape);
    let teacher = tensor(xt.clone(), &shape);
    let selected = [8usize, 1, 4, 0, 6, 3];
    let nodes = Tensor::from_vec(selected.iter().map(|&v| v as i64).collect(), &[6]).unwrap();
    let cfg = DsigEdgeConfig {
        loss_weight: 2.0,
        ..DsigEdgeConfig::default()
    };
    let fused = dsig_edge_loss_with_grad(&student, &teacher, Some(&nodes), &cfg).unwrap();
    assert_eq!(fused.loss.shape(), &[] as &[usize]);
    assert_eq!(fused.grad.shape(), &shape);

    let gather = |v: &[f64]| -> Tensor {
        let rows: Vec<f64> = selected
            .iter()
            .flat_map(|&r| v[r * 11..(r + 1) * 11].to_vec())
            .collect();
        tensor(rows, &[6, 11])
    };
    let a_s = values(&cosine_gram(&gather(&xs), &COS).unwrap());
    let a_t = values(&cosine_gram(&gather(&xt), &COS).unwrap());
    let m2 = 36.0;
    let loss: f64 = 2.0
        * 0.5
        * a_s
            .iter()
            .zip(&a_t)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
        / m2;
    assert_close("loss", &values(&fused.loss), &[loss], 1e-12);

    let g: Vec<f64> = a_s
        .iter()
        .zip(&a_t)
        .map(|(a, b)| 2.0 * (a - b) / m2)
        .collect();
    let dx = values(&cosine_gram_backward(&gather(&xs), &tensor(g, &[6, 6]), &COS).unwrap());
    let mut want = vec![0.0; 9 * 11];
    for (r, &row) in selected.iter().enumerate() {
        want[row * 11..(row + 1) * 11].copy_from_slice(&dx[r * 11..(r + 1) * 11]);
    }
    assert_close("grad", &values(&fused.grad), &want, 1e-12);

    // The unfused pair agrees with the fused entry, and the backward scales with grad_loss.
    let loss_only = dsig_edge_loss(&student, &teacher, Some(&nodes), &cfg).unwrap();
    assert_eq!(values(&loss_only), values(&fused.loss));
    let back = dsig_edge_loss_backward(&student, &teacher, Some(&nodes), 1.0, &cfg).unwrap();
    assert_eq!(values(&back), values(&fused.grad));
    let half = dsig_edge_loss_backward(&student, &teacher, Some(&nodes), 0.5, &cfg).unwrap();
    let want_half: Vec<f64> = values(&back).iter().map(|v| v * 0.5).collect();
    assert_close("grad_loss scaling", &values(&half), &want_half, 1e-15);
    // Rows outside `nodes` get exactly zero.
    let grad = values(&fused.grad);
    for row in [2, 5, 7] {
        assert!(
            grad[row * 11..(row + 1) * 11].iter().all(|&v| v == 0.0),
            "row {row}"
        );
    }
}

#[test]
fn cosine_cross_of_x_with_itself_is_the_gram() {
    let shape = [6, 5];
    let x = tensor(random(12, &shape), &shape);
    let gram = values(&cosine_gram(&x, &COS).unwrap());
    let cross = values(&cosine_cross(&x, &x, &COS).unwrap());
    assert_close("cross(x, x)", &cross, &gram, 1e-15);
    for i in 0..6 {
        assert!((gram[i * 6 + i] - 1.0).abs() < 1e-14, "diagonal is 1");
    }
    let g = tensor(random(13, &[6, 6]), &[6, 6]);
    let (dx, dy) = cosine_cross_backward(&x, &x, &g, true, &COS).unwrap();
    let sum: Vec<f64> = values(&dx)
        .iter()
        .zip(values(&dy.unwrap()))
        .map(|(a, b)| a + b)
        .collect();
    assert_close(
        "gram backward = dx + dy of cross",
        &values(&cosine_gram_backward(&x, &g, &COS).unwrap()),
        &sum,
        1e-12,
    );
    let (_, none) = cosine_cross_backward(&x, &x, &g, false, &COS).unwrap();
    assert!(none.is_none());
}

#[test]
fn distances_match_direct_differences() {
    let (sx, sy) = ([4, 6], [5, 6]);
    let (x, y) = (random(14, &sx), random(15, &sy));
    let direct: Vec<f64> = (0..4)
        .flat_map(|i| {
            let (x, y) = (&x, &y);
            (0..5).map(move |j| {
                (0..6)
                    .map(|k| (x[i * 6 + k] - y[j * 6 + k]).powi(2))
                    .sum::<f64>()
            })
        })
        .collect();
    let (xt, yt) = (tensor(x.clone(), &sx), tensor(y, &sy));
    let sq = values(&pairwise_distance(&xt, Some(&yt), Distance::Squared).unwrap());
    assert_close("squared", &sq, &direct, 1e-13);
    let plain = values(&pairwise_distance(&xt, Some(&yt), Distance::Euclidean).unwrap());
    let want: Vec<f64> = direct.iter().map(|v| v.sqrt()).collect();
    assert_close("plain", &plain, &want, 1e-13);

    // Self mode: exact zero diagonal, symmetric.
    let d = values(&pairwise_distance(&xt, None, Distance::Euclidean).unwrap());
    for i in 0..4 {
        assert_eq!(d[i * 4 + i], 0.0);
        for j in 0..4 {
            assert_eq!(d[i * 4 + j], d[j * 4 + i]);
        }
    }
}

#[test]
fn coincident_points_have_zero_distance_gradient() {
    // y's first row equals x's second: the distance is 0 (or clamped rounding noise) and its gradient 0.
    let x = tensor(vec![1.0, 2.0, 3.0, 0.5, -1.5, 2.5], &[2, 3]);
    let y = tensor(vec![0.5, -1.5, 2.5, 4.0, 4.0, 4.0], &[2, 3]);
    for kind in [Distance::Squared, Distance::Euclidean] {
        let out = pairwise_distance(&x, Some(&y), kind).unwrap();
        assert_eq!(values(&out)[2], 0.0, "{kind:?}");
        // Upstream gradient only on the coincident pair.
        let g = tensor(vec![0.0, 0.0, 1.0, 0.0], &[2, 2]);
        let (dx, dy) = pairwise_distance_backward(&x, Some(&y), &out, &g, kind, true).unwrap();
        assert!(values(&dx).iter().all(|&v| v == 0.0), "{kind:?}");
        assert!(values(&dy.unwrap()).iter().all(|&v| v == 0.0), "{kind:?}");
    }
}

#[test]
fn into_variants_match_and_check_out() {
    let shape = [4, 3];
    let x = tensor(random(16, &shape), &shape);
    let y = tensor(random(17, &[2, 3]), &[2, 3]);
    let mut out = Tensor::zeros(&[4, 4], DType::F64, &Device::Cpu).unwrap();
    cosine_gram_into(&x, &COS, &mut out).unwrap();
    assert_eq!(values(&out), values(&cosine_gram(&x, &COS).unwrap()));
    let mut out = Tensor::zeros(&[4, 2], DType::F64, &Device::Cpu).unwrap();
    cosine_cross_into(&x, &y, &COS, &mut out).unwrap();
    assert_eq!(values(&out), values(&cosine_cross(&x, &y, &COS).unwrap()));
    pairwise_distance_into(&x, Some(&y), Distance::Euclidean, &mut out).unwrap();
    assert_eq!(
        values(&out),
        values(&pairwise_distance(&x, Some(&y), Distance::Euclidean).unwrap())
    );
    let mut out = Tensor::zeros(&[4, 3], DType::F64, &Device::Cpu).unwrap();
    normalize_rows_into(&x, &COS, &mut out).unwrap();
    assert_eq!(values(&out), values(&normalize_rows(&x, &COS).unwrap()));

    let mut wrong_shape = Tensor::zeros(&[4, 3], DType::F64, &Device::Cpu).unwrap();
    let err = cosine_gram_into(&x, &COS, &mut wrong_shape)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`out`: expected shape [4, 4]"), "{err}");
    let mut wrong_dtype = Tensor::zeros(&[4, 4], DType::F32, &Device::Cpu).unwrap();
    let err = cosine_gram_into(&x, &COS, &mut wrong_dtype)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`out`: expected f64"), "{err}");
}

#[test]
fn half_storage_matches_f32_compute_on_cpu() {
    let shape = [6, 9];
    let (xv, yv) = (random(18, &shape), random(19, &[4, 9]));
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        // Reference: f64 on the inputs as rounded to `dtype`.
        let x = tensor(xv.clone(), &shape).to_dtype(dtype).unwrap();
        let y = tensor(yv.clone(), &[4, 9]).to_dtype(dtype).unwrap();
        let (x64, y64) = (
            x.to_dtype(DType::F64).unwrap(),
            y.to_dtype(DType::F64).unwrap(),
        );
        let tol = if dtype == DType::F32 { 1e-5 } else { 1e-2 };
        let cmp = |what: &str, got: Tensor, want: Tensor| {
            assert_eq!(got.dtype(), dtype, "{what}");
            assert_close(
                &format!("{what} {dtype}"),
                &values(&got),
                &values(&want),
                tol,
            );
        };
        cmp(
            "normalize",
            normalize_rows(&x, &COS).unwrap(),
            normalize_rows(&x64, &COS).unwrap(),
        );
        cmp(
            "gram",
            cosine_gram(&x, &COS).unwrap(),
            cosine_gram(&x64, &COS).unwrap(),
        );
        cmp(
            "cross",
            cosine_cross(&x, &y, &COS).unwrap(),
            cosine_cross(&x64, &y64, &COS).unwrap(),
        );
        let g = tensor(random(20, &[6, 6]), &[6, 6]);
        cmp(
            "gram backward",
            cosine_gram_backward(&x, &g.to_dtype(dtype).unwrap(), &COS).unwrap(),
            cosine_gram_backward(
                &x64,
                &g.to_dtype(dtype).unwrap().to_dtype(DType::F64).unwrap(),
                &COS,
            )
            .unwrap(),
        );
        for kind in [Distance::Squared, Distance::Euclidean] {
            cmp(
                "distance",
                pairwise_distance(&x, Some(&y), kind).unwrap(),
                pairwise_distance(&x64, Some(&y64), kind).unwrap(),
            );
        }
        let fused =
            dsig_edge_loss_with_grad(&x, &x.to_dtype(dtype).unwrap(), None, &Default::default());
        let fused = fused.unwrap();
        let loss_dtype = if dtype == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        assert_eq!(fused.loss.dtype(), loss_dtype);
        let teacher = tensor(yv.iter().chain(&yv).take(54).cloned().collect(), &shape);
        let t = teacher.to_dtype(dtype).unwrap();
        let got = dsig_edge_loss_with_grad(&x, &t, None, &Default::default()).unwrap();
        let want = dsig_edge_loss_with_grad(
            &x64,
            &t.to_dtype(DType::F64).unwrap(),
            None,
            &Default::default(),
        )
        .unwrap();
        assert_close(
            &format!("edge loss {dtype}"),
            &values(&got.loss),
            &values(&want.loss),
            tol,
        );
        cmp("edge grad", got.grad, want.grad);
    }
}

// ---------------------------------------------------------------------------------------------------------
// Empty inputs, D = 0, non-finite values

#[test]
fn empty_inputs_give_empty_or_zero_results() {
    let empty = tensor(vec![], &[0, 5]);
    let y = tensor(random(21, &[3, 5]), &[3, 5]);
    assert_eq!(normalize_rows(&empty, &COS).unwrap().shape(), &[0, 5]);
    assert_eq!(cosine_gram(&empty, &COS).unwrap().shape(), &[0, 0]);
    assert_eq!(
        cosine_gram_backward(&empty, &tensor(vec![], &[0, 0]), &COS)
            .unwrap()
            .shape(),
        &[0, 5]
    );
    assert_eq!(cosine_cross(&empty, &y, &COS).unwrap().shape(), &[0, 3]);
    let (dx, dy) = cosine_cross_backward(&empty, &y, &tensor(vec![], &[0, 3]), true, &COS).unwrap();
    assert_eq!(
        (dx.shape(), dy.unwrap().shape()),
        (&[0, 5][..], &[3, 5][..])
    );
    let d = pairwise_distance(&y, Some(&empty), Distance::Euclidean).unwrap();
    assert_eq!(d.shape(), &[3, 0]);

    // D = 0: rows normalise to nothing, every cosine is 0, every distance 0.
    let flat = tensor(vec![], &[3, 0]);
    assert!(values(&cosine_gram(&flat, &COS).unwrap())
        .iter()
        .all(|&v| v == 0.0));
    assert!(
        values(&pairwise_distance(&flat, None, Distance::Euclidean).unwrap())
            .iter()
            .all(|&v| v == 0.0)
    );

    // m = 0 for the edge loss: no vertices, loss 0, zero gradient (the official code's `feat.sum() * 0.`).
    let s = tensor(random(22, &[4, 3]), &[4, 3]);
    let t = tensor(random(23, &[4, 3]), &[4, 3]);
    let none = Tensor::from_vec(Vec::<i64>::new(), &[0]).unwrap();
    let out = dsig_edge_loss_with_grad(&s, &t, Some(&none), &Default::default()).unwrap();
    assert_eq!(values(&out.loss), vec![0.0]);
    assert_eq!(out.grad.shape(), &[4, 3]);
    assert!(values(&out.grad).iter().all(|&v| v == 0.0));
    let zero_rows = tensor(vec![], &[0, 3]);
    let out = dsig_edge_loss_with_grad(&zero_rows, &zero_rows, None, &Default::default()).unwrap();
    assert_eq!(
        (values(&out.loss), out.grad.shape()),
        (vec![0.0], &[0, 3][..])
    );
}

#[test]
fn zero_rows_normalise_to_zero_with_gradient_over_eps() {
    let x = tensor(vec![0.0, 0.0, 0.0, 3.0, 4.0, 0.0], &[2, 3]);
    let out = values(&normalize_rows(&x, &COS).unwrap());
    assert_eq!(out, vec![0.0, 0.0, 0.0, 0.6, 0.8, 0.0]);
    let g = tensor(vec![1.0, -2.0, 0.5, 0.0, 0.0, 1.0], &[2, 3]);
    let dx = values(&normalize_rows_backward(&x, &g, &COS).unwrap());
    assert_close("zero row: g / eps", &dx[..3], &[1e12, -2e12, 0.5e12], 1e-15);
    assert_close("unit row", &dx[3..], &[0.0, 0.0, 0.2], 1e-15);
}

#[test]
fn non_finite_values_propagate_to_nan() {
    let shape = [3, 4];
    let good = random(24, &shape);
    let mut bad = good.clone();
    bad[5] = f64::NAN;
    let mut inf = good.clone();
    inf[2] = f64::INFINITY;
    let nodes = Tensor::from_vec(vec![0i64, 1, 2], &[3]).unwrap();
    for poisoned in [&bad, &inf] {
        let p = tensor(poisoned.clone(), &shape);
        let g = tensor(good.clone(), &shape);
        for (s, t) in [(&p, &g), (&g, &p)] {
            let out = dsig_edge_loss_with_grad(s, t, Some(&nodes), &Default::default()).unwrap();
            assert!(values(&out.loss)[0].is_nan(), "loss must be NaN");
        }
        let gram = values(&cosine_gram(&p, &COS).unwrap());
        assert!(gram.iter().any(|v| v.is_nan()));
        let d = values(&pairwise_distance(&p, None, Distance::Euclidean).unwrap());
        assert!(d.iter().any(|v| !v.is_finite()));
    }
    // f32 overflow of ‖x‖² (finite inputs): the row becomes NaN rather than a silent 0.
    let huge = tensor(vec![3e19, 1.0, 2.0, 1.0], &[2, 2])
        .to_dtype(DType::F32)
        .unwrap();
    let out = values(&normalize_rows(&huge, &COS).unwrap());
    assert!(out[0].is_nan() && out[1].is_nan(), "{out:?}");
    assert!(out[2].is_finite() && out[3].is_finite());
    let out = values(&normalize_rows(&huge.to_dtype(DType::F64).unwrap(), &COS).unwrap());
    assert!(out.iter().all(|v| v.is_finite()), "no overflow in f64");
}

#[test]
fn results_are_deterministic() {
    let shape = [40, 70];
    let x = tensor(random(25, &shape), &shape)
        .to_dtype(DType::F32)
        .unwrap();
    let t = tensor(random(26, &shape), &shape)
        .to_dtype(DType::F32)
        .unwrap();
    let bits = |t: &Tensor| -> Vec<u32> {
        t.as_slice::<f32>()
            .unwrap()
            .iter()
            .map(|v| v.to_bits())
            .collect()
    };
    let a = dsig_edge_loss_with_grad(&x, &t, None, &Default::default()).unwrap();
    for _ in 0..3 {
        let b = dsig_edge_loss_with_grad(&x, &t, None, &Default::default()).unwrap();
        assert_eq!(bits(&a.loss), bits(&b.loss));
        assert_eq!(bits(&a.grad), bits(&b.grad));
    }
}

// ---------------------------------------------------------------------------------------------------------
// Validation

#[test]
fn bad_inputs_are_clear_errors() {
    let x = tensor(random(27, &[4, 3]), &[4, 3]);
    let y5 = tensor(random(28, &[2, 5]), &[2, 5]);
    let r3 = tensor(vec![0.0; 24], &[2, 3, 4]);
    let labels = Tensor::from_vec(vec![1i64, 2, 3, 4], &[2, 2]).unwrap();
    let x32 = x.to_dtype(DType::F32).unwrap();
    let err = |r: Result<Tensor>| r.unwrap_err().to_string();
    let err2 = |r: Result<(Tensor, Option<Tensor>)>| r.unwrap_err().to_string();
    let cfg = DsigEdgeConfig::default();
    let idx = |v: Vec<i64>| Tensor::from_vec(v.clone(), &[v.len()]).unwrap();
    let cases: Vec<(String, &str)> = vec![
        (
            err(normalize_rows(&r3, &COS)),
            "`x`: expected shape [rows, D], got [2, 3, 4]",
        ),
        (
            err(normalize_rows(&labels, &COS)),
            "`x`: expected dtype a float dtype",
        ),
        (
            err(normalize_rows(&x, &CosineConfig { eps: 0.0 })),
            "`eps`: must be finite and > 0",
        ),
        (
            err(normalize_rows(&x, &CosineConfig { eps: f64::NAN })),
            "`eps`",
        ),
        (
            err(normalize_rows_backward(&x, &y5, &COS)),
            "`grad_out`: expected shape [4, 3], got [2, 5]",
        ),
        (
            err(normalize_rows_backward(&x, &x32, &COS)),
            "`grad_out`: expected dtype f64, got f32",
        ),
        (err(cosine_gram(&r3, &COS)), "`x`: expected shape [rows, D]"),
        (
            err(cosine_gram_backward(&x, &x, &COS)),
            "`grad_out`: expected shape [4, 4], got [4, 3]",
        ),
        (
            err(cosine_cross(&x, &y5, &COS)),
            "`y`: expected shape [n, 3] (the same D as `x`), got [2, 5]",
        ),
        (
            err(cosine_cross(&x, &x32, &COS)),
            "`y`: expected dtype f64, got f32",
        ),
        (
            err(cosine_cross(&x, &r3, &COS)),
            "`y`: expected shape [rows, D]",
        ),
        (
            err2(cosine_cross_backward(&x, &x, &y5, true, &COS)),
            "`grad_out`: expected shape [4, 4]",
        ),
        (
            err(pairwise_distance(&x, Some(&y5), Distance::Squared)),
            "`y`: expected shape [n, 3]",
        ),
        (
            err2(pairwise_distance_backward(
                &x,
                None,
                &y5,
                &x,
                Distance::Squared,
                false,
            )),
            "`output`: expected shape [4, 4], got [2, 5]",
        ),
        (
            err2(pairwise_distance_backward(
                &x,
                None,
                &tensor(vec![0.0; 16], &[4, 4]),
                &x,
                Distance::Squared,
                false,
            )),
            "`grad_out`: expected shape [4, 4], got [4, 3]",
        ),
        (
            err(dsig_edge_loss(&x, &y5, None, &cfg)),
            "`teacher`: expected shape [4, 3] (the student's shape), got [2, 5]",
        ),
        (
            err(dsig_edge_loss(&x, &x32, None, &cfg)),
            "`teacher`: expected dtype f64, got f32",
        ),
        (
            err(dsig_edge_loss(&r3, &r3, None, &cfg)),
            "`student`: expected shape [rows, D]",
        ),
        (
            err(dsig_edge_loss(&x, &x, Some(&idx(vec![0, 4])), &cfg)),
            "`nodes`: entry 1 is 4, outside [0, 4)",
        ),
        (
            err(dsig_edge_loss(&x, &x, Some(&idx(vec![-1])), &cfg)),
            "`nodes`: entry 0 is -1, outside [0, 4)",
        ),
        (
            err(dsig_edge_loss(&x, &x, Some(&idx(vec![2, 0, 2])), &cfg)),
            "`nodes`: row 2 appears twice (entries 0 and 2)",
        ),
        (
            err(dsig_edge_loss(
                &x,
                &x,
                Some(&tensor(vec![0.0, 1.0], &[2])),
                &cfg,
            )),
            "`nodes`: expected dtype i64, got f64",
        ),
        (
            err(dsig_edge_loss(&x, &x, Some(&labels), &cfg)),
            "`nodes`: expected shape [m] (row indices), got [2, 2]",
        ),
        (
            err(dsig_edge_loss(
                &x,
                &x,
                None,
                &DsigEdgeConfig {
                    loss_weight: f64::INFINITY,
                    ..cfg
                },
            )),
            "`loss_weight`: must be finite",
        ),
        (
            err(dsig_edge_loss(
                &x,
                &x,
                None,
                &DsigEdgeConfig { eps: -1.0, ..cfg },
            )),
            "`eps`",
        ),
        (
            err(dsig_edge_loss_backward(&x, &x, None, f64::NAN, &cfg)),
            "`grad_loss`: must be finite",
        ),
    ];
    for (message, expected) in cases {
        assert!(
            message.contains(expected),
            "`{message}` does not mention `{expected}`"
        );
    }
}
