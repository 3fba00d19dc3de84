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

/// Shapes that reach each of `gemm`'s code paths: the small-output dot-product kernel (M·N ≤ 256), the
/// matrix-vector paths (M or N = 1), K ≤ 2, edge tiles, and blocked products with several K blocks.
const ORACLE_SHAPES: [(usize, usize, usize, usize); 10] = [
    (1, 1, 1, 7),
    (1, 5, 3, 2),
    (1, 13, 1, 300),
    (1, 1, 29, 64),
    (2, 16, 16, 33),
    (1, 67, 45, 129),
    (3, 9, 70, 40),
    (1, 130, 257, 600),
    (1, 64, 400, 576),
    (2, 100, 90, 1100),
];

#[test]
fn gemm_matches_the_blocked_reference() {
    let mut rng = Rng::new(11);
    for &(batch, m, n, k) in &ORACLE_SHAPES {
        for trans_a in [false, true] {
            for trans_b in [false, true] {
                let d = Dims {
                    batch,
                    m,
                    n,
                    k,
                    trans_a,
                    trans_b,
                };
                let a = rng.normal_vec(batch * m * k);
                let b = rng.normal_vec(batch * k * n);
                let what = format!("{batch}x{m}x{n}x{k} ta={trans_a} tb={trans_b}");
                let want = cpu::reference::<f64>(&a, &b, &d);
                assert_close(
                    &format!("f64 {what}"),
                    &cpu::matmul::<f64>(&a, &b, &d),
                    &want,
                    1e-13,
                );
                let (a32, b32): (Vec<f32>, Vec<f32>) = (
                    a.iter().map(|&v| v as f32).collect(),
                    b.iter().map(|&v| v as f32).collect(),
                );
                let want32: Vec<f64> = cpu::reference::<f32>(&a32, &b32, &d)
                    .iter()
                    .map(|&v| v as f64)
                    .collect();
                let got32: Vec<f64> = cpu::matmul::<f32>(&a32, &b32, &d)
                    .iter()
                    .map(|&v| v as f64)
                    .collect();
                assert_close(&format!("f32 {what}"), &got32, &want32, 2e-6);
            }
        }
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let mut rng = Rng::new(12);
    for &(batch, m, n, k) in &ORACLE_SHAPES {
        for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
            let d = Dims {
                batch,
                m,
                n,
                k,
                trans_a,
                trans_b,
            };
            let a: Vec<f32> = (0..batch * m * k).map(|_| rng.normal() as f32).collect();
            let b: Vec<f32> = (0..batch * k * n).map(|_| rng.normal() as f32).collect();
            let serial = cpu::matmul_with(&a, &b, &d, gemm::Parallelism::None);
            for threads in 1..=4 {
                let parallel = cpu::matmul_with(&a, &b, &d, gemm::Parallelism::Rayon(threads));
                let same = serial
                    .iter()
                    .zip(&parallel)
                    .all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(
                    same,
                    "{batch}x{m}x{n}x{k} ta={trans_a} tb={trans_b}: {threads} threads differ"
                );
            }
            assert_eq!(
                serial,
                cpu::matmul(&a, &b, &d),
                "the default pool gives the same bits"
            );
        }
    }
}

#[test]
fn large_products_split_across_threads_give_the_serial_bits() {
    // Big enough that gemm really parallelises (its threading threshold is 48·48·256 multiply-adds).
    let mut rng = Rng::new(13);
    for (m, n, k, trans_a, trans_b) in [(64, 6400, 576, false, false), (512, 512, 512, true, true)]
    {
        let d = Dims {
            batch: 1,
            m,
            n,
            k,
            trans_a,
            trans_b,
        };
        let a: Vec<f64> = rng.normal_vec(m * k);
        let b: Vec<f64> = rng.normal_vec(k * n);
        let serial = cpu::matmul_with(&a, &b, &d, gemm::Parallelism::None);
        for threads in [2, 3, 8] {
            let parallel = cpu::matmul_with(&a, &b, &d, gemm::Parallelism::Rayon(threads));
            assert!(
                serial
                    .iter()
                    .zip(&parallel)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{m}x{n}x{k}: {threads} threads differ"
            );
        }
    }
}
