//! Direct formulas, gradchecks, cross-checks between the norms, validation and empty batches on the CPU.
//! PyTorch fixtures and CUDA parity live in tests/norm.rs.

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

/// Normalises each set of indices in `sets` of `x` in place-free fashion: returns (y, means, inv_stds).
fn normalise_sets(x: &[f64], sets: &[Vec<usize>], eps: f64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut y = vec![0.0; x.len()];
    let (mut means, mut invs) = (Vec::new(), Vec::new());
    for set in sets {
        let n = set.len() as f64;
        let mean = set.iter().map(|&i| x[i]).sum::<f64>() / n;
        let var = set.iter().map(|&i| (x[i] - mean).powi(2)).sum::<f64>() / n;
        let inv = 1.0 / (var + eps).sqrt();
        for &i in set {
            y[i] = (x[i] - mean) * inv;
        }
        means.push(mean);
        invs.push(inv);
    }
    (y, means, invs)
}

/// Indices of channel `c` (BatchNorm) of a `[b, c, h, w]` tensor.
fn channel_sets(s: [usize; 4]) -> Vec<Vec<usize>> {
    let plane = s[2] * s[3];
    (0..s[1])
        .map(|c| {
            (0..s[0])
                .flat_map(|b| ((b * s[1] + c) * plane..).take(plane))
                .collect()
        })
        .collect()
}

/// Indices of each (image, group) (GroupNorm), image-major.
fn group_sets(s: [usize; 4], groups: usize) -> Vec<Vec<usize>> {
    let size = s[1] / groups * s[2] * s[3];
    (0..s[0] * groups)
        .map(|bg| (bg * size..(bg + 1) * size).collect())
        .collect()
}

fn affine_apply(y: &mut [f64], s: [usize; 4], gamma: &[f64], beta: &[f64]) {
    let plane = s[2] * s[3];
    for (i, v) in y.iter_mut().enumerate() {
        let c = (i / plane) % s[1];
        *v = *v * gamma[c] + beta[c];
    }
}

#[test]
fn batch_norm_train_matches_the_definition() {
    let s = [3, 4, 5, 6];
    let x = random(1, &s);
    let (gamma, beta) = (random(2, &[4]), random(3, &[4]));
    let (rm, rv) = (
        random(4, &[4]),
        random(5, &[4])
            .iter()
            .map(|v| v.abs() + 0.5)
            .collect::<Vec<_>>(),
    );
    let cfg = BatchNormConfig {
        eps: DRKD_BATCH_NORM_EPS,
        momentum: 0.3,
    };
    let (w, b) = (tensor(gamma.clone(), &[4]), tensor(beta.clone(), &[4]));
    let (rm_t, rv_t) = (tensor(rm.clone(), &[4]), tensor(rv.clone(), &[4]));
    let running = RunningStats {
        mean: &rm_t,
        var: &rv_t,
    };
    let out = batch_norm_train(
        &tensor(x.clone(), &s),
        Some(&w),
        Some(&b),
        Some(running),
        &cfg,
    )
    .unwrap();
    let sets = channel_sets(s);
    let (mut y, means, invs) = normalise_sets(&x, &sets, cfg.eps);
    affine_apply(&mut y, s, &gamma, &beta);
    assert_close("y", &values(&out.output), &y, 1e-14);
    assert_close("mean", &values(&out.stats.mean), &means, 1e-14);
    assert_close("inv_std", &values(&out.stats.inv_std), &invs, 1e-14);
    let n = (s[0] * s[2] * s[3]) as f64;
    let unbiased: Vec<f64> = invs
        .iter()
        .map(|inv| (1.0 / (inv * inv) - cfg.eps) * n / (n - 1.0))
        .collect();
    let want_rm: Vec<f64> = (0..4).map(|c| 0.7 * rm[c] + 0.3 * means[c]).collect();
    let want_rv: Vec<f64> = (0..4).map(|c| 0.7 * rv[c] + 0.3 * unbiased[c]).collect();
    assert_close(
        "running_mean",
        &values(out.running_mean.as_ref().unwrap()),
        &want_rm,
        1e-13,
    );
    assert_close(
        "running_var",
        &values(out.running_var.as_ref().unwrap()),
        &want_rv,
        1e-12,
    );

    // Without affine parameters or running statistics.
    let plain = batch_norm_train(&tensor(x.clone(), &s), None, None, None, &cfg).unwrap();
    let (y, _, _) = normalise_sets(&x, &sets, cfg.eps);
    assert_close("plain y", &values(&plain.output), &y, 1e-14);
    assert!(plain.running_mean.is_none() && plain.running_var.is_none());

    // Eval mode with the running statistics.
    let eval = batch_norm_eval(&tensor(x.clone(), &s), Some(&w), Some(&b), running, 1e-5).unwrap();
    let plane = s[2] * s[3];
    let want: Vec<f64> = x
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let c = (i / plane) % 4;
            (v - rm[c]) / (rv[c] + 1e-5).sqrt() * gamma[c] + beta[c]
        })
        .collect();
    assert_close("eval", &values(&eval), &want, 1e-14);
}

#[test]
fn group_norm_matches_the_definition() {
    let s = [2, 6, 3, 4];
    let x = random(10, &s);
    let (gamma, beta) = (random(11, &[6]), random(12, &[6]));
    let (w, b) = (tensor(gamma.clone(), &[6]), tensor(beta.clone(), &[6]));
    for groups in [1, 2, 3, 6] {
        let cfg = GroupNormConfig {
            num_groups: groups,
            eps: 1e-5,
        };
        let out = group_norm(&tensor(x.clone(), &s), Some(&w), Some(&b), &cfg).unwrap();
        let (mut y, means, invs) = normalise_sets(&x, &group_sets(s, groups), cfg.eps);
        affine_apply(&mut y, s, &gamma, &beta);
        assert_close(&format!("y G={groups}"), &values(&out.output), &y, 1e-14);
        assert_eq!(out.stats.mean.shape(), &[2, groups]);
        assert_close("mean", &values(&out.stats.mean), &means, 1e-14);
        assert_close("inv_std", &values(&out.stats.inv_std), &invs, 1e-14);
    }
}

#[test]
fn group_norm_with_one_channel_per_group_is_batch_norm_of_each_image() {
    let s = [1, 4, 5, 5];
    let x = tensor(random(20, &s), &s);
    let g = tensor(random(21, &s), &s);
    let w = tensor(random(22, &[4]), &[4]);
    let cfg = GroupNormConfig {
        num_groups: 4,
        eps: 1e-5,
    };
    let gn = group_norm(&x, Some(&w), None, &cfg).unwrap();
    let bn = batch_norm_train(&x, Some(&w), None, None, &BatchNormConfig::default()).unwrap();
    assert_close("forward", &values(&gn.output), &values(&bn.output), 1e-14);
    let gn_grads = group_norm_backward(&x, Some(&w), &gn.stats, &g, &cfg).unwrap();
    let bn_grads = batch_norm_backward(&x, Some(&w), &bn.stats, &g).unwrap();
    assert_close(
        "dx",
        &values(&gn_grads.input),
        &values(&bn_grads.input),
        1e-12,
    );
    assert_close(
        "dw",
        &values(&gn_grads.weight),
        &values(&bn_grads.weight),
        1e-12,
    );
    assert_close(
        "db",
        &values(&gn_grads.bias),
        &values(&bn_grads.bias),
        1e-12,
    );
}

/// Gradcheck of a normalisation over `[x | γ | β]`.
fn gradcheck_norm(
    what: &str,
    s: [usize; 4],
    seed: u64,
    forward: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<(Tensor, NormStats)>,
    backward: impl Fn(&Tensor, &Tensor, &NormStats, &Tensor) -> Result<NormGrads>,
) {
    let (nx, c) = (s.iter().product::<usize>(), s[1]);
    let split = |v: &[f64]| {
        (
            tensor(v[..nx].to_vec(), &s),
            tensor(v[nx..nx + c].to_vec(), &[c]),
            tensor(v[nx + c..].to_vec(), &[c]),
        )
    };
    let mut input = random(seed, &[nx + 2 * c]);
    for gamma in &mut input[nx..nx + c] {
        *gamma += 1.5; // keep γ away from 0, so every input matters
    }
    let report = gradcheck(
        |v| {
            let (x, w, b) = split(v);
            Ok(values(&forward(&x, &w, &b)?.0))
        },
        |v, g| {
            let (x, w, b) = split(v);
            let (_, stats) = forward(&x, &w, &b)?;
            let grads = backward(&x, &w, &stats, &tensor(g.to_vec(), &s))?;
            let mut flat = values(&grads.input);
            flat.extend(values(&grads.weight));
            flat.extend(values(&grads.bias));
            Ok(flat)
        },
        &input,
        &GradcheckOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(report.nonzero_entries > 0);
}

#[test]
fn gradcheck_batch_norm() {
    for (s, eps) in [
        ([2, 3, 3, 2], DEFAULT_EPS),
        ([3, 2, 1, 2], DRKD_BATCH_NORM_EPS),
        ([1, 2, 2, 3], 0.1),
    ] {
        let cfg = BatchNormConfig {
            eps,
            ..BatchNormConfig::default()
        };
        gradcheck_norm(
            &format!("batch_norm {s:?}"),
            s,
            30,
            |x, w, b| {
                let out = batch_norm_train(x, Some(w), Some(b), None, &cfg)?;
                Ok((out.output, out.stats))
            },
            |x, w, stats, g| batch_norm_backward(x, Some(w), stats, g),
        );
    }
    // Without γ: the gradient with respect to x alone (γ and β enter the flat vector but not the op).
    let s = [2, 2, 2, 2];
    let report = gradcheck(
        |v| {
            Ok(values(
                &batch_norm_train(
                    &tensor(v.to_vec(), &s),
                    None,
                    None,
                    None,
                    &Default::default(),
                )?
                .output,
            ))
        },
        |v, g| {
            let x = tensor(v.to_vec(), &s);
            let out = batch_norm_train(&x, None, None, None, &Default::default())?;
            Ok(values(
                &batch_norm_backward(&x, None, &out.stats, &tensor(g.to_vec(), &s))?.input,
            ))
        },
        &random(31, &s),
        &GradcheckOptions::default(),
    )
    .unwrap();
    assert!(report.nonzero_entries > 0);
}

#[test]
fn gradcheck_group_norm() {
    for (s, groups) in [
        ([2, 4, 2, 3], 2),
        ([1, 3, 3, 2], 1),
        ([2, 3, 2, 2], 3),
        ([1, 8, 1, 3], 4),
    ] {
        let cfg = GroupNormConfig {
            num_groups: groups,
            eps: DEFAULT_EPS,
        };
        gradcheck_norm(
            &format!("group_norm {s:?} G={groups}"),
            s,
            40,
            |x, w, b| {
                let out = group_norm(x, Some(w), Some(b), &cfg)?;
                Ok((out.output, out.stats))
            },
            |x, w, stats, g| group_norm_backward(x, Some(w), stats, g, &cfg),
        );
    }
}

#[test]
fn half_storage_matches_f64_on_the_rounded_inputs() {
    let s = [2, 8, 5, 6];
    for (dtype, tol) in [(DType::F32, 1e-6), (DType::F16, 5e-3), (DType::BF16, 2e-2)] {
        let cast = |v: Vec<f64>, shape: &[usize]| tensor(v, shape).to_dtype(dtype).unwrap();
        let wide = |t: &Tensor| t.to_dtype(DType::F64).unwrap();
        let x = cast(random(50, &s), &s);
        let g = cast(random(51, &s), &s);
        let w = cast(random(52, &[8]), &[8]);
        let b = cast(random(53, &[8]), &[8]);
        let bn =
            batch_norm_train(&x, Some(&w), Some(&b), None, &BatchNormConfig::default()).unwrap();
        let bn64 = batch_norm_train(
            &wide(&x),
            Some(&wide(&w)),
            Some(&wide(&b)),
            None,
            &BatchNormConfig::default(),
        )
        .unwrap();
        assert_eq!(
            (bn.output.dtype(), bn.stats.mean.dtype()),
            (dtype, compute_dtype(dtype))
        );
        assert_close(
            &format!("bn {dtype}"),
            &values(&bn.output),
            &values(&bn64.output),
            tol,
        );
        let grads = batch_norm_backward(&x, Some(&w), &bn.stats, &g).unwrap();
        let grads64 =
            batch_norm_backward(&wide(&x), Some(&wide(&w)), &bn64.stats, &wide(&g)).unwrap();
        assert_close(
            &format!("bn dx {dtype}"),
            &values(&grads.input),
            &values(&grads64.input),
            tol,
        );
        assert_close(
            &format!("bn dw {dtype}"),
            &values(&grads.weight),
            &values(&grads64.weight),
            tol,
        );
        let cfg = GroupNormConfig {
            num_groups: 4,
            eps: DEFAULT_EPS,
        };
        let gn = group_norm(&x, Some(&w), Some(&b), &cfg).unwrap();
        let gn64 = group_norm(&wide(&x), Some(&wide(&w)), Some(&wide(&b)), &cfg).unwrap();
        assert_close(
            &format!("gn {dtype}"),
            &values(&gn.output),
            &values(&gn64.output),
            tol,
        );
        let grads = group_norm_backward(&x, Some(&w), &gn.stats, &g, &cfg).unwrap();
        let grads64 =
            group_norm_backward(&wide(&x), Some(&wide(&w)), &gn64.stats, &wide(&g), &cfg).unwrap();
        assert_close(
            &format!("gn dx {dtype}"),
            &values(&grads.input),
            &values(&grads64.input),
            tol,
        );
        assert_close(
            &format!("gn db {dtype}"),
            &values(&grads.bias),
            &values(&grads64.bias),
            tol,
        );
    }
}

#[test]
fn empty_batches_give_empty_results() {
    let x = tensor(vec![], &[0, 4, 3, 3]);
    let (rm, rv) = (tensor(vec![0.5; 4], &[4]), tensor(vec![2.0; 4], &[4]));
    let running = RunningStats {
        mean: &rm,
        var: &rv,
    };
    let out = batch_norm_train(&x, None, None, Some(running), &BatchNormConfig::default()).unwrap();
    assert_eq!(out.output.shape(), &[0, 4, 3, 3]);
    assert_eq!(
        values(out.running_mean.as_ref().unwrap()),
        vec![0.5; 4],
        "unchanged"
    );
    assert_eq!(values(out.running_var.as_ref().unwrap()), vec![2.0; 4]);
    let grads = batch_norm_backward(&x, None, &out.stats, &x).unwrap();
    assert_eq!(
        (grads.input.shape(), values(&grads.weight)),
        (&[0, 4, 3, 3][..], vec![0.0; 4])
    );
    assert_eq!(
        batch_norm_eval(&x, None, None, running, 1e-5)
            .unwrap()
            .shape(),
        &[0, 4, 3, 3]
    );
    let cfg = GroupNormConfig {
        num_groups: 2,
        eps: 1e-5,
    };
    let gn = group_norm(&x, None, None, &cfg).unwrap();
    assert_eq!(
        (gn.output.shape(), gn.stats.mean.shape()),
        (&[0, 4, 3, 3][..], &[0, 2][..])
    );
    let grads = group_norm_backward(&x, None, &gn.stats, &x, &cfg).unwrap();
    assert_eq!(values(&grads.bias), vec![0.0; 4]);
}

#[test]
fn bad_inputs_are_clear_errors() {
    let s = [2, 4, 3, 3];
    let x = tensor(random(60, &s), &s);
    let c4 = tensor(vec![1.0; 4], &[4]);
    let c3 = tensor(vec![1.0; 3], &[3]);
    let c4_f32 = c4.to_dtype(DType::F32).unwrap();
    let bn = BatchNormConfig::default();
    let gn = GroupNormConfig {
        num_groups: 2,
        eps: 1e-5,
    };
    let stats = batch_norm_train(&x, None, None, None, &bn).unwrap().stats;
    let gstats = group_norm(&x, None, None, &gn).unwrap().stats;
    let e = |r: Result<BatchNormOutput>| r.unwrap_err().to_string();
    let eg = |r: Result<GroupNormOutput>| r.unwrap_err().to_string();
    let ed = |r: Result<NormGrads>| r.unwrap_err().to_string();
    let running = |m: &Tensor, v: &Tensor| {
        batch_norm_train(&x, None, None, Some(RunningStats { mean: m, var: v }), &bn)
            .unwrap_err()
            .to_string()
    };
    let cases: Vec<(String, &str)> = vec![
        (
            e(batch_norm_train(&tensor(vec![0.0; 12], &[3, 4]), None, None, None, &bn)),
            "`input`: expected shape [B, C, H, W], got [3, 4]",
        ),
        (
            e(batch_norm_train(&tensor(vec![], &[2, 0, 3, 3]), None, None, None, &bn)),
            "`input`: expected shape [B, C, H, W] with C, H, W > 0",
        ),
        (
            e(batch_norm_train(&tensor(vec![1.0; 4], &[1, 4, 1, 1]), None, None, None, &bn)),
            "`input`: training needs more than one value per channel, got shape [1, 4, 1, 1] (B·H·W = 1)",
        ),
        (e(batch_norm_train(&x, Some(&c3), None, None, &bn)), "`weight`: expected shape [4], got [3]"),
        (e(batch_norm_train(&x, None, Some(&c4_f32), None, &bn)), "`bias`: expected dtype f64, got f32"),
        (running(&c3, &c4), "`running_mean`: expected shape [4], got [3]"),
        (running(&c4, &c4_f32), "`running_var`: expected dtype f64, got f32"),
        (
            e(batch_norm_train(&x, None, None, None, &BatchNormConfig { eps: 0.0, ..bn })),
            "`eps`: must be finite and > 0, got 0",
        ),
        (
            e(batch_norm_train(&x, None, None, None, &BatchNormConfig { momentum: 1.5, ..bn })),
            "`momentum`: must be in [0, 1], got 1.5",
        ),
        (
            e(batch_norm_train(
                &Tensor::from_vec(vec![0i64; 72], &s).unwrap(),
                None,
                None,
                None,
                &bn,
            )),
            "`input`: expected dtype a float dtype",
        ),
        (
            ed(batch_norm_backward(&x, None, &stats, &tensor(vec![0.0; 36], &[1, 4, 3, 3]))),
            "`grad_output`: expected shape [2, 4, 3, 3], got [1, 4, 3, 3]",
        ),
        (
            ed(batch_norm_backward(&x, None, &gstats, &x)),
            "`stats.mean`: expected shape [4], got [2, 2]",
        ),
        (
            ed(batch_norm_backward(
                &x,
                None,
                &NormStats {
                    mean: c4_f32.try_clone().unwrap(),
                    inv_std: c4.try_clone().unwrap(),
                },
                &x,
            )),
            "`stats.mean`: expected dtype f64, got f32",
        ),
        (
            batch_norm_eval(&x, None, None, RunningStats { mean: &c4, var: &c3 }, 1e-5)
                .unwrap_err()
                .to_string(),
            "`running_var`: expected shape [4], got [3]",
        ),
        (
            batch_norm_eval(&x, None, None, RunningStats { mean: &c4, var: &c4 }, f64::NAN)
                .unwrap_err()
                .to_string(),
            "`eps`: must be finite and > 0",
        ),
        (
            eg(group_norm(&x, None, None, &GroupNormConfig { num_groups: 3, eps: 1e-5 })),
            "`num_groups`: must be > 0 and divide the 4 channels, got 3",
        ),
        (
            eg(group_norm(&x, None, None, &GroupNormConfig { num_groups: 0, eps: 1e-5 })),
            "`num_groups`: must be > 0 and divide the 4 channels, got 0",
        ),
        (eg(group_norm(&x, Some(&c3), None, &gn)), "`weight`: expected shape [4], got [3]"),
        (
            ed(group_norm_backward(&x, None, &stats, &x, &gn)),
            "`stats.mean`: expected shape [2, 2], got [4]",
        ),
        (
            ed(group_norm_backward(&x, None, &gstats, &x.to_dtype(DType::F32).unwrap(), &gn)),
            "`grad_output`: expected dtype f64, got f32",
        ),
    ];
    for (message, expected) in cases {
        assert!(
            message.contains(expected),
            "`{message}` does not mention `{expected}`"
        );
    }
}
