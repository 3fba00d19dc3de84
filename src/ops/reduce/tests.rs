//! Gradchecks of every backward, values at the edges (ties, NaN, empty axes, half storage), validation
//! and determinism on the CPU. PyTorch fixtures and CUDA parity live in tests/reduce.rs.

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

fn err(r: Result<impl std::fmt::Debug>) -> String {
    r.unwrap_err().to_string()
}

fn check(
    what: &str,
    forward: impl Fn(&[f64]) -> Result<Vec<f64>>,
    backward: impl Fn(&[f64], &[f64]) -> Result<Vec<f64>>,
    x: &[f64],
) {
    let report = gradcheck(forward, backward, x, &GradcheckOptions::default())
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(report.nonzero_entries > 0, "{what}: all-zero Jacobian");
}

// ---------------------------------------------------------------------------------------------------------
// Gradchecks (f64)

#[test]
fn gradcheck_full_reductions() {
    let shape = [3, 4, 2];
    for mean in [false, true] {
        check(
            if mean { "mean_all" } else { "sum_all" },
            |v| {
                let x = tensor(v.to_vec(), &shape);
                Ok(values(&if mean { mean_all(&x)? } else { sum_all(&x)? }))
            },
            |v, g| {
                let x = tensor(v.to_vec(), &shape);
                let g = tensor(g.to_vec(), &[]);
                let dx = if mean {
                    mean_all_backward(&x, &g)?
                } else {
                    sum_all_backward(&x, &g)?
                };
                Ok(values(&dx))
            },
            &random(1, &shape),
        );
    }
}

#[test]
fn gradcheck_axis_reductions() {
    let shape = [2, 3, 4, 2];
    let cases: [(&[isize], bool); 5] = [
        (&[1], true),
        (&[1, 3], false),
        (&[-1], false),
        (&[0, 2, 3], true),
        (&[3, 0, 1, 2], false),
    ];
    for (axes, keepdim) in cases {
        for mean in [false, true] {
            let x0 = random(2, &shape);
            let out_shape = sum_axes(&tensor(x0.clone(), &shape), axes, keepdim)
                .unwrap()
                .shape()
                .to_vec();
            check(
                &format!("axes {axes:?} keepdim {keepdim} mean {mean}"),
                |v| {
                    let x = tensor(v.to_vec(), &shape);
                    let y = if mean {
                        mean_axes(&x, axes, keepdim)?
                    } else {
                        sum_axes(&x, axes, keepdim)?
                    };
                    Ok(values(&y))
                },
                |v, g| {
                    let x = tensor(v.to_vec(), &shape);
                    let g = tensor(g.to_vec(), &out_shape);
                    let dx = if mean {
                        mean_axes_backward(&x, axes, keepdim, &g)?
                    } else {
                        sum_axes_backward(&x, axes, keepdim, &g)?
                    };
                    Ok(values(&dx))
                },
                &x0,
            );
        }
    }
}

#[test]
fn gradcheck_max_last_axis() {
    // Distinct values well apart, so no perturbation changes the argmax.
    let shape = [4, 5];
    let mut x: Vec<f64> = (0..20).map(|i| (i * 7 % 20) as f64 * 0.1).collect();
    x.swap(3, 17);
    check(
        "max_last_axis",
        |v| Ok(values(&max_last_axis(&tensor(v.to_vec(), &shape))?.values)),
        |v, g| {
            let x = tensor(v.to_vec(), &shape);
            let m = max_last_axis(&x)?;
            max_last_axis_backward(&x, &m.indices, &tensor(g.to_vec(), &[4])).map(|t| values(&t))
        },
        &x,
    );
}

// ---------------------------------------------------------------------------------------------------------
// Values

#[test]
fn axis_reductions_match_explicit_sums() {
    let x = tensor((0..24).map(f64::from).collect(), &[2, 3, 4]);
    let s = sum_axes(&x, &[1], false).unwrap();
    assert_eq!(s.shape(), &[2, 4]);
    assert_eq!(
        values(&s),
        vec![12.0, 15.0, 18.0, 21.0, 48.0, 51.0, 54.0, 57.0]
    );
    let m = mean_axes(&x, &[0, -1], true).unwrap();
    assert_eq!(m.shape(), &[1, 3, 1]);
    assert_eq!(values(&m), vec![7.5, 11.5, 15.5]);
    assert_eq!(values(&sum_all(&x).unwrap()), vec![276.0]);
    assert_eq!(values(&mean_all(&x).unwrap()), vec![11.5]);
    assert_eq!(sum_all(&x).unwrap().shape(), &[] as &[usize]);
    let g = tensor(vec![1.0, 2.0, 3.0], &[1, 3, 1]);
    let dx = mean_axes_backward(&x, &[0, -1], true, &g).unwrap();
    assert_eq!(&values(&dx)[..5], &[0.125, 0.125, 0.125, 0.125, 0.25]);
}

#[test]
fn max_ties_nan_and_indices() {
    let x = tensor(
        vec![
            1.0,
            3.0,
            3.0,
            2.0, // tie: first index
            -1.0,
            f64::NAN,
            5.0,
            f64::NAN, // NaN wins, first NaN
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
        ],
        &[3, 4],
    );
    let m = max_last_axis(&x).unwrap();
    assert_eq!(m.indices.to_vec::<i64>().unwrap(), vec![1, 1, 0]);
    assert_eq!(m.indices.dtype(), DType::I64);
    let v = values(&m.values);
    assert!(v[0] == 3.0 && v[1].is_nan() && v[2] == f64::NEG_INFINITY);
    let g = tensor(vec![10.0, 20.0, 30.0], &[3]);
    let dx = values(&max_last_axis_backward(&x, &m.indices, &g).unwrap());
    assert_eq!(dx, vec![0., 10., 0., 0., 0., 20., 0., 0., 30., 0., 0., 0.]);
    // Half storage: the values are exact elements.
    let h = tensor(vec![0.1, 0.7, 0.3], &[1, 3])
        .to_dtype(DType::BF16)
        .unwrap();
    let mh = max_last_axis(&h).unwrap();
    assert_eq!(mh.values.dtype(), DType::BF16);
    assert_eq!(values(&mh.values), vec![half::bf16::from_f64(0.7).to_f64()]);
    // Rank 1: a scalar result.
    let m1 = max_last_axis(&tensor(vec![2.0, 9.0, 4.0], &[3])).unwrap();
    assert_eq!(
        (m1.values.shape(), values(&m1.values)),
        (&[] as &[usize], vec![9.0])
    );
}

#[test]
fn half_sums_accumulate_and_return_f32() {
    // 70 000 ones overflow f16's range (65 504) but not the f32 accumulator.
    let x = tensor(vec![1.0; 70_000], &[70_000])
        .to_dtype(DType::F16)
        .unwrap();
    let s = sum_all(&x).unwrap();
    assert_eq!(s.dtype(), DType::F32);
    assert_eq!(values(&s), vec![70_000.0]);
    assert_eq!(mean_all(&x).unwrap().dtype(), DType::F32);
    // The gradient comes back in x's dtype, from an f32 or an f16 upstream.
    let g32 = tensor(vec![0.5], &[]).to_dtype(DType::F32).unwrap();
    let g16 = tensor(vec![0.5], &[]).to_dtype(DType::F16).unwrap();
    for g in [&g32, &g16] {
        let dx = sum_all_backward(&x, g).unwrap();
        assert_eq!((dx.dtype(), dx.shape()), (DType::F16, &[70_000usize][..]));
        assert!(values(&dx).iter().all(|&v| v == 0.5));
    }
    let d = mean_all_backward(
        &tensor(vec![1.0; 4], &[4]).to_dtype(DType::BF16).unwrap(),
        &g32,
    )
    .unwrap();
    assert_eq!(values(&d), vec![0.125; 4]);
    // Axis sums keep x's dtype.
    let a = sum_axes(
        &tensor(vec![1.5; 6], &[2, 3]).to_dtype(DType::BF16).unwrap(),
        &[1],
        false,
    )
    .unwrap();
    assert_eq!((a.dtype(), values(&a)), (DType::BF16, vec![4.5, 4.5]));
}

#[test]
fn f32_sums_agree_with_f64() {
    let v = random(3, &[1_000_003]);
    let want = values(&sum_all(&tensor(v.clone(), &[1_000_003])).unwrap());
    let x32 = tensor(v, &[1_000_003]).to_dtype(DType::F32).unwrap();
    let got = values(&sum_all(&x32).unwrap());
    // Chunked order keeps the f32 error near √n·ε relative to the largest term.
    assert!((got[0] - want[0]).abs() < 1e-2, "{got:?} vs {want:?}");
    let x = tensor(random(4, &[50, 300, 7]), &[50, 300, 7]);
    let want = values(&sum_axes(&x, &[0, 2], false).unwrap());
    let got = values(&sum_axes(&x.to_dtype(DType::F32).unwrap(), &[0, 2], false).unwrap());
    assert_close("sum_axes f32", &got, &want, 1e-6);
}

#[test]
fn cpu_results_do_not_depend_on_the_thread_count() {
    let x = tensor(random(5, &[300_001]), &[300_001])
        .to_dtype(DType::F32)
        .unwrap();
    let y = tensor(random(6, &[64, 5000]), &[64, 5000])
        .to_dtype(DType::F32)
        .unwrap();
    let bits = |t: &Tensor| values(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let run = || {
        (
            bits(&sum_all(&x).unwrap()),
            bits(&mean_axes(&y, &[1], false).unwrap()),
        )
    };
    let many = run();
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(run);
    assert_eq!(many, one);
}

// ---------------------------------------------------------------------------------------------------------
// Validation and empty inputs

#[test]
fn axes_must_be_in_range_distinct_and_present() {
    let x = tensor(vec![0.0; 24], &[2, 3, 4]);
    let e = err(sum_axes(&x, &[3], false));
    assert!(
        e.contains("`axes`") && e.contains("axis 3 is out of range for a tensor of rank 3"),
        "{e}"
    );
    assert!(err(sum_axes(&x, &[-4], false)).contains("axis -4 is out of range"));
    let e = err(mean_axes(&x, &[1, -2], true));
    assert!(e.contains("axis 1 appears twice"), "{e}");
    assert!(err(sum_axes(&x, &[], true)).contains("at least one axis"));
    assert!(err(sum_axes_backward(&x, &[5], true, &x)).contains("`axes`"));
    let scalar = tensor(vec![1.0], &[]);
    assert!(err(sum_axes(&scalar, &[0], false)).contains("rank 0"));
    let seven = tensor(vec![1.0; 2], &[1, 1, 1, 1, 1, 1, 2]);
    assert!(err(sum_axes(&seven, &[0], false)).contains("at most 6"));
    // Full reductions have no rank limit.
    assert_eq!(values(&sum_all(&seven).unwrap()), vec![2.0]);
}

#[test]
fn gradient_and_output_arguments_are_checked() {
    let x = tensor(vec![0.0; 6], &[2, 3]);
    let e = err(sum_all_backward(&x, &tensor(vec![1.0], &[1])));
    assert!(e.contains("`grad_out`: expected shape []"), "{e}");
    let h = x.to_dtype(DType::F16).unwrap();
    let e = err(sum_all_backward(&h, &tensor(vec![1.0], &[])));
    assert!(
        e.contains("`grad_out`")
            && e.contains("f32 (the sum's dtype) or f16")
            && e.contains("got f64"),
        "{e}"
    );
    let e = err(sum_axes_backward(
        &x,
        &[1],
        false,
        &tensor(vec![1.0; 2], &[2, 1]),
    ));
    assert!(e.contains("`grad_out`: expected shape [2]"), "{e}");
    let e = err(mean_axes_backward(
        &x,
        &[1],
        false,
        &tensor(vec![1.0; 2], &[2]).to_dtype(DType::F32).unwrap(),
    ));
    assert!(e.contains("`grad_out`: expected dtype f64"), "{e}");
    let mut out = tensor(vec![0.0; 3], &[3]);
    assert!(err(sum_axes_into(&x, &[1], false, &mut out)).contains("`out`: expected shape [2]"));
    let labels = Tensor::from_vec(vec![0i64; 6], &[2, 3]).unwrap();
    assert!(err(sum_all(&labels)).contains("`x`"));
    assert!(err(max_last_axis(&labels)).contains("`x`"));
}

#[test]
fn max_arguments_are_checked() {
    let x = tensor(vec![1.0, 2.0, 3.0, 4.0], &[2, 2]);
    let g = tensor(vec![1.0, 1.0], &[2]);
    let bad = Tensor::from_vec(vec![0i64, 2], &[2]).unwrap();
    let e = err(max_last_axis_backward(&x, &bad, &g));
    assert!(e.contains("`indices`: entry 1 is 2, outside [0, 2)"), "{e}");
    let neg = Tensor::from_vec(vec![-1i64, 0], &[2]).unwrap();
    assert!(err(max_last_axis_backward(&x, &neg, &g)).contains("entry 0 is -1"));
    let f = tensor(vec![0.0, 1.0], &[2]);
    assert!(err(max_last_axis_backward(&x, &f, &g)).contains("`indices`: expected dtype i64"));
    let ok = Tensor::from_vec(vec![0i64, 1], &[2]).unwrap();
    assert!(
        err(max_last_axis_backward(&x, &ok, &tensor(vec![1.0; 3], &[3]))).contains("`grad_values`")
    );
    assert!(err(max_last_axis(&tensor(vec![1.0], &[]))).contains("at least one dimension"));
    let e = err(max_last_axis(&tensor(vec![], &[3, 0])));
    assert!(
        e.contains("non-empty last axis") && e.contains("[3, 0]"),
        "{e}"
    );
}

#[test]
fn empty_inputs() {
    let e = tensor(vec![], &[0, 4]);
    assert_eq!(values(&sum_all(&e).unwrap()), vec![0.0]);
    assert!(values(&mean_all(&e).unwrap())[0].is_nan());
    assert_eq!(
        sum_all_backward(&e, &tensor(vec![1.0], &[]))
            .unwrap()
            .shape(),
        &[0, 4]
    );
    assert_eq!(sum_axes(&e, &[1], false).unwrap().shape(), &[0]);
    assert_eq!(values(&sum_axes(&e, &[0], false).unwrap()), vec![0.0; 4]);
    let m = values(&mean_axes(&e, &[0], true).unwrap());
    assert!(
        m.len() == 4 && m.iter().all(|v| v.is_nan()),
        "mean over an empty axis is NaN"
    );
    let mut out = tensor(vec![7.0; 4], &[4]);
    sum_axes_into(&e, &[0], false, &mut out).unwrap();
    assert_eq!(values(&out), vec![0.0; 4]);
    let mx = max_last_axis(&e).unwrap();
    assert_eq!(
        (mx.values.shape(), mx.indices.shape()),
        (&[0usize][..], &[0usize][..])
    );
    assert_eq!(
        max_last_axis(&tensor(vec![], &[0, 0]))
            .unwrap()
            .values
            .shape(),
        &[0]
    );
    let idx = Tensor::from_vec(Vec::<i64>::new(), &[0]).unwrap();
    assert_eq!(
        max_last_axis_backward(&e, &idx, &tensor(vec![], &[0]))
            .unwrap()
            .shape(),
        &[0, 4]
    );
}
