//! Gradchecks of every backward, a naive multi-index reference for broadcasting and reductions, half
//! storage, validation and empty inputs on the CPU. PyTorch fixtures and CUDA parity live in
//! tests/elementwise.rs.

use super::*;
use crate::autograd::{gradcheck, GradcheckOptions};
use crate::testing::{assert_close, Rng};

fn tensor(data: Vec<f64>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(data, shape).unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_vec::<f64>().unwrap()
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

fn random(seed: u64, shape: &[usize]) -> Vec<f64> {
    Rng::new(seed).normal_vec(numel(shape))
}

/// Values with `|v| ≥ lo`, away from the kinks of relu/abs and the pole of division.
fn away_from_zero(seed: u64, n: usize, lo: f64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let m = rng.uniform(lo, 2.0);
            if rng.below(2) == 0 {
                m
            } else {
                -m
            }
        })
        .collect()
}

fn check(
    what: &str,
    forward: impl Fn(&[f64]) -> Result<Vec<f64>>,
    backward: impl Fn(&[f64], &[f64]) -> Result<Vec<f64>>,
    x: &[f64],
) {
    let report = gradcheck(forward, backward, x, &GradcheckOptions::default())
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        report.nonzero_entries > 0,
        "{what}: all-zero Jacobian proves nothing"
    );
}

// ---------------------------------------------------------------------------------------------------------
// Naive references: one multi-index per element, no merging

fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = i % shape[d];
        i /= shape[d];
    }
    idx
}

/// The flat position in `shape` (right-aligned, broadcast) of the full-shape multi-index `idx`.
fn broadcast_position(idx: &[usize], shape: &[usize]) -> usize {
    let lead = idx.len() - shape.len();
    shape.iter().enumerate().fold(0, |pos, (d, &n)| {
        pos * n + if n == 1 { 0 } else { idx[lead + d] }
    })
}

fn naive_binary(op: BinaryOp, a: &[f64], sa: &[usize], b: &[f64], sb: &[usize]) -> Vec<f64> {
    let full = broadcast_shape(sa, sb).unwrap();
    (0..numel(&full))
        .map(|i| {
            let idx = unravel(i, &full);
            let (x, y) = (
                a[broadcast_position(&idx, sa)],
                b[broadcast_position(&idx, sb)],
            );
            cpu::binary_value(op, x, y)
        })
        .collect()
}

fn naive_sum_to(x: &[f64], full: &[usize], target: &[usize]) -> Vec<f64> {
    let mut out = vec![0.0; numel(target)];
    for (i, &v) in x.iter().enumerate() {
        out[broadcast_position(&unravel(i, full), target)] += v;
    }
    out
}

/// Random broadcast-compatible pairs of rank ≤ 6 (a dimension of `b` is dropped, set to 1, or kept).
fn random_pair(rng: &mut Rng) -> (Vec<usize>, Vec<usize>) {
    let rank = rng.below(7);
    let full: Vec<usize> = (0..rank).map(|_| 1 + rng.below(4)).collect();
    let mut a = full.clone();
    let mut b = full.clone();
    for d in 0..rank {
        match rng.below(3) {
            0 => a[d] = 1,
            1 => b[d] = 1,
            _ => {}
        }
    }
    let drop = rng.below(rank + 1);
    (a, b[drop..].to_vec())
}

#[test]
fn broadcasting_matches_a_naive_reference_on_random_shapes() {
    let mut rng = Rng::new(11);
    for case in 0..200 {
        let (sa, sb) = random_pair(&mut rng);
        let (a, b) = (
            rng.normal_vec(numel(&sa)),
            away_from_zero(case, numel(&sb), 0.5),
        );
        let (ta, tb) = (tensor(a.clone(), &sa), tensor(b.clone(), &sb));
        for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div] {
            let got = binary(op, &ta, &tb).unwrap();
            let want = naive_binary(op, &a, &sa, &b, &sb);
            assert_eq!(got.shape(), broadcast_shape(&sa, &sb).unwrap().as_slice());
            assert_eq!(values(&got), want, "{op:?} {sa:?} {sb:?}");
            // Swapped operands exercise the other side's strides.
            let got = binary(op, &tb, &ta).unwrap();
            assert_eq!(
                values(&got),
                naive_binary(op, &b, &sb, &a, &sa),
                "{op:?} {sb:?} {sa:?}"
            );
        }
    }
}

#[test]
fn sum_to_shape_matches_a_naive_reference_on_random_shapes() {
    let mut rng = Rng::new(12);
    for _ in 0..200 {
        let (target, _) = random_pair(&mut rng);
        // A full shape that `target` broadcasts to: its dimensions, 1s replaced, plus leading ones.
        let lead = rng.below(3).min(MAX_RANK - target.len());
        let mut full: Vec<usize> = (0..lead).map(|_| 1 + rng.below(3)).collect();
        full.extend(
            target
                .iter()
                .map(|&d| if d == 1 { 1 + rng.below(3) } else { d }),
        );
        let x = rng.normal_vec(numel(&full));
        let got = sum_to_shape(&tensor(x.clone(), &full), &target).unwrap();
        assert_eq!(got.shape(), target.as_slice());
        assert_close(
            &format!("{full:?} -> {target:?}"),
            &values(&got),
            &naive_sum_to(&x, &full, &target),
            1e-14,
        );
    }
}

#[test]
fn broadcast_to_matches_a_naive_reference() {
    let x = random(13, &[3, 1, 4]);
    let got = broadcast_to(&tensor(x.clone(), &[3, 1, 4]), &[2, 3, 5, 4]).unwrap();
    let want: Vec<f64> = (0..numel(&[2, 3, 5, 4]))
        .map(|i| x[broadcast_position(&unravel(i, &[2, 3, 5, 4]), &[3, 1, 4])])
        .collect();
    assert_eq!(values(&got), want);
}

// ---------------------------------------------------------------------------------------------------------
// Gradchecks (f64, PyTorch tolerances)

#[test]
fn gradcheck_binary_ops_with_broadcasting() {
    let shapes: [(&[usize], &[usize]); 5] = [
        (&[2, 3, 4], &[2, 3, 4]),
        (&[2, 1, 3], &[4, 1]),
        (&[4], &[2, 3, 4]),
        (&[], &[3, 2]),
        (&[2, 3, 2, 2], &[1, 3, 1, 1]),
    ];
    for (case, (sa, sb)) in shapes.into_iter().enumerate() {
        let (na, nb) = (numel(sa), numel(sb));
        let full = broadcast_shape(sa, sb).unwrap();
        let mut x = random(20 + case as u64, sa);
        x.extend(away_from_zero(30 + case as u64, nb, 0.5));
        let split = |v: &[f64]| (tensor(v[..na].to_vec(), sa), tensor(v[na..].to_vec(), sb));
        for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div] {
            check(
                &format!("{op:?} {sa:?} {sb:?}"),
                |v| {
                    let (a, b) = split(v);
                    Ok(values(&binary(op, &a, &b)?))
                },
                |v, g| {
                    let (a, b) = split(v);
                    let grads = binary_backward(op, &a, &b, &tensor(g.to_vec(), &full))?;
                    assert_eq!(grads.grad_a.shape(), sa);
                    assert_eq!(grads.grad_b.shape(), sb);
                    let mut flat = values(&grads.grad_a);
                    flat.extend(values(&grads.grad_b));
                    Ok(flat)
                },
                &x,
            );
        }
    }
}

#[test]
fn gradcheck_sum_to_shape_and_broadcast_to() {
    let (full, target) = ([2, 3, 4], [3, 1]);
    check(
        "sum_to_shape",
        |v| Ok(values(&sum_to_shape(&tensor(v.to_vec(), &full), &target)?)),
        |v, g| {
            let x = tensor(v.to_vec(), &full);
            sum_to_shape_backward(&x, &tensor(g.to_vec(), &target)).map(|t| values(&t))
        },
        &random(40, &full),
    );
    check(
        "broadcast_to",
        |v| Ok(values(&broadcast_to(&tensor(v.to_vec(), &target), &full)?)),
        |_, g| sum_to_shape(&tensor(g.to_vec(), &full), &target).map(|t| values(&t)),
        &random(41, &target),
    );
}

#[test]
fn gradcheck_scale() {
    let shape = [3, 5];
    check(
        "scale",
        |v| Ok(values(&scale(&tensor(v.to_vec(), &shape), -1.75)?)),
        |_, g| scale_backward(&tensor(g.to_vec(), &shape), -1.75).map(|t| values(&t)),
        &random(42, &shape),
    );
}

#[test]
fn gradcheck_unary_ops() {
    let shape = [4, 6];
    let n = numel(&shape);
    for op in UnaryOp::ALL {
        let x: Vec<f64> = match op {
            // Positive domain, away from 0 where log and sqrt blow up.
            UnaryOp::Log | UnaryOp::Sqrt => {
                away_from_zero(50, n, 0.5).iter().map(|v| v.abs()).collect()
            }
            _ => away_from_zero(51, n, 0.1),
        };
        check(
            op.name(),
            |v| Ok(values(&unary(op, &tensor(v.to_vec(), &shape))?)),
            |v, g| {
                let x = tensor(v.to_vec(), &shape);
                let y = unary(op, &x)?;
                let g = tensor(g.to_vec(), &shape);
                // Through the named entry point too: both must agree bitwise.
                let generic = unary_backward(op, Some(&x), Some(&y), &g)?;
                let named = match op {
                    UnaryOp::Neg => neg_backward(&g)?,
                    UnaryOp::Relu => relu_backward(&x, &g)?,
                    UnaryOp::Sigmoid => sigmoid_backward(&y, &g)?,
                    UnaryOp::Exp => exp_backward(&y, &g)?,
                    UnaryOp::Log => log_backward(&x, &g)?,
                    UnaryOp::Sqrt => sqrt_backward(&y, &g)?,
                    UnaryOp::Square => square_backward(&x, &g)?,
                    UnaryOp::Abs => abs_backward(&x, &g)?,
                };
                assert_eq!(values(&generic), values(&named), "{}", op.name());
                Ok(values(&generic))
            },
            &x,
        );
    }
}

// ---------------------------------------------------------------------------------------------------------
// Values at the edges

#[test]
fn unary_values_and_kinks() {
    let x = tensor(vec![-2.0, -0.0, 0.0, 3.0, f64::NAN], &[5]);
    let g = tensor(vec![1.0; 5], &[5]);
    let v = |t: Tensor| values(&t);
    let relu_x = v(relu(&x).unwrap());
    assert_eq!(&relu_x[..4], &[0.0, 0.0, 0.0, 3.0]);
    assert!(relu_x[4].is_nan());
    let dr = v(relu_backward(&x, &g).unwrap());
    assert_eq!(&dr[..4], &[0.0, 0.0, 0.0, 1.0], "relu' = 0 at 0");
    assert!(dr[4].is_nan());
    let da = v(abs_backward(&x, &g).unwrap());
    assert_eq!(&da[..4], &[-1.0, 0.0, 0.0, 1.0], "abs' = 0 at 0");
    assert!(da[4].is_nan());
    // sigmoid without overflow at large |x|; log/sqrt outside their domains.
    let s = v(sigmoid(&tensor(vec![-800.0, 800.0, 0.0], &[3])).unwrap());
    assert_eq!(s, vec![0.0, 1.0, 0.5]);
    let s32 = sigmoid(
        &tensor(vec![-100.0, 100.0], &[2])
            .to_dtype(DType::F32)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        values(&s32),
        vec![(-100f32).exp() as f64 / (1.0 + (-100f32).exp() as f64), 1.0]
    );
    let l = v(log(&tensor(vec![0.0, -1.0, 1.0], &[3])).unwrap());
    assert!(l[0] == f64::NEG_INFINITY && l[1].is_nan() && l[2] == 0.0);
    assert!(v(sqrt(&tensor(vec![-1.0], &[1])).unwrap())[0].is_nan());
    let ds = v(sqrt_backward(&tensor(vec![0.0], &[1]), &tensor(vec![1.0], &[1])).unwrap());
    assert_eq!(ds, vec![f64::INFINITY]);
}

#[test]
fn scale_add_scaled_fill_and_full() {
    let x = tensor(vec![1.0, -2.0, 3.5], &[3]);
    assert_eq!(values(&scale(&x, 2.0).unwrap()), vec![2.0, -4.0, 7.0]);
    let mut acc = tensor(vec![10.0, 20.0, 30.0], &[3]);
    add_scaled(&mut acc, &x, -0.5).unwrap();
    assert_eq!(values(&acc), vec![9.5, 21.0, 28.25]);
    let mut t = tensor(vec![1.0; 4], &[2, 2]);
    fill(&mut t, -3.0).unwrap();
    assert_eq!(values(&t), vec![-3.0; 4]);
    let f = full(&[2, 3], 0.1, DType::F16, &Device::Cpu).unwrap();
    assert_eq!((f.shape(), f.dtype()), (&[2usize, 3][..], DType::F16));
    // Rounded once, straight from f64.
    assert!(values(&f)
        .iter()
        .all(|&v| v == half::f16::from_f64(0.1).to_f64()));
    let z = full(&[2], -0.0, DType::F32, &Device::Cpu).unwrap();
    assert!(values(&z).iter().all(|v| *v == 0.0 && v.is_sign_negative()));
    let nan = full(&[1], f64::NAN, DType::BF16, &Device::Cpu).unwrap();
    assert!(values(&nan)[0].is_nan());
}

#[test]
fn half_storage_rounds_once_from_f32_arithmetic() {
    let mut rng = Rng::new(60);
    let (sa, sb) = ([3, 1, 5], [4, 1]);
    let a = rng.normal_vec(15);
    let b = away_from_zero(61, 4, 0.5);
    for dtype in [DType::F16, DType::BF16] {
        let (ta, tb) = (
            tensor(a.clone(), &sa).to_dtype(dtype).unwrap(),
            tensor(b.clone(), &sb).to_dtype(dtype).unwrap(),
        );
        let got = div(&ta, &tb).unwrap();
        assert_eq!(got.dtype(), dtype);
        // The f32 computation on the rounded inputs, rounded once.
        let (a32, b32) = (
            ta.to_dtype(DType::F32).unwrap(),
            tb.to_dtype(DType::F32).unwrap(),
        );
        let want = div(&a32, &b32).unwrap().to_dtype(dtype).unwrap();
        assert_eq!(values(&got), values(&want), "{dtype}");
        let g = tensor(rng.normal_vec(60), &[3, 4, 5])
            .to_dtype(dtype)
            .unwrap();
        let grads = div_backward(&ta, &tb, &g).unwrap();
        let want = div_backward(&a32, &b32, &g.to_dtype(DType::F32).unwrap()).unwrap();
        assert_eq!(
            values(&grads.grad_b),
            values(&want.grad_b.to_dtype(dtype).unwrap())
        );
        let e = exp(&ta).unwrap();
        assert_eq!(
            values(&e),
            values(&exp(&a32).unwrap().to_dtype(dtype).unwrap())
        );
    }
}

#[test]
fn f32_agrees_with_f64() {
    let mut rng = Rng::new(62);
    let (sa, sb) = ([8, 16, 5, 7], [1, 16, 1, 1]);
    let a = rng.normal_vec(numel(&sa));
    let b = away_from_zero(63, 16, 0.5);
    let g = rng.normal_vec(numel(&sa));
    let f32_of = |v: &[f64], s: &[usize]| tensor(v.to_vec(), s).to_dtype(DType::F32).unwrap();
    for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div] {
        let want = binary_backward(
            op,
            &tensor(a.clone(), &sa),
            &tensor(b.clone(), &sb),
            &tensor(g.clone(), &sa),
        )
        .unwrap();
        let got =
            binary_backward(op, &f32_of(&a, &sa), &f32_of(&b, &sb), &f32_of(&g, &sa)).unwrap();
        assert_eq!(got.grad_b.dtype(), DType::F32);
        assert_close(
            &format!("{op:?} da"),
            &values(&got.grad_a),
            &values(&want.grad_a),
            1e-6,
        );
        assert_close(
            &format!("{op:?} db"),
            &values(&got.grad_b),
            &values(&want.grad_b),
            1e-5,
        );
    }
}

// ---------------------------------------------------------------------------------------------------------
// Validation and empty inputs

fn err(r: Result<impl std::fmt::Debug>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn incompatible_broadcast_names_both_shapes() {
    let a = tensor(vec![0.0; 6], &[2, 3]);
    let b = tensor(vec![0.0; 4], &[4]);
    let e = err(add(&a, &b));
    assert!(
        e.contains("`b`") && e.contains("[2, 3]") && e.contains("got [4]"),
        "{e}"
    );
    let g = tensor(vec![0.0; 6], &[2, 3]);
    assert!(err(add_backward(&a, &b, &g)).contains("[2, 3]"));
}

#[test]
fn rank_above_six_is_an_error() {
    let seven = tensor(vec![1.0; 2], &[1, 1, 1, 1, 1, 1, 2]);
    let six = tensor(vec![1.0; 2], &[1, 1, 1, 1, 1, 2]);
    let e = err(add(&seven, &six));
    assert!(
        e.contains("`a`") && e.contains("at most 6 dimensions"),
        "{e}"
    );
    let e = err(mul(&six, &seven));
    assert!(e.contains("`b`") && e.contains("at most 6"), "{e}");
    assert!(err(sum_to_shape(&seven, &[2])).contains("at most 6"));
    assert!(err(broadcast_to(&six, &[1, 1, 1, 1, 1, 1, 2])).contains("`shape`"));
    // Unary ops have no rank limit.
    assert!(relu(&seven).is_ok());
}

#[test]
fn dtype_mismatches_are_errors() {
    let a = tensor(vec![1.0; 3], &[3]);
    let b = a.to_dtype(DType::F32).unwrap();
    let e = err(add(&a, &b));
    assert!(e.contains("`b`: expected dtype f64, got f32"), "{e}");
    let labels = Tensor::from_vec(vec![1i64, 2, 3], &[3]).unwrap();
    assert!(err(relu(&labels)).contains("`x`"));
    assert!(err(add(&labels, &labels)).contains("float dtype"));
    let g32 = tensor(vec![1.0; 3], &[3]).to_dtype(DType::F32).unwrap();
    assert!(err(add_backward(&a, &a, &g32)).contains("`grad_out`"));
    assert!(err(relu_backward(&a, &g32)).contains("`input`"));
    let mut acc = a.try_clone().unwrap();
    assert!(err(add_scaled(&mut acc, &b, 1.0)).contains("`x`: expected dtype f64"));
    assert!(err(full(&[2], 1.0, DType::I64, &Device::Cpu)).contains("`dtype`"));
}

#[test]
fn shape_and_argument_errors() {
    let x = tensor(vec![1.0; 24], &[2, 3, 4]);
    let e = err(sum_to_shape(&x, &[5]));
    assert!(
        e.contains("`shape`") && e.contains("[2, 3, 4]") && e.contains("got [5]"),
        "{e}"
    );
    assert!(err(sum_to_shape(&x, &[1, 2, 3, 4])).contains("rank at most 3"));
    assert!(err(broadcast_to(&x, &[3, 4])).contains("`x`"));
    let e = err(add_backward(&x, &x, &tensor(vec![1.0; 6], &[2, 3])));
    assert!(e.contains("`grad_out`: expected shape [2, 3, 4]"), "{e}");
    let e = err(sum_to_shape_backward(&x, &tensor(vec![1.0; 5], &[5])));
    assert!(e.contains("`grad_out`"), "{e}");
    let mut acc = tensor(vec![0.0; 3], &[3]);
    let e = err(add_scaled(&mut acc, &tensor(vec![0.0; 4], &[4]), 1.0));
    assert!(
        e.contains("`x`: expected shape [3] (the shape of `acc`), got [4]"),
        "{e}"
    );
    assert!(
        err(add_scaled(&mut acc, &tensor(vec![0.0; 3], &[3]), f64::NAN))
            .contains("`alpha`: must be finite")
    );
    assert!(err(scale(&x, f64::INFINITY)).contains("`s`: must be finite"));
    assert!(err(scale_backward(&labels_like(&x), 1.0)).contains("`grad_out`"));
    let g = tensor(vec![1.0; 24], &[2, 3, 4]);
    let e = err(unary_backward(UnaryOp::Sigmoid, Some(&x), None, &g));
    assert!(e.contains("`output`") && e.contains("sigmoid"), "{e}");
    let e = err(unary_backward(UnaryOp::Log, None, Some(&x), &g));
    assert!(e.contains("`input`") && e.contains("log"), "{e}");
    let e = err(exp_backward(&tensor(vec![1.0; 4], &[4]), &g));
    assert!(e.contains("`output`: expected shape [2, 3, 4]"), "{e}");
    // Output buffers: shape, dtype.
    let mut wrong = tensor(vec![0.0; 6], &[2, 3]);
    assert!(
        err(unary_into(UnaryOp::Exp, &x, &mut wrong)).contains("`out`: expected shape [2, 3, 4]")
    );
    let mut wrong = x.to_dtype(DType::F32).unwrap();
    assert!(err(binary_into(BinaryOp::Add, &x, &x, &mut wrong))
        .contains("`out`: expected f64 on cpu, got f32"));
    let mut wrong = tensor(vec![0.0; 3], &[3]);
    assert!(err(sum_to_shape_into(&x, &mut wrong)).contains("`shape`"));
}

fn labels_like(x: &Tensor) -> Tensor {
    Tensor::from_vec(vec![0i64; x.numel()], x.shape()).unwrap()
}

#[test]
fn oversized_broadcasts_are_errors() {
    // [2^16, 1] + [1, 2^15] = 2^31 elements: beyond the kernels' 32-bit indices (checked before any
    // allocation).
    let a = tensor(vec![0.0; 1 << 16], &[1 << 16, 1]);
    let b = tensor(vec![0.0; 1 << 15], &[1, 1 << 15]);
    let e = err(add(&a, &b));
    assert!(e.contains("2^31"), "{e}");
}

#[test]
fn empty_tensors_give_empty_results() {
    let a = tensor(vec![], &[0, 3]);
    let b = tensor(vec![1.0, 2.0, 3.0], &[1, 3]);
    let out = add(&a, &b).unwrap();
    assert_eq!(out.shape(), &[0, 3]);
    let grads = mul_backward(&a, &b, &tensor(vec![], &[0, 3])).unwrap();
    assert_eq!(grads.grad_a.shape(), &[0, 3]);
    // b was broadcast along an empty axis: its gradient is an empty sum.
    assert_eq!(values(&grads.grad_b), vec![0.0; 3]);
    assert_eq!(values(&sum_to_shape(&a, &[1, 3]).unwrap()), vec![0.0; 3]);
    assert_eq!(values(&sum_to_shape(&a, &[]).unwrap()), vec![0.0]);
    assert_eq!(sum_to_shape(&a, &[0, 3]).unwrap().shape(), &[0, 3]);
    for op in UnaryOp::ALL {
        assert_eq!(unary(op, &a).unwrap().shape(), &[0, 3]);
        assert_eq!(
            unary_backward(op, Some(&a), Some(&a), &a).unwrap().shape(),
            &[0, 3]
        );
    }
    let mut acc = tensor(vec![], &[0]);
    add_scaled(&mut acc, &tensor(vec![], &[0]), 2.0).unwrap();
    assert_eq!(
        full(&[2, 0], 1.0, DType::F32, &Device::Cpu)
            .unwrap()
            .numel(),
        0
    );
    assert_eq!(broadcast_to(&b, &[0, 3]).unwrap().shape(), &[0, 3]);
}

#[test]
fn sum_to_shape_into_overwrites_the_buffer() {
    let x = tensor((0..12).map(f64::from).collect(), &[3, 4]);
    let mut out = tensor(vec![f64::NAN; 4], &[4]);
    sum_to_shape_into(&x, &mut out).unwrap();
    assert_eq!(values(&out), vec![12.0, 15.0, 18.0, 21.0]);
    let empty = tensor(vec![], &[0, 4]);
    sum_to_shape_into(&empty, &mut out).unwrap();
    assert_eq!(
        values(&out),
        vec![0.0; 4],
        "an empty sum is written, not left"
    );
}
