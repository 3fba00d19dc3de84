//! The similarity family against PyTorch (golden fixtures from scripts/make_fixtures_similarity.py, run
//! through the `detkd parity` runner) and CUDA against the CPU reference. GPU tests print `SKIP` without a
//! driver and fail under `DETKD_REQUIRE_GPU=1`.

use detkd::ops::similarity::{
    cosine_cross, cosine_cross_backward, cosine_cross_into, cosine_gram, cosine_gram_backward,
    cosine_gram_into, dsig_edge_loss, dsig_edge_loss_backward, dsig_edge_loss_with_grad,
    normalize_rows, normalize_rows_backward, normalize_rows_into, pairwise_distance,
    pairwise_distance_backward, pairwise_distance_into, CosineConfig, Distance, DsigEdgeConfig,
};
use detkd::tensor::io;
use detkd::testing::{assert_close, f64_of, host, poisoned, vals, Rng, TOLERANCES};
use detkd::{DType, Device, Tensor};

/// Every fixture, embedded so the test binary runs anywhere (e.g. carried to a GPU machine).
macro_rules! fixtures {
    ($($name:literal),* $(,)?) => {
        [$(($name, include_bytes!(concat!("fixtures/similarity/", $name, ".safetensors")).as_slice())),*]
    };
}
const FIXTURES: [(&str, &[u8]); 15] = fixtures![
    "normalize_rows",
    "normalize_rows_tiny",
    "cosine_gram",
    "cosine_gram_zero_row",
    "cosine_gram_empty",
    "cosine_cross",
    "sq_euclidean_cross",
    "sq_euclidean_self",
    "euclidean_cross",
    "euclidean_cross_mm",
    "euclidean_self",
    "dsig_edge_loss",
    "dsig_edge_loss_nodes",
    "dsig_edge_loss_no_nodes",
    "dsig_edge_loss_zero_student_row",
];

/// Runs the fixture's op with `dtype` on `device` and compares every result with PyTorch's.
fn check_fixture(name: &str, bytes: &[u8], dtype: DType, device: &Device, tol: f64) {
    let mut inputs = io::from_bytes(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    inputs.metadata.insert("dtype".into(), dtype.name().into());
    let results = detkd::parity::run(&inputs, device).unwrap_or_else(|e| panic!("{name}: {e}"));
    let expected: Vec<&String> = inputs
        .tensors
        .keys()
        .filter(|k| k.starts_with("expected."))
        .collect();
    assert!(
        expected.len() >= 2,
        "{name}: fixture has no expected output and gradient"
    );
    assert_eq!(
        expected.len(),
        results.tensors.len(),
        "{name}: results {:?}",
        results.tensors.keys().collect::<Vec<_>>()
    );
    for key in expected {
        let result_name = &key["expected.".len()..];
        let got = results
            .get(result_name)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = inputs.get(key).unwrap();
        assert_eq!(got.shape(), want.shape(), "{name}/{result_name}");
        let result_dtype = if result_name == "loss" && dtype != DType::F64 {
            DType::F32 // the loss is accumulated and returned in f32 for every narrower storage
        } else {
            dtype
        };
        assert_eq!(got.dtype(), result_dtype, "{name}/{result_name}");
        assert_close(
            &format!("{name}/{result_name} ({dtype} on {device})"),
            &got.to_vec::<f64>().unwrap(),
            &want.to_vec::<f64>().unwrap(),
            tol,
        );
    }
}

#[test]
fn cpu_matches_pytorch_fixtures() {
    for (name, bytes) in FIXTURES {
        check_fixture(name, bytes, DType::F64, &Device::Cpu, 1e-10);
        check_fixture(name, bytes, DType::F32, &Device::Cpu, 1e-5);
    }
}

#[test]
fn fixtures_cover_every_op_and_the_edge_cases() {
    let ops: Vec<String> = FIXTURES
        .iter()
        .map(|(_, b)| io::from_bytes(b).unwrap().metadata["op"].clone())
        .collect();
    for op in [
        "normalize_rows",
        "cosine_gram",
        "cosine_cross",
        "sq_euclidean",
        "euclidean",
        "dsig_edge_loss",
    ] {
        assert!(ops.iter().any(|o| o == op), "no fixture for {op}");
    }
    let get =
        |name: &str| io::from_bytes(FIXTURES.iter().find(|(n, _)| *n == name).unwrap().1).unwrap();
    assert_eq!(get("cosine_gram_empty").get("x").unwrap().shape(), &[0, 4]);
    assert_eq!(
        get("dsig_edge_loss_no_nodes").get("nodes").unwrap().shape(),
        &[0]
    );
    assert_eq!(
        get("dsig_edge_loss_nodes").get("nodes").unwrap().dtype(),
        DType::I64
    );
    assert!(!get("euclidean_self").tensors.contains_key("y"));
}

#[test]
fn parity_rejects_bad_metadata_and_inputs() {
    let (_, bytes) = FIXTURES[11]; // dsig_edge_loss
    let mut inputs = io::from_bytes(bytes).unwrap();
    for (key, value, expected) in [
        ("eps", "tiny", "`eps`: expected a positive float"),
        ("eps", "0", "`eps`: must be finite and > 0"),
        ("loss_weight", "x", "`loss_weight`: expected a float"),
    ] {
        let old = inputs.metadata.insert(key.into(), value.into());
        let err = detkd::parity::run(&inputs, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{key}={value}: {err}");
        match old {
            Some(v) => inputs.metadata.insert(key.into(), v),
            None => inputs.metadata.remove(key),
        };
    }
    inputs.tensors.remove("teacher");
    let err = detkd::parity::run(&inputs, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("teacher"), "{err}");
}

// ---------------------------------------------------------------------------------------------------------
// CUDA vs CPU

#[test]
fn cuda_cosine_ops_match_cpu_on_random_shapes() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_cosine_ops_match_cpu_on_random_shapes") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let cfg = CosineConfig::default();
    let mut rng = Rng::new(500);
    for case in 0..12 {
        // Extents straddle the GEMM tiles (64) and the row kernels' block (256).
        let (m, n) = (1 + rng.below(130), 1 + rng.below(90));
        let d = [2, 3, 64, 255, 256, 257, 700][rng.below(7)];
        let (x, y) = (rng.normal_vec(m * d), rng.normal_vec(n * d));
        let (g_mm, g_mn, g_md) = (
            rng.normal_vec(m * m),
            rng.normal_vec(m * n),
            rng.normal_vec(m * d),
        );
        for (dtype, fwd_tol, bwd_tol) in TOLERANCES {
            let what = format!("case {case} {dtype} m={m} n={n} d={d}");
            let (xh, yh) = (host(&x, &[m, d], dtype), host(&y, &[n, d], dtype));
            let (xg, yg) = (xh.to_device(&gpu).unwrap(), yh.to_device(&gpu).unwrap());
            let g_of = |v: &[f64], s: &[usize]| host(v, s, dtype);

            // normalize_rows
            let mut out = poisoned(&[m, d], dtype, &gpu);
            normalize_rows_into(&xg, &cfg, &mut out).unwrap();
            let want = normalize_rows(&f64_of(&xh), &cfg).unwrap();
            assert_close(
                &format!("normalize {what}"),
                &vals(&out),
                &vals(&want),
                fwd_tol,
            );
            let g = g_of(&g_md, &[m, d]);
            let got = normalize_rows_backward(&xg, &g.to_device(&gpu).unwrap(), &cfg).unwrap();
            let want = normalize_rows_backward(&f64_of(&xh), &f64_of(&g), &cfg).unwrap();
            assert_eq!(got.dtype(), dtype);
            assert_close(
                &format!("normalize backward {what}"),
                &vals(&got),
                &vals(&want),
                bwd_tol,
            );

            // cosine_gram
            let mut out = poisoned(&[m, m], dtype, &gpu);
            cosine_gram_into(&xg, &cfg, &mut out).unwrap();
            let want = cosine_gram(&f64_of(&xh), &cfg).unwrap();
            assert_close(&format!("gram {what}"), &vals(&out), &vals(&want), fwd_tol);
            let g = g_of(&g_mm, &[m, m]);
            let got = cosine_gram_backward(&xg, &g.to_device(&gpu).unwrap(), &cfg).unwrap();
            let want = cosine_gram_backward(&f64_of(&xh), &f64_of(&g), &cfg).unwrap();
            assert_close(
                &format!("gram backward {what}"),
                &vals(&got),
                &vals(&want),
                bwd_tol,
            );

            // cosine_cross
            let mut out = poisoned(&[m, n], dtype, &gpu);
            cosine_cross_into(&xg, &yg, &cfg, &mut out).unwrap();
            let want = cosine_cross(&f64_of(&xh), &f64_of(&yh), &cfg).unwrap();
            assert_close(&format!("cross {what}"), &vals(&out), &vals(&want), fwd_tol);
            let g = g_of(&g_mn, &[m, n]);
            let (dx, dy) =
                cosine_cross_backward(&xg, &yg, &g.to_device(&gpu).unwrap(), true, &cfg).unwrap();
            let (wx, wy) =
                cosine_cross_backward(&f64_of(&xh), &f64_of(&yh), &f64_of(&g), true, &cfg).unwrap();
            assert_close(&format!("cross dx {what}"), &vals(&dx), &vals(&wx), bwd_tol);
            assert_close(
                &format!("cross dy {what}"),
                &vals(&dy.unwrap()),
                &vals(&wy.unwrap()),
                bwd_tol,
            );
        }
    }
}

#[test]
fn cuda_distances_match_cpu_on_random_shapes() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_distances_match_cpu_on_random_shapes") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(600);
    for case in 0..10 {
        let (m, n) = (2 + rng.below(100), 2 + rng.below(70));
        let d = [2, 5, 64, 129, 300][rng.below(5)];
        // Points spread apart (a shared offset per row keeps distances away from 0 and the clamp).
        let x: Vec<f64> = rng.normal_vec(m * d);
        let y: Vec<f64> = rng.normal_vec(n * d).iter().map(|v| v + 0.5).collect();
        let g_mn = rng.normal_vec(m * n);
        let g_mm = rng.normal_vec(m * m);
        for kind in [Distance::Squared, Distance::Euclidean] {
            for (dtype, fwd_tol, bwd_tol) in TOLERANCES {
                let what = format!("case {case} {kind:?} {dtype} m={m} n={n} d={d}");
                let (xh, yh) = (host(&x, &[m, d], dtype), host(&y, &[n, d], dtype));
                let (xg, yg) = (xh.to_device(&gpu).unwrap(), yh.to_device(&gpu).unwrap());
                for self_mode in [false, true] {
                    let cols = if self_mode { m } else { n };
                    let (y_gpu, y_cpu) = if self_mode {
                        (None, None)
                    } else {
                        (Some(&yg), Some(f64_of(&yh)))
                    };
                    let what = format!("{what} self={self_mode}");
                    let mut out = poisoned(&[m, cols], dtype, &gpu);
                    pairwise_distance_into(&xg, y_gpu, kind, &mut out).unwrap();
                    let want = pairwise_distance(&f64_of(&xh), y_cpu.as_ref(), kind).unwrap();
                    assert_close(
                        &format!("forward {what}"),
                        &vals(&out),
                        &vals(&want),
                        fwd_tol,
                    );
                    // The backward reads the forward output: give both sides the same (GPU) distances.
                    let g = host(if self_mode { &g_mm } else { &g_mn }, &[m, cols], dtype);
                    let (dx, dy) = pairwise_distance_backward(
                        &xg,
                        y_gpu,
                        &out,
                        &g.to_device(&gpu).unwrap(),
                        kind,
                        true,
                    )
                    .unwrap();
                    let (wx, wy) = pairwise_distance_backward(
                        &f64_of(&xh),
                        y_cpu.as_ref(),
                        &f64_of(&out),
                        &f64_of(&g),
                        kind,
                        true,
                    )
                    .unwrap();
                    assert_close(&format!("dx {what}"), &vals(&dx), &vals(&wx), bwd_tol);
                    assert_eq!(dy.is_some(), !self_mode);
                    if let (Some(dy), Some(wy)) = (dy, wy) {
                        assert_close(&format!("dy {what}"), &vals(&dy), &vals(&wy), bwd_tol);
                    }
                    if self_mode {
                        let v = vals(&out);
                        assert!((0..m).all(|i| v[i * m + i] == 0.0), "exact zero diagonal");
                    }
                }
            }
        }
    }
}

#[test]
fn cuda_dsig_edge_loss_matches_cpu() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_dsig_edge_loss_matches_cpu") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(700);
    for case in 0..8 {
        let rows = 2 + rng.below(150);
        let d = [7, 256, 300, 1000][rng.below(4)];
        let (s, t) = (rng.normal_vec(rows * d), rng.normal_vec(rows * d));
        // Half the cases use a random subset in random order.
        let nodes: Option<Vec<i64>> = (case % 2 == 1).then(|| {
            let mut all: Vec<i64> = (0..rows as i64).collect();
            for i in (1..all.len()).rev() {
                all.swap(i, rng.below(i + 1));
            }
            all.truncate(1 + rng.below(rows));
            all
        });
        let nodes = nodes.map(|v| Tensor::from_vec(v.clone(), &[v.len()]).unwrap());
        for (dtype, fwd_tol, bwd_tol) in TOLERANCES {
            // The gradient is ~1e-7 per element here: below f16's normal range (6e-5), so f16 storage
            // needs a loss scale, as in mixed-precision training.
            let scale = if dtype == DType::F16 { 4096.0 } else { 1.0 };
            let cfg = DsigEdgeConfig {
                loss_weight: [1.0, 2.0][case % 2] * scale,
                ..DsigEdgeConfig::default()
            };
            let what = format!(
                "case {case} {dtype} rows={rows} d={d} nodes={}",
                nodes.is_some()
            );
            let (sh, th) = (host(&s, &[rows, d], dtype), host(&t, &[rows, d], dtype));
            let want =
                dsig_edge_loss_with_grad(&f64_of(&sh), &f64_of(&th), nodes.as_ref(), &cfg).unwrap();
            let (sg, tg) = (sh.to_device(&gpu).unwrap(), th.to_device(&gpu).unwrap());
            // Vertex lists on the host and on the device.
            let nodes_gpu = nodes.as_ref().map(|n| n.to_device(&gpu).unwrap());
            for nodes in [nodes.as_ref(), nodes_gpu.as_ref()] {
                let got = dsig_edge_loss_with_grad(&sg, &tg, nodes, &cfg).unwrap();
                assert_eq!(got.loss.dtype(), DType::F32);
                assert_eq!(got.grad.dtype(), dtype);
                assert_close(
                    &format!("loss {what}"),
                    &vals(&got.loss),
                    &vals(&want.loss),
                    fwd_tol,
                );
                assert_close(
                    &format!("grad {what}"),
                    &vals(&got.grad),
                    &vals(&want.grad),
                    bwd_tol,
                );
                let loss_only = dsig_edge_loss(&sg, &tg, nodes, &cfg).unwrap();
                assert_eq!(
                    vals(&loss_only),
                    vals(&got.loss),
                    "{what}: same kernels, same bits"
                );
                let back = dsig_edge_loss_backward(&sg, &tg, nodes, 1.0, &cfg).unwrap();
                assert_eq!(vals(&back), vals(&got.grad), "{what}");
            }
        }
    }
}

#[test]
fn cuda_dsig_edge_loss_at_dsig_width() {
    // D = 256·7·7 as in Dsig: rows longer than any block-stride or tile used by the kernels.
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_dsig_edge_loss_at_dsig_width") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(750);
    let (rows, d) = (160, 12_544);
    let (s, t) = (rng.normal_vec(rows * d), rng.normal_vec(rows * d));
    let nodes: Vec<i64> = (0..rows as i64).rev().step_by(2).collect();
    let nodes = Tensor::from_vec(nodes.clone(), &[nodes.len()]).unwrap();
    let cfg = DsigEdgeConfig::default();
    let (sh, th) = (
        host(&s, &[rows, d], DType::F32),
        host(&t, &[rows, d], DType::F32),
    );
    let want = dsig_edge_loss_with_grad(&f64_of(&sh), &f64_of(&th), Some(&nodes), &cfg).unwrap();
    let got = dsig_edge_loss_with_grad(
        &sh.to_device(&gpu).unwrap(),
        &th.to_device(&gpu).unwrap(),
        Some(&nodes),
        &cfg,
    )
    .unwrap();
    assert_close("loss", &vals(&got.loss), &vals(&want.loss), 1e-5);
    assert_close("grad", &vals(&got.grad), &vals(&want.grad), 1e-4);
    let x = sh.to_device(&gpu).unwrap();
    let gram = cosine_gram(&x, &CosineConfig::default()).unwrap();
    let want = cosine_gram(&f64_of(&sh), &CosineConfig::default()).unwrap();
    assert_close("gram", &vals(&gram), &vals(&want), 1e-5);
}

#[test]
fn cuda_results_are_bitwise_reproducible() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_results_are_bitwise_reproducible") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(800);
    let (rows, d) = (300, 2304);
    let s = host(&rng.normal_vec(rows * d), &[rows, d], DType::F32)
        .to_device(&gpu)
        .unwrap();
    let t = host(&rng.normal_vec(rows * d), &[rows, d], DType::F32)
        .to_device(&gpu)
        .unwrap();
    let bits = |t: &Tensor| -> Vec<u64> { vals(t).iter().map(|v| v.to_bits()).collect() };
    let first = dsig_edge_loss_with_grad(&s, &t, None, &DsigEdgeConfig::default()).unwrap();
    for _ in 0..3 {
        let again = dsig_edge_loss_with_grad(&s, &t, None, &DsigEdgeConfig::default()).unwrap();
        assert_eq!(bits(&first.loss), bits(&again.loss));
        assert_eq!(bits(&first.grad), bits(&again.grad));
    }
}

#[test]
fn cuda_matches_pytorch_fixtures() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_matches_pytorch_fixtures") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    for (name, bytes) in FIXTURES {
        check_fixture(name, bytes, DType::F32, &gpu, 1e-5);
    }
}

#[test]
fn cuda_non_finite_values_propagate_and_bad_inputs_are_errors() {
    let Some(gpu) =
        detkd::cuda::gpu_for_test("cuda_non_finite_values_propagate_and_bad_inputs_are_errors")
    else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut v = Rng::new(900).normal_vec(12);
    let good = host(&v, &[3, 4], DType::F32).to_device(&gpu).unwrap();
    v[5] = f64::NAN;
    let bad = host(&v, &[3, 4], DType::F32).to_device(&gpu).unwrap();
    let cfg = DsigEdgeConfig::default();
    let out = dsig_edge_loss_with_grad(&good, &bad, None, &cfg).unwrap();
    assert!(vals(&out.loss)[0].is_nan());
    let huge = host(&[3e19, 1.0, 2.0, 1.0], &[2, 2], DType::F32)
        .to_device(&gpu)
        .unwrap();
    let out = vals(&normalize_rows(&huge, &CosineConfig::default()).unwrap());
    assert!(out[0].is_nan() && out[2].is_finite(), "{out:?}");

    // Indices on the device are validated like host ones; mixed devices are errors.
    let nodes = Tensor::from_vec(vec![0i64, 3], &[2])
        .unwrap()
        .to_device(&gpu)
        .unwrap();
    let err = dsig_edge_loss(&good, &good, Some(&nodes), &cfg)
        .unwrap_err()
        .to_string();
    assert!(err.contains("entry 1 is 3, outside [0, 3)"), "{err}");
    let cpu = host(&[0.5; 12], &[3, 4], DType::F32);
    let err = dsig_edge_loss(&good, &cpu, None, &cfg)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`teacher`") && err.contains("cpu"), "{err}");
    let err = cosine_cross(&good, &cpu, &CosineConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("`y`"), "{err}");

    // Empty inputs on the device.
    let empty = host(&[], &[0, 4], DType::F32).to_device(&gpu).unwrap();
    assert_eq!(
        cosine_gram(&empty, &CosineConfig::default())
            .unwrap()
            .shape(),
        &[0, 0]
    );
    let none = Tensor::from_vec(Vec::<i64>::new(), &[0]).unwrap();
    let out = dsig_edge_loss_with_grad(&good, &good, Some(&none), &cfg).unwrap();
    assert_eq!(vals(&out.loss), vec![0.0]);
    assert!(vals(&out.grad).iter().all(|&v| v == 0.0));
}
