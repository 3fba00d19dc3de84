//! Matrix products on CUDA against the CPU reference (GPU tests skip without a driver).

use detkd::ops::matmul::{matmul, matmul_into};
use detkd::testing::{assert_close, Rng};
use detkd::{DType, Device, Tensor};

#[test]
fn cuda_matches_cpu_on_random_shapes() {
    let Some(gpu) = detkd::cuda::gpu_for_test("matmul::cuda_matches_cpu_on_random_shapes") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(31);
    // Extents straddle the 64x64x16 tiles: 1, tile-1, tile, tile+1 and odd sizes.
    let sizes = [1, 15, 16, 17, 63, 64, 65, 130, 257];
    for case in 0..30 {
        let (m, n, k) = (
            sizes[rng.below(9)],
            sizes[rng.below(9)],
            sizes[rng.below(9)],
        );
        let (trans_a, trans_b) = (rng.below(2) == 1, rng.below(2) == 1);
        let batch = 1 + rng.below(3);
        let sa = if trans_a {
            [batch, k, m]
        } else {
            [batch, m, k]
        };
        let sb = if trans_b {
            [batch, n, k]
        } else {
            [batch, k, n]
        };
        let a = Tensor::from_vec(rng.normal_vec(batch * m * k), &sa).unwrap();
        let b = Tensor::from_vec(rng.normal_vec(batch * k * n), &sb).unwrap();
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::F16, 1e-2), (DType::BF16, 2e-2)] {
            let (ah, bh) = (a.to_dtype(dtype).unwrap(), b.to_dtype(dtype).unwrap());
            let want = matmul(
                &ah.to_dtype(DType::F64).unwrap(),
                &bh.to_dtype(DType::F64).unwrap(),
                trans_a,
                trans_b,
            )
            .unwrap()
            .to_vec::<f64>()
            .unwrap();
            let mut out = Tensor::from_vec(vec![f64::NAN; batch * m * n], &[batch, m, n])
                .unwrap()
                .to_dtype(dtype)
                .unwrap()
                .to_device(&gpu)
                .unwrap();
            matmul_into(
                &ah.to_device(&gpu).unwrap(),
                &bh.to_device(&gpu).unwrap(),
                trans_a,
                trans_b,
                &mut out,
            )
            .unwrap();
            assert_close(
                &format!("case {case}: {dtype} {batch}x{m}x{n}x{k} ta={trans_a} tb={trans_b}"),
                &out.to_vec::<f64>().unwrap(),
                &want,
                tol,
            );
        }
    }
}

#[test]
fn cuda_split_k_matches_cpu() {
    let Some(gpu) = detkd::cuda::gpu_for_test("matmul::cuda_split_k_matches_cpu") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(32);
    // Few output tiles, long K: these take the split-K path (see split_k in src/ops/matmul/cuda.rs).
    for &(batch, m, n, k, trans_a, trans_b) in &[
        (1, 64, 64, 5_000, false, true),
        (2, 128, 64, 20_011, false, true),
        (1, 70, 130, 4_099, true, false),
        (3, 5, 7, 65_537, true, true),
    ] {
        let sa = if trans_a {
            [batch, k, m]
        } else {
            [batch, m, k]
        };
        let sb = if trans_b {
            [batch, n, k]
        } else {
            [batch, k, n]
        };
        let a = Tensor::from_vec(rng.normal_vec(batch * m * k), &sa).unwrap();
        let b = Tensor::from_vec(rng.normal_vec(batch * k * n), &sb).unwrap();
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::BF16, 2e-2)] {
            let (ah, bh) = (a.to_dtype(dtype).unwrap(), b.to_dtype(dtype).unwrap());
            let want = matmul(
                &ah.to_dtype(DType::F64).unwrap(),
                &bh.to_dtype(DType::F64).unwrap(),
                trans_a,
                trans_b,
            )
            .unwrap()
            .to_vec::<f64>()
            .unwrap();
            let got = matmul(
                &ah.to_device(&gpu).unwrap(),
                &bh.to_device(&gpu).unwrap(),
                trans_a,
                trans_b,
            )
            .unwrap();
            let again = matmul(
                &ah.to_device(&gpu).unwrap(),
                &bh.to_device(&gpu).unwrap(),
                trans_a,
                trans_b,
            )
            .unwrap();
            let (got, again) = (got.to_vec::<f64>().unwrap(), again.to_vec::<f64>().unwrap());
            assert_close(&format!("{dtype} {batch}x{m}x{n}x{k}"), &got, &want, tol);
            assert_eq!(got, again, "split-K sums are deterministic");
        }
    }
}
