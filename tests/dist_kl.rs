//! Distribution losses against PyTorch compositions of mmdet's formulas (golden fixtures from
//! scripts/make_fixtures_dist_kl.py, via the `detkd parity` runner) and CUDA against the CPU reference.
//! GPU tests print `SKIP` without a driver and fail under `DETKD_REQUIRE_GPU=1`.

use detkd::ops::dist_kl::{
    distribution_focal_loss, distribution_focal_loss_backward,
    distribution_focal_loss_backward_into, distribution_focal_loss_fused_into, integral,
    integral_backward, integral_backward_into, integral_into, kd_kl_div, kd_kl_div_backward,
    kd_kl_div_backward_into, kd_kl_div_fused, kd_kl_div_fused_into, DflConfig, IntegralConfig,
    KdKlConfig, KlNormalizer, LossWeighting, Reduction,
};
use detkd::tensor::io::{self, NamedTensors};
use detkd::testing::{assert_close, host, Rng};
use detkd::{DType, Device, Tensor};

/// Every fixture, embedded so the test binary runs anywhere (e.g. carried to a GPU machine).
macro_rules! fixtures {
    ($($name:literal),* $(,)?) => {
        [$(($name, include_bytes!(concat!("fixtures/dist_kl/", $name, ".safetensors")).as_slice())),*]
    };
}
const FIXTURES: [(&str, &[u8]); 19] = fixtures![
    "kl_ld_mean",
    "kl_ld_weighted_avg_factor",
    "kl_none_weighted",
    "kl_sum_bins_sum_t1",
    "kl_large_logits_t10",
    "kl_large_logits_t1",
    "kl_class_logits_t2",
    "kl_empty",
    "kl_empty_none",
    "dfl_gfl_mean",
    "dfl_weighted_avg_factor",
    "dfl_near_last_bin",
    "dfl_large_logits",
    "dfl_reg_max_7",
    "dfl_empty",
    "integral_gfl",
    "integral_large_logits",
    "integral_reg_max_7",
    "integral_empty",
];

fn fixture(name: &str) -> NamedTensors {
    let bytes = FIXTURES.iter().find(|(n, _)| *n == name).unwrap().1;
    io::from_bytes(bytes).unwrap()
}

/// Runs the fixture's op with `dtype` on `device` (fused when asked) and compares every result with the
/// PyTorch one. Returns how many results were compared.
fn check_fixture(name: &str, bytes: &[u8], dtype: DType, device: &Device, fused: bool, tol: f64) {
    let mut inputs = io::from_bytes(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    inputs.metadata.insert("dtype".into(), dtype.name().into());
    if fused {
        inputs.metadata.insert("fused".into(), "true".into());
    }
    let results = detkd::parity::run(&inputs, device).unwrap_or_else(|e| panic!("{name}: {e}"));
    let expected: Vec<&String> = inputs
        .tensors
        .keys()
        .filter(|k| k.starts_with("expected."))
        .collect();
    assert_eq!(
        expected.len(),
        2,
        "{name}: expected an output and a gradient"
    );
    for key in expected {
        let result_name = &key["expected.".len()..];
        let got = results
            .get(result_name)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = inputs.get(key).unwrap();
        assert_eq!(got.shape(), want.shape(), "{name}/{result_name}");
        assert_eq!(got.dtype(), dtype, "{name}/{result_name}");
        assert_close(
            &format!("{name}/{result_name} ({dtype} on {device}, fused={fused})"),
            &got.to_vec::<f64>().unwrap(),
            &want.to_vec::<f64>().unwrap(),
            tol,
        );
    }
}

/// Fixtures whose loss is a scalar: these also go through the fused entry.
fn reduces(inputs: &NamedTensors) -> bool {
    inputs.metadata["op"] != "integral"
        && inputs.metadata.get("reduction").map(String::as_str) != Some("none")
}

#[test]
fn cpu_matches_pytorch_fixtures() {
    for (name, bytes) in FIXTURES {
        let fused_too = reduces(&io::from_bytes(bytes).unwrap());
        for fused in [false, true] {
            if fused && !fused_too {
                continue;
            }
            check_fixture(name, bytes, DType::F64, &Device::Cpu, fused, 1e-10);
            check_fixture(name, bytes, DType::F32, &Device::Cpu, fused, 1e-5);
        }
    }
}

#[test]
fn cpu_half_storage_is_close_to_the_fixtures() {
    // The expected values are for the unrounded inputs, so this measures input rounding as much as the op:
    // ±50 logits lose up to 0.125 to bf16 rounding, which moves a saturated softmax by far more than 1e-2,
    // so those cases are compared at f32/f64 only; and bf16's 2^-9 relative rounding of the class-logit
    // case's inputs alone moves its gradient by 1.2e-2, hence 2e-2 for bf16. (Half storage against f64 on
    // the *rounded* inputs is checked at 1e-2 in the unit tests and the CUDA parity tests.)
    for (name, bytes) in FIXTURES {
        if name.contains("large") {
            continue;
        }
        check_fixture(name, bytes, DType::BF16, &Device::Cpu, false, 2e-2);
        check_fixture(name, bytes, DType::F16, &Device::Cpu, false, 1e-2);
    }
}

#[test]
fn fixtures_cover_the_required_cases() {
    let ops: Vec<String> = FIXTURES
        .iter()
        .map(|(n, _)| fixture(n).metadata["op"].clone())
        .collect();
    for op in ["kd_kl_div", "distribution_focal_loss", "integral"] {
        assert!(ops.iter().filter(|o| *o == op).count() >= 3, "{op}");
    }
    // R = 0 for every op.
    for name in ["kl_empty", "kl_empty_none", "dfl_empty", "integral_empty"] {
        let f = fixture(name);
        let key = ["student", "pred", "logits"]
            .into_iter()
            .find(|k| f.tensors.contains_key(*k))
            .unwrap();
        assert_eq!(f.get(key).unwrap().shape()[0], 0, "{name}");
    }
    // Large logits (±50) and per-row weights.
    for name in [
        "kl_large_logits_t1",
        "dfl_large_logits",
        "integral_large_logits",
    ] {
        let f = fixture(name);
        let key = ["student", "pred", "logits"]
            .into_iter()
            .find(|k| f.tensors.contains_key(*k))
            .unwrap();
        let max = f
            .get(key)
            .unwrap()
            .to_vec::<f64>()
            .unwrap()
            .iter()
            .fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(max > 45.0, "{name}: max |logit| {max}");
    }
    for name in [
        "kl_ld_weighted_avg_factor",
        "kl_none_weighted",
        "dfl_weighted_avg_factor",
    ] {
        assert!(fixture(name).tensors.contains_key("weight"), "{name}");
    }
    // Targets close to, but below, the last bin.
    let f = fixture("dfl_near_last_bin");
    let n: f64 = f.metadata["reg_max"].parse().unwrap();
    let labels = f.get("label").unwrap().to_vec::<f64>().unwrap();
    assert!(labels.iter().all(|&y| y < n) && labels.iter().any(|&y| y > n - 1e-4));
    // The reductions and normalisers all appear.
    let meta = |k: &str| -> Vec<String> {
        FIXTURES
            .iter()
            .filter_map(|(n, _)| fixture(n).metadata.get(k).cloned())
            .collect()
    };
    for r in ["none", "sum", "mean"] {
        assert!(meta("reduction").iter().any(|m| m == r), "{r}");
    }
    assert!(meta("normalizer").iter().any(|m| m == "bins_sum"));
    assert!(!meta("avg_factor").is_empty());
}

#[test]
fn parity_rejects_bad_metadata() {
    let mut inputs = fixture("kl_ld_weighted_avg_factor");
    for (key, value, expected) in [
        ("op", "kl", "unknown op `kl`"),
        (
            "reduction",
            "batchmean",
            "`reduction`: expected none, sum or mean",
        ),
        (
            "normalizer",
            "bins",
            "`normalizer`: expected bins_mean or bins_sum",
        ),
        ("temperature", "hot", "`temperature`: expected a float"),
        ("temperature", "-1", "`temperature`: must be finite and > 0"),
        ("avg_factor", "x", "`avg_factor`: expected a float"),
        ("fused", "yes", "`fused`: expected `true` or `false`"),
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
    let mut none = fixture("kl_none_weighted");
    none.metadata.insert("fused".into(), "true".into());
    let err = detkd::parity::run(&none, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`grad_out`") && err.contains("fused"), "{err}");

    let mut dfl = fixture("dfl_gfl_mean");
    dfl.metadata.insert("reg_max".into(), "15".into());
    let err = detkd::parity::run(&dfl, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`pred`: expected shape [N, 16]"), "{err}");
    dfl.tensors.remove("label");
    let err = detkd::parity::run(&dfl, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`label`"), "{err}");
}

// ---------------------------------------------------------------------------------------------------------
// CUDA vs CPU

fn wide(t: &Tensor) -> Tensor {
    t.to_device(&Device::Cpu)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_vec::<f64>().unwrap()
}

const DTYPES: [(DType, f64, f64); 3] = [
    (DType::F32, 1e-5, 1e-4),
    (DType::F16, 1e-2, 1e-2),
    (DType::BF16, 1e-2, 1e-2),
];

/// A random loss problem: shape, logits scale, reduction, weights, avg_factor.
struct Problem {
    rows: usize,
    bins: usize,
    scale: f64,
    reduction: Reduction,
    weighted: bool,
    avg_factor: Option<f64>,
}

fn random_problem(rng: &mut Rng, bins: usize) -> Problem {
    // Rows around warp/block boundaries (4 rows per warp at 17 bins, 32 per block) and beyond one block.
    let rows = [1, 3, 4, 31, 32, 33, 257, 1000 + rng.below(3000)][rng.below(8)];
    let reduction = [Reduction::None, Reduction::Sum, Reduction::Mean][rng.below(3)];
    Problem {
        rows,
        bins,
        scale: [1.0, 5.0, 30.0][rng.below(3)],
        reduction,
        weighted: rng.below(2) == 0,
        avg_factor: (reduction == Reduction::Mean && rng.below(2) == 0)
            .then(|| rng.uniform(1.0, 50.0)),
    }
}

/// Bin counts: 1, tiny, GFL's 17, class logits, and > 4·32 (lanes re-read bins beyond their cache).
const BIN_COUNTS: [usize; 7] = [1, 2, 5, 17, 33, 80, 150];

#[test]
fn cuda_kd_kl_matches_cpu_on_random_shapes() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_kd_kl_matches_cpu_on_random_shapes") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(900);
    for (case, &bins) in BIN_COUNTS.iter().cycle().take(21).enumerate() {
        let p = random_problem(&mut rng, bins);
        let n = p.rows * p.bins;
        let s: Vec<f64> = rng.normal_vec(n).iter().map(|v| v * p.scale).collect();
        let t: Vec<f64> = rng.normal_vec(n).iter().map(|v| v * p.scale).collect();
        let w: Vec<f64> = (0..p.rows).map(|_| rng.uniform(0.0, 2.0)).collect();
        let g_rows = rng.normal_vec(p.rows);
        let cfg = KdKlConfig {
            temperature: [1.0, 2.0, 10.0][case % 3],
            normalizer: if case % 4 == 0 {
                KlNormalizer::SumOverBins
            } else {
                KlNormalizer::MeanOverBins
            },
            reduction: p.reduction,
            loss_weight: 0.25,
        };
        let shape = [p.rows, p.bins];
        for (dtype, fwd_tol, bwd_tol) in DTYPES {
            let (sh, th, wh) = (
                host(&s, &shape, dtype),
                host(&t, &shape, dtype),
                host(&w, &[p.rows], dtype),
            );
            let grad_out = match p.reduction {
                Reduction::None => host(&g_rows, &[p.rows], dtype),
                _ => host(&[-0.75], &[], dtype),
            };
            let (w64, wg) = (wide(&wh), wh.to_device(&gpu).unwrap());
            let weighting_cpu = LossWeighting::new(p.weighted.then_some(&w64), p.avg_factor);
            let weighting_gpu = LossWeighting::new(p.weighted.then_some(&wg), p.avg_factor);
            let what = format!(
                "case {case} {dtype} rows {} bins {} {cfg:?} weighted {} avg {:?}",
                p.rows, p.bins, p.weighted, p.avg_factor
            );

            let want = values(&kd_kl_div(&wide(&sh), &wide(&th), weighting_cpu, &cfg).unwrap());
            let (sg, tg) = (sh.to_device(&gpu).unwrap(), th.to_device(&gpu).unwrap());
            let got = kd_kl_div(&sg, &tg, weighting_gpu, &cfg).unwrap();
            assert_eq!(got.dtype(), dtype);
            assert_close(&format!("forward {what}"), &values(&got), &want, fwd_tol);

            let want_grad = values(
                &kd_kl_div_backward(
                    &wide(&grad_out),
                    &wide(&sh),
                    &wide(&th),
                    weighting_cpu,
                    &cfg,
                )
                .unwrap(),
            );
            let mut grad = host(&vec![f64::NAN; n], &shape, dtype)
                .to_device(&gpu)
                .unwrap();
            kd_kl_div_backward_into(
                &grad_out.to_device(&gpu).unwrap(),
                &sg,
                &tg,
                weighting_gpu,
                &cfg,
                &mut grad,
            )
            .unwrap();
            assert_close(
                &format!("backward {what}"),
                &values(&grad),
                &want_grad,
                bwd_tol,
            );

            if p.reduction != Reduction::None {
                let mut grad = host(&vec![f64::NAN; n], &shape, dtype)
                    .to_device(&gpu)
                    .unwrap();
                let loss =
                    kd_kl_div_fused_into(&sg, &tg, weighting_gpu, &cfg, -0.75, &mut grad).unwrap();
                assert_eq!(loss.shape(), &[] as &[usize]);
                assert_close(
                    &format!("fused loss {what}"),
                    &values(&loss),
                    &want,
                    fwd_tol,
                );
                assert_close(
                    &format!("fused grad {what}"),
                    &values(&grad),
                    &want_grad,
                    bwd_tol,
                );
            }
        }
    }
}

fn random_targets(rng: &mut Rng, rows: usize, reg_max: usize) -> Vec<f64> {
    let n = reg_max as f64;
    (0..rows)
        .map(|i| match i % 7 {
            0 => (i % reg_max) as f64,
            1 => n - 1e-3,
            _ => rng.uniform(0.0, n - 0.1),
        })
        .collect()
}

#[test]
fn cuda_dfl_matches_cpu_on_random_shapes() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_dfl_matches_cpu_on_random_shapes") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(901);
    for (case, &bins) in BIN_COUNTS[1..].iter().cycle().take(18).enumerate() {
        let p = random_problem(&mut rng, bins);
        let reg_max = bins - 1;
        let n = p.rows * p.bins;
        let z: Vec<f64> = rng.normal_vec(n).iter().map(|v| v * p.scale).collect();
        let labels = random_targets(&mut rng, p.rows, reg_max);
        let w: Vec<f64> = (0..p.rows).map(|_| rng.uniform(0.0, 2.0)).collect();
        let g_rows = rng.normal_vec(p.rows);
        let cfg = DflConfig {
            reg_max,
            reduction: p.reduction,
            loss_weight: 0.25,
        };
        let shape = [p.rows, p.bins];
        // Targets: host f64 for even cases, device f32 (borrowed by the kernel) or bf16 for odd ones.
        let label_host = host(&labels, &[p.rows], DType::F64);
        let label_gpu = match case % 4 {
            1 => host(&labels, &[p.rows], DType::F32)
                .to_device(&gpu)
                .unwrap(),
            3 => host(&labels, &[p.rows], DType::F16)
                .to_device(&gpu)
                .unwrap(),
            _ => label_host.try_clone().unwrap(),
        };
        // The reference sees the targets as the GPU path does (f16-rounded for case 3).
        let label_ref = wide(&label_gpu);
        for (dtype, fwd_tol, bwd_tol) in DTYPES {
            let (zh, wh) = (host(&z, &shape, dtype), host(&w, &[p.rows], dtype));
            let grad_out = match p.reduction {
                Reduction::None => host(&g_rows, &[p.rows], dtype),
                _ => host(&[1.25], &[], dtype),
            };
            let (w64, wg) = (wide(&wh), wh.to_device(&gpu).unwrap());
            let weighting_cpu = LossWeighting::new(p.weighted.then_some(&w64), p.avg_factor);
            let weighting_gpu = LossWeighting::new(p.weighted.then_some(&wg), p.avg_factor);
            let what = format!(
                "case {case} {dtype} rows {} bins {} {:?} weighted {} avg {:?}",
                p.rows, p.bins, p.reduction, p.weighted, p.avg_factor
            );

            let want = values(
                &distribution_focal_loss(&wide(&zh), &label_ref, weighting_cpu, &cfg).unwrap(),
            );
            let zg = zh.to_device(&gpu).unwrap();
            let got = distribution_focal_loss(&zg, &label_gpu, weighting_gpu, &cfg).unwrap();
            assert_close(&format!("forward {what}"), &values(&got), &want, fwd_tol);

            let want_grad = values(
                &distribution_focal_loss_backward(
                    &wide(&grad_out),
                    &wide(&zh),
                    &label_ref,
                    weighting_cpu,
                    &cfg,
                )
                .unwrap(),
            );
            let mut grad = host(&vec![f64::NAN; n], &shape, dtype)
                .to_device(&gpu)
                .unwrap();
            distribution_focal_loss_backward_into(
                &grad_out.to_device(&gpu).unwrap(),
                &zg,
                &label_gpu,
                weighting_gpu,
                &cfg,
                &mut grad,
            )
            .unwrap();
            assert_close(
                &format!("backward {what}"),
                &values(&grad),
                &want_grad,
                bwd_tol,
            );

            if p.reduction != Reduction::None {
                let mut grad = host(&vec![f64::NAN; n], &shape, dtype)
                    .to_device(&gpu)
                    .unwrap();
                let loss = distribution_focal_loss_fused_into(
                    &zg,
                    &label_gpu,
                    weighting_gpu,
                    &cfg,
                    1.25,
                    &mut grad,
                )
                .unwrap();
                assert_close(
                    &format!("fused loss {what}"),
                    &values(&loss),
                    &want,
                    fwd_tol,
                );
                assert_close(
                    &format!("fused grad {what}"),
                    &values(&grad),
                    &want_grad,
                    bwd_tol,
                );
            }
        }
    }
}

#[test]
fn cuda_integral_matches_cpu_on_random_shapes() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_integral_matches_cpu_on_random_shapes") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(902);
    for (case, &bins) in BIN_COUNTS.iter().cycle().take(14).enumerate() {
        let cfg = IntegralConfig { reg_max: bins - 1 };
        let rows = [1, 5, 33, 4000][case % 4];
        let scale = [1.0, 4.0, 40.0][case % 3];
        let shape = [rows, bins];
        let z: Vec<f64> = rng
            .normal_vec(rows * bins)
            .iter()
            .map(|v| v * scale)
            .collect();
        let g = rng.normal_vec(rows);
        for (dtype, fwd_tol, bwd_tol) in DTYPES {
            let (zh, gh) = (host(&z, &shape, dtype), host(&g, &[rows], dtype));
            let what = format!("case {case} {dtype} rows {rows} bins {bins}");
            let want = values(&integral(&wide(&zh), &cfg).unwrap());
            let mut out = host(&vec![f64::NAN; rows], &[rows], dtype)
                .to_device(&gpu)
                .unwrap();
            let zg = zh.to_device(&gpu).unwrap();
            integral_into(&zg, &cfg, &mut out).unwrap();
            assert_close(&format!("forward {what}"), &values(&out), &want, fwd_tol);
            let want_grad = values(&integral_backward(&wide(&gh), &wide(&zh), &cfg).unwrap());
            let mut grad = host(&vec![f64::NAN; rows * bins], &shape, dtype)
                .to_device(&gpu)
                .unwrap();
            integral_backward_into(&gh.to_device(&gpu).unwrap(), &zg, &cfg, &mut grad).unwrap();
            assert_close(
                &format!("backward {what}"),
                &values(&grad),
                &want_grad,
                bwd_tol,
            );
        }
    }
}

#[test]
fn cuda_reduced_losses_are_bitwise_reproducible() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_reduced_losses_are_bitwise_reproducible")
    else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(903);
    let (rows, bins) = (80_000, 17);
    let s = host(&rng.normal_vec(rows * bins), &[rows, bins], DType::F32)
        .to_device(&gpu)
        .unwrap();
    let t = host(&rng.normal_vec(rows * bins), &[rows, bins], DType::F32)
        .to_device(&gpu)
        .unwrap();
    let labels = host(&random_targets(&mut rng, rows, 16), &[rows], DType::F32)
        .to_device(&gpu)
        .unwrap();
    let bits = |t: &Tensor| -> Vec<u64> { values(t).iter().map(|v| v.to_bits()).collect() };
    let kl = KdKlConfig::ld();
    let dfl = DflConfig::gfl();
    let first = kd_kl_div_fused(&s, &t, LossWeighting::NONE, &kl, 1.0).unwrap();
    let first_dfl = distribution_focal_loss(&s, &labels, LossWeighting::NONE, &dfl).unwrap();
    for _ in 0..3 {
        let again = kd_kl_div_fused(&s, &t, LossWeighting::NONE, &kl, 1.0).unwrap();
        assert_eq!(bits(&first.loss), bits(&again.loss));
        assert_eq!(bits(&first.grad), bits(&again.grad));
        let again = distribution_focal_loss(&s, &labels, LossWeighting::NONE, &dfl).unwrap();
        assert_eq!(bits(&first_dfl), bits(&again));
    }
}

#[test]
fn cuda_empty_and_mean_of_nothing() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_empty_and_mean_of_nothing") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let empty = host(&[], &[0, 17], DType::F32).to_device(&gpu).unwrap();
    let labels = host(&[], &[0], DType::F32);
    let mean = KdKlConfig::default();
    let loss = kd_kl_div(&empty, &empty, LossWeighting::NONE, &mean).unwrap();
    assert!(values(&loss)[0].is_nan(), "torch.mean of nothing is NaN");
    let loss = kd_kl_div(&empty, &empty, LossWeighting::new(None, Some(2.0)), &mean).unwrap();
    assert_eq!(values(&loss), vec![0.0]);
    let loss = distribution_focal_loss(
        &empty,
        &labels,
        LossWeighting::new(None, Some(2.0)),
        &DflConfig::default(),
    )
    .unwrap();
    assert_eq!((loss.device(), values(&loss)), (gpu.clone(), vec![0.0]));
    let d = integral(&empty, &IntegralConfig::default()).unwrap();
    assert_eq!(d.shape(), &[0]);
}

#[test]
fn cuda_matches_pytorch_fixtures() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_matches_pytorch_fixtures") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    for (name, bytes) in FIXTURES {
        let fused_too = reduces(&io::from_bytes(bytes).unwrap());
        check_fixture(name, bytes, DType::F32, &gpu, false, 1e-5);
        if fused_too {
            check_fixture(name, bytes, DType::F32, &gpu, true, 1e-5);
        }
    }
}

#[test]
fn cuda_rejects_mixed_devices_and_bad_targets_on_the_device() {
    let Some(gpu) =
        detkd::cuda::gpu_for_test("cuda_rejects_mixed_devices_and_bad_targets_on_the_device")
    else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let s = host(&[0.5; 2 * 17], &[2, 17], DType::F32);
    let sg = s.to_device(&gpu).unwrap();
    let err = kd_kl_div(&sg, &s, LossWeighting::NONE, &KdKlConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("`teacher`") && err.contains("cpu"), "{err}");
    let w = host(&[1.0, 1.0], &[2], DType::F32);
    let err = kd_kl_div(
        &sg,
        &sg,
        LossWeighting::new(Some(&w), None),
        &KdKlConfig::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("`weight`"), "{err}");
    // Targets on the device are still validated on the host before any launch.
    let bad = host(&[1.0, 16.0], &[2], DType::F32)
        .to_device(&gpu)
        .unwrap();
    let err = distribution_focal_loss(&sg, &bad, LossWeighting::NONE, &DflConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("`label`: element 1 is 16"), "{err}");
    // CPU logits with device targets are refused.
    let good = host(&[1.0, 15.5], &[2], DType::F32)
        .to_device(&gpu)
        .unwrap();
    let err = distribution_focal_loss(&s, &good, LossWeighting::NONE, &DflConfig::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`label`") && err.contains("the host or cpu"),
        "{err}"
    );
}
