use super::*;
use crate::autograd::{gradcheck, GradcheckOptions};
use crate::testing::{assert_close, Rng};

fn naive(a: &[f64], b: &[f64], d: &Dims) -> Vec<f64> {
    let mut c = vec![0.0; d.batch * d.m * d.n];
    for t in 0..d.batch {
        for i in 0..d.m {
            for j in 0..d.n {
                let mut s = 0.0;
                for kk in 0..d.k {
                    let av = if d.trans_a {
                        a[t * d.m * d.k + kk * d.m + i]
                    } else {
                        a[t * d.m * d.k + i * d.k + kk]
                    };
                    let bv = if d.trans_b {
                        b[t * d.k * d.n + j * d.k + kk]
                    } else {
                        b[t * d.k * d.n + kk * d.n + j]
                    };
                    s += av * bv;
                }
                c[t * d.m * d.n + i * d.n + j] = s;
            }
        }
    }
    c
}

fn operands(rng: &mut Rng, d: &Dims, batched: bool) -> (Tensor, Tensor) {
    let sa = if d.trans_a { [d.k, d.m] } else { [d.m, d.k] };
    let sb = if d.trans_b { [d.n, d.k] } else { [d.k, d.n] };
    let shape = |s: [usize; 2]| {
        if batched {
            vec![d.batch, s[0], s[1]]
        } else {
            s.to_vec()
        }
    };
    let a = Tensor::from_vec(rng.normal_vec(d.batch * d.m * d.k), &shape(sa)).unwrap();
    let b = Tensor::from_vec(rng.normal_vec(d.batch * d.k * d.n), &shape(sb)).unwrap();
    (a, b)
}

#[test]
fn matches_naive_product_for_every_transpose_and_batching() {
    let mut rng = Rng::new(9);
    for (batch, batched) in [(1, false), (3, true)] {
        for trans_a in [false, true] {
            for trans_b in [false, true] {
                let d = Dims {
                    batch,
                    m: 13,
                    n: 37,
                    k: 300,
                    trans_a,
                    trans_b,
                };
                let (a, b) = operands(&mut rng, &d, batched);
                let want = naive(&a.to_vec().unwrap(), &b.to_vec().unwrap(), &d);
                let got = matmul(&a, &b, trans_a, trans_b).unwrap();
                assert_eq!(got.shape(), &d.output_shape(batched)[..]);
                assert_close("f64", &got.to_vec().unwrap(), &want, 1e-13);
                let got32 = matmul(
                    &a.to_dtype(DType::F32).unwrap(),
                    &b.to_dtype(DType::F32).unwrap(),
                    trans_a,
                    trans_b,
                )
                .unwrap();
                assert_close("f32", &got32.to_vec().unwrap(), &want, 1e-5);
                let got16 = matmul(
                    &a.to_dtype(DType::BF16).unwrap(),
                    &b.to_dtype(DType::BF16).unwrap(),
                    trans_a,
                    trans_b,
                )
                .unwrap();
                assert_eq!(got16.dtype(), DType::BF16);
                assert_close("bf16", &got16.to_vec().unwrap(), &want, 3e-2);
            }
        }
    }
}

#[test]
fn gradcheck_every_transpose() {
    let mut rng = Rng::new(10);
    for trans_a in [false, true] {
        for trans_b in [false, true] {
            let d = Dims {
                batch: 2,
                m: 3,
                n: 4,
                k: 5,
                trans_a,
                trans_b,
            };
            let (a, b) = operands(&mut rng, &d, true);
            let (sa, sb) = (a.shape().to_vec(), b.shape().to_vec());
            let na = a.numel();
            let split = |x: &[f64]| {
                (
                    Tensor::from_vec(x[..na].to_vec(), &sa).unwrap(),
                    Tensor::from_vec(x[na..].to_vec(), &sb).unwrap(),
                )
            };
            let forward = |x: &[f64]| {
                let (a, b) = split(x);
                matmul(&a, &b, trans_a, trans_b)?.to_vec::<f64>()
            };
            let backward = |x: &[f64], g: &[f64]| {
                let (a, b) = split(x);
                let g = Tensor::from_vec(g.to_vec(), &[2, 3, 4])?;
                let (ga, gb) = matmul_backward(&a, &b, &g, trans_a, trans_b)?;
                assert_eq!((ga.shape(), gb.shape()), (a.shape(), b.shape()));
                let mut v = ga.to_vec::<f64>()?;
                v.extend(gb.to_vec::<f64>()?);
                Ok(v)
            };
            let mut x = a.to_vec::<f64>().unwrap();
            x.extend(b.to_vec::<f64>().unwrap());
            gradcheck(forward, backward, &x, &GradcheckOptions::default())
                .unwrap_or_else(|e| panic!("trans_a={trans_a} trans_b={trans_b}: {e}"));
        }
    }
}

#[test]
fn bad_operands_are_clear_errors() {
    let a = Tensor::from_vec(vec![0.0f32; 6], &[2, 3]).unwrap();
    let b = Tensor::from_vec(vec![0.0f32; 8], &[4, 2]).unwrap();
    let err = matmul(&a, &b, false, false).unwrap_err().to_string();
    assert!(err.contains("`b`") && err.contains("3 rows"), "{err}");
    assert!(matmul(&a, &b, false, true).is_err());
    assert_eq!(
        matmul(
            &a,
            &Tensor::from_vec(vec![0.0f32; 6], &[3, 2]).unwrap(),
            false,
            false
        )
        .unwrap()
        .shape(),
        &[2, 2]
    );
    let c = Tensor::from_vec(vec![0.0f64; 6], &[3, 2]).unwrap();
    assert!(matmul(&a, &c, false, false)
        .unwrap_err()
        .to_string()
        .contains("expected dtype f32, got f64"));
    let batched = Tensor::from_vec(vec![0.0f32; 12], &[2, 3, 2]).unwrap();
    assert!(matmul(&a, &batched, false, false)
        .unwrap_err()
        .to_string()
        .contains("two batches"));
    let other_batch = Tensor::from_vec(vec![0.0f32; 18], &[3, 3, 2]).unwrap();
    let a3 = Tensor::from_vec(vec![0.0f32; 12], &[2, 2, 3]).unwrap();
    assert!(matmul(&a3, &other_batch, false, false)
        .unwrap_err()
        .to_string()
        .contains("batch of 2"));
    let labels = Tensor::from_vec(vec![0i64; 6], &[2, 3]).unwrap();
    assert!(matmul(&labels, &labels, false, true).is_err());
    // Empty extents give an empty or zero result without work.
    let e = Tensor::from_vec(Vec::<f32>::new(), &[0, 3]).unwrap();
    assert_eq!(
        matmul(
            &e,
            &Tensor::from_vec(vec![1.0f32; 6], &[3, 2]).unwrap(),
            false,
            false
        )
        .unwrap()
        .shape(),
        &[0, 2]
    );
    let k0a = Tensor::from_vec(Vec::<f32>::new(), &[2, 0]).unwrap();
    let k0b = Tensor::from_vec(Vec::<f32>::new(), &[0, 2]).unwrap();
    assert_eq!(
        matmul(&k0a, &k0b, false, false)
            .unwrap()
            .to_vec::<f32>()
            .unwrap(),
        vec![0.0; 4]
    );
}
