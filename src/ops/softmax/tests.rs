//! Gradchecks of both backward passes, stability at large logits, long rows, half storage, validation and
//! empty inputs on the CPU. PyTorch fixtures and CUDA parity live in tests/softmax.rs.

use super::*;
use crate::autograd::{gradcheck, GradcheckOptions};
use crate::tensor::DType;
use crate::testing::{assert_close, Rng};

fn tensor(data: Vec<f64>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(data, shape).unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_vec::<f64>().unwrap()
}

fn err(r: Result<impl std::fmt::Debug>) -> String {
    r.unwrap_err().to_string()
}

/// Straightforward f64 softmax of `x/T` per row, without the max shift (only for moderate logits).
fn naive(x: &[f64], cols: usize, t: f64, log: bool) -> Vec<f64> {
    x.chunks(cols)
        .flat_map(|row| {
            let sum: f64 = row.iter().map(|v| (v / t).exp()).sum();
            row.iter()
                .map(move |v| {
                    if log {
                        v / t - sum.ln()
                    } else {
                        (v / t).exp() / sum
                    }
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn gradcheck_softmax_and_log_softmax() {
    let shape = [3, 2, 5];
    for temperature in [1.0, 2.0, 0.5, -1.5] {
        for log in [false, true] {
            let x = Rng::new(1).normal_vec(30);
            let fwd = |x: &Tensor| {
                if log {
                    log_softmax_last_axis(x, temperature)
                } else {
                    softmax_last_axis(x, temperature)
                }
            };
            let report = gradcheck(
                |v| Ok(values(&fwd(&tensor(v.to_vec(), &shape))?)),
                |v, g| {
                    let y = fwd(&tensor(v.to_vec(), &shape))?;
                    let g = tensor(g.to_vec(), &shape);
                    let dx = if log {
                        log_softmax_last_axis_backward(&y, &g, temperature)?
                    } else {
                        softmax_last_axis_backward(&y, &g, temperature)?
                    };
                    Ok(values(&dx))
                },
                &x,
                &GradcheckOptions::default(),
            )
            .unwrap_or_else(|e| panic!("log={log} T={temperature}: {e}"));
            assert!(report.nonzero_entries > 0);
        }
    }
}

#[test]
fn matches_the_definition_and_is_stable_at_large_logits() {
    let x = Rng::new(2).normal_vec(4 * 17);
    for (t, log) in [(1.0, false), (3.0, true), (-0.7, false)] {
        let got = if log {
            log_softmax_last_axis(&tensor(x.clone(), &[4, 17]), t)
        } else {
            softmax_last_axis(&tensor(x.clone(), &[4, 17]), t)
        };
        assert_close(
            "definition",
            &values(&got.unwrap()),
            &naive(&x, 17, t, log),
            1e-14,
        );
    }
    // Shifting a row by ±1e4 changes nothing (the naive form overflows to inf/inf = NaN there).
    let shifted: Vec<f64> = x
        .iter()
        .enumerate()
        .map(|(i, v)| v + if i < 34 { 1e4 } else { -1e4 })
        .collect();
    for dtype in [DType::F64, DType::F32] {
        let p = values(
            &softmax_last_axis(
                &tensor(shifted.clone(), &[4, 17]).to_dtype(dtype).unwrap(),
                1.0,
            )
            .unwrap(),
        );
        let lp = values(
            &log_softmax_last_axis(
                &tensor(shifted.clone(), &[4, 17]).to_dtype(dtype).unwrap(),
                1.0,
            )
            .unwrap(),
        );
        assert!(p.iter().chain(&lp).all(|v| v.is_finite()), "{dtype}");
        // f32 rounds 1e4 + x to a 2^-10 grid: compare against the same rounded inputs in f64.
        let rounded = values(&tensor(shifted.clone(), &[4, 17]).to_dtype(dtype).unwrap());
        assert_close(
            "p",
            &p,
            &naive(
                &rounded
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v - if i < 34 { 1e4 } else { -1e4 })
                    .collect::<Vec<_>>(),
                17,
                1.0,
                false,
            ),
            1e-5,
        );
        for row in p.chunks(17) {
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-6);
        }
    }
}

#[test]
fn long_rows_in_f32_agree_with_f64() {
    let cols = 70_000;
    let x = Rng::new(3).normal_vec(2 * cols);
    let g = Rng::new(4).normal_vec(2 * cols);
    for log in [false, true] {
        let run = |dtype: DType| {
            let xt = tensor(x.clone(), &[2, cols]).to_dtype(dtype).unwrap();
            let gt = tensor(g.clone(), &[2, cols]).to_dtype(dtype).unwrap();
            let y = if log {
                log_softmax_last_axis(&xt, 0.8)
            } else {
                softmax_last_axis(&xt, 0.8)
            }
            .unwrap();
            let dx = if log {
                log_softmax_last_axis_backward(&y, &gt, 0.8)
            } else {
                softmax_last_axis_backward(&y, &gt, 0.8)
            }
            .unwrap();
            (values(&y), values(&dx))
        };
        let (want_y, want_dx) = run(DType::F64);
        let (got_y, got_dx) = run(DType::F32);
        assert_close("forward", &got_y, &want_y, 1e-5);
        assert_close("backward", &got_dx, &want_dx, 1e-4);
    }
}

#[test]
fn half_storage_rounds_once() {
    let x = tensor(Rng::new(5).normal_vec(3 * 80), &[3, 80]);
    for dtype in [DType::F16, DType::BF16] {
        let xh = x.to_dtype(dtype).unwrap();
        let got = softmax_last_axis(&xh, 2.0).unwrap();
        assert_eq!(got.dtype(), dtype);
        let want = softmax_last_axis(&xh.to_dtype(DType::F32).unwrap(), 2.0).unwrap();
        assert_eq!(values(&got), values(&want.to_dtype(dtype).unwrap()));
    }
}

#[test]
fn non_finite_rows_give_nan() {
    let x = tensor(
        vec![
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
            1.0,
            f64::NAN,
            0.0,
            1.0,
            f64::NEG_INFINITY,
            2.0,
        ],
        &[4, 2],
    );
    let p = values(&softmax_last_axis(&x, 1.0).unwrap());
    assert!(p[0].is_nan() && p[1].is_nan() && p[2].is_nan() && p[3].is_nan());
    // A single −∞ in a row is an ordinary zero probability.
    assert_eq!(&p[6..], &[0.0, 1.0]);
    let p = values(&softmax_last_axis(&tensor(vec![0.0, 0.0], &[2]), 1.0).unwrap());
    assert_eq!(p, vec![0.5, 0.5]);
}

#[test]
fn validation() {
    let x = tensor(vec![0.0; 6], &[2, 3]);
    for t in [0.0, f64::NAN, f64::INFINITY, -0.0, 1e-300] {
        let e = err(softmax_last_axis(&x, t));
        assert!(
            e.contains("`temperature`") && e.contains("finite and non-zero"),
            "{t}: {e}"
        );
        assert!(err(log_softmax_last_axis_backward(&x, &x, t)).contains("`temperature`"));
    }
    assert!(err(softmax_last_axis(&tensor(vec![1.0], &[]), 1.0)).contains("at least one dimension"));
    let g32 = x.to_dtype(DType::F32).unwrap();
    assert!(
        err(softmax_last_axis_backward(&x, &g32, 1.0)).contains("`grad_out`: expected dtype f64")
    );
    let e = err(log_softmax_last_axis_backward(
        &x,
        &tensor(vec![0.0; 3], &[3]),
        1.0,
    ));
    assert!(e.contains("`grad_out`: expected shape [2, 3]"), "{e}");
    let mut out = tensor(vec![0.0; 4], &[2, 2]);
    assert!(err(softmax_last_axis_into(&x, 1.0, &mut out)).contains("`out`"));
    let labels = Tensor::from_vec(vec![0i64; 6], &[2, 3]).unwrap();
    assert!(err(log_softmax_last_axis(&labels, 1.0)).contains("`x`"));
    assert!(err(softmax_last_axis_backward(&labels, &labels, 1.0)).contains("`output`"));
}

#[test]
fn empty_inputs() {
    for shape in [[0usize, 5], [3, 0]] {
        let x = tensor(vec![], &shape);
        assert_eq!(softmax_last_axis(&x, 1.0).unwrap().shape(), &shape);
        assert_eq!(
            log_softmax_last_axis_backward(&x, &x, 2.0).unwrap().shape(),
            &shape
        );
    }
}
