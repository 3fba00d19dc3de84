//! The norm family against PyTorch (golden fixtures from scripts/make_fixtures_nn.py, run through the
//! `detkd parity` runner, in f64, f32, f16 and bf16) and CUDA against the CPU reference. GPU tests print
//! `SKIP` without a driver and fail under `DETKD_REQUIRE_GPU=1`.

use detkd::ops::norm::{
    batch_norm_backward, batch_norm_eval, batch_norm_train, group_norm, group_norm_backward,
    BatchNormConfig, GroupNormConfig, RunningStats, DRKD_BATCH_NORM_EPS,
};
use detkd::tensor::io;
use detkd::testing::{assert_close, f64_of, host, vals, Rng, TOLERANCES};
use detkd::{DType, Device, Tensor};

/// Every fixture, embedded so the test binary runs anywhere (e.g. carried to a GPU machine).
macro_rules! fixtures {
    ($($name:literal),* $(,)?) => {
        [$(($name, include_bytes!(concat!("fixtures/norm/", $name, ".safetensors")).as_slice())),*]
    };
}
const FIXTURES: [(&str, &[u8]); 15] = fixtures![
    "bn_train_affine_running",
    "bn_train_drkd_eps",
    "bn_train_momentum_0.3_no_affine",
    "bn_train_no_running",
    "bn_train_large_mean",
    "bn_train_single_pixel",
    "bn_train_empty_batch",
    "bn_eval_affine",
    "bn_eval_drkd_eps_no_affine",
    "gn_32_groups",
    "gn_4_groups",
    "gn_1_group_no_affine",
    "gn_group_per_channel",
    "gn_large_mean",
    "gn_empty_batch",
];

const FIXTURE_TOLERANCES: [(DType, f64); 4] = [
    (DType::F64, 1e-10),
    (DType::F32, 1e-5),
    (DType::F16, 1e-2),
    (DType::BF16, 2e-2),
];

/// Runs the fixture's op with `dtype` on `device` and compares every result with PyTorch's. Results and
/// PyTorch's tensors correspond one to one, except that the statistics of an empty batch (which PyTorch
/// does not define) are not compared.
fn check_fixture(name: &str, bytes: &[u8], dtype: DType, device: &Device, tol: f64) {
    let mut inputs = io::from_bytes(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    inputs.metadata.insert("dtype".into(), dtype.name().into());
    let results = detkd::parity::run(&inputs, device).unwrap_or_else(|e| panic!("{name}: {e}"));
    let empty = inputs.get("x").unwrap().numel() == 0;
    for result in results.tensors.keys() {
        let statistic = result == "mean" || result == "inv_std";
        assert!(
            inputs.tensors.contains_key(&format!("expected.{result}")) || (empty && statistic),
            "{name}: unexpected result {result}"
        );
    }
    let expected: Vec<&String> = inputs
        .tensors
        .keys()
        .filter(|k| k.starts_with("expected."))
        .collect();
    assert!(!expected.is_empty(), "{name}");
    for key in expected {
        let result_name = &key["expected.".len()..];
        let got = results
            .get(result_name)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = inputs.get(key).unwrap();
        assert_eq!(got.shape(), want.shape(), "{name}/{result_name}");
        let statistic = result_name == "mean" || result_name == "inv_std";
        let result_dtype = if statistic && dtype != DType::F64 {
            DType::F32 // statistics are kept in the compute dtype
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

/// Half storage cannot hold values around 100 finely enough (f16 steps by 1/16 there, bf16 by 1/2) for the
/// ±1.5 spread of the `large_mean` fixtures: those run in f32 and f64 only.
fn dtypes_for(name: &str) -> &'static [(DType, f64)] {
    if name.contains("large_mean") {
        &FIXTURE_TOLERANCES[..2]
    } else {
        &FIXTURE_TOLERANCES
    }
}

#[test]
fn cpu_matches_pytorch_fixtures() {
    for (name, bytes) in FIXTURES {
        for &(dtype, tol) in dtypes_for(name) {
            check_fixture(name, bytes, dtype, &Device::Cpu, tol);
        }
    }
}

#[test]
fn fixtures_cover_the_configurations() {
    let all: Vec<_> = FIXTURES
        .iter()
        .map(|(_, b)| io::from_bytes(b).unwrap())
        .collect();
    let has = |pred: &dyn Fn(&io::NamedTensors) -> bool| all.iter().any(pred);
    assert!(has(&|f| f.metadata["op"] == "batch_norm_train"
        && f.tensors.contains_key("expected.running_var")));
    assert!(
        has(&|f| f.metadata.get("eps").is_some_and(|e| e == "0.0001")),
        "DRKD's eps"
    );
    assert!(has(&|f| f
        .metadata
        .get("momentum")
        .is_some_and(|m| m == "0.3")));
    assert!(has(&|f| f.metadata["op"] == "batch_norm_eval"));
    assert!(has(&|f| f
        .metadata
        .get("num_groups")
        .is_some_and(|g| g == "32")));
    assert!(has(
        &|f| f.metadata["op"] == "group_norm" && !f.tensors.contains_key("weight")
    ));
    assert!(has(
        &|f| f.get("x").unwrap().shape()[0] == 0 && f.metadata["op"] == "group_norm"
    ));
}

#[test]
fn parity_rejects_bad_metadata() {
    let find = |n: &str| FIXTURES.iter().find(|(name, _)| *name == n).unwrap().1;
    let mut inputs = io::from_bytes(find("gn_4_groups")).unwrap();
    inputs.metadata.insert("num_groups".into(), "3".into());
    let err = detkd::parity::run(&inputs, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`num_groups`: must be > 0 and divide the 8 channels, got 3"),
        "{err}"
    );
    let mut inputs = io::from_bytes(find("bn_train_affine_running")).unwrap();
    inputs.tensors.remove("running_var");
    let err = detkd::parity::run(&inputs, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("both running_mean and running_var"), "{err}");
    let mut inputs = io::from_bytes(find("bn_train_affine_running")).unwrap();
    inputs.metadata.insert("momentum".into(), "fast".into());
    let err = detkd::parity::run(&inputs, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`momentum`: expected a float in [0, 1]"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------------------
// CUDA vs CPU

/// `Some(t)` for an affine normalisation, `None` otherwise.
fn pick_if(affine: bool) -> impl Fn(&Tensor) -> Option<&Tensor> {
    move |t| affine.then_some(t)
}

#[test]
fn cuda_matches_cpu_on_random_shapes() {
    let Some(gpu) = detkd::cuda::gpu_for_test("norm::cuda_matches_cpu_on_random_shapes") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(970);
    for case in 0..16 {
        let groups = [1, 2, 4, 8][rng.below(4)];
        let (b, c) = (1 + rng.below(4), groups * (1 + rng.below(6)));
        let (h, w) = (1 + rng.below(40), 2 + rng.below(40)); // B·H·W > 1 for training statistics
        let s = [b, c, h, w];
        let n = b * c * h * w;
        let (x, g) = (rng.normal_vec(n), rng.normal_vec(n));
        let (wv, bv) = (rng.normal_vec(c), rng.normal_vec(c));
        let (rm, rv): (Vec<f64>, Vec<f64>) = (
            rng.normal_vec(c),
            rng.normal_vec(c).iter().map(|v| v.abs() + 0.5).collect(),
        );
        let affine = case % 3 != 2;
        for (dtype, fwd_tol, bwd_tol) in TOLERANCES {
            let what = format!("case {case} {dtype} {s:?} G={groups} affine={affine}");
            let cast = |v: &[f64], shape: &[usize]| host(v, shape, dtype);
            let (xh, gh, wh, bh) = (cast(&x, &s), cast(&g, &s), cast(&wv, &[c]), cast(&bv, &[c]));
            let (rmh, rvh) = (cast(&rm, &[c]), cast(&rv, &[c]));
            let on_gpu = |t: &Tensor| t.to_device(&gpu).unwrap();
            let (xg, gg, wg, bg, rmg, rvg) = (
                on_gpu(&xh),
                on_gpu(&gh),
                on_gpu(&wh),
                on_gpu(&bh),
                on_gpu(&rmh),
                on_gpu(&rvh),
            );
            let (w64, b64, rm64, rv64) = (f64_of(&wh), f64_of(&bh), f64_of(&rmh), f64_of(&rvh));
            let pick = pick_if(affine);

            let cfg = BatchNormConfig {
                eps: [1e-5, DRKD_BATCH_NORM_EPS][case % 2],
                momentum: 0.1,
            };
            let got = batch_norm_train(
                &xg,
                pick(&wg),
                pick(&bg),
                Some(RunningStats {
                    mean: &rmg,
                    var: &rvg,
                }),
                &cfg,
            )
            .unwrap();
            let want = batch_norm_train(
                &f64_of(&xh),
                pick(&w64),
                pick(&b64),
                Some(RunningStats {
                    mean: &rm64,
                    var: &rv64,
                }),
                &cfg,
            )
            .unwrap();
            assert_close(
                &format!("bn {what}"),
                &vals(&got.output),
                &vals(&want.output),
                fwd_tol,
            );
            assert_close(
                &format!("bn mean {what}"),
                &vals(&got.stats.mean),
                &vals(&want.stats.mean),
                fwd_tol,
            );
            assert_close(
                &format!("bn inv_std {what}"),
                &vals(&got.stats.inv_std),
                &vals(&want.stats.inv_std),
                fwd_tol,
            );
            assert_close(
                &format!("bn running_mean {what}"),
                &vals(got.running_mean.as_ref().unwrap()),
                &vals(want.running_mean.as_ref().unwrap()),
                fwd_tol,
            );
            assert_close(
                &format!("bn running_var {what}"),
                &vals(got.running_var.as_ref().unwrap()),
                &vals(want.running_var.as_ref().unwrap()),
                fwd_tol,
            );
            let gr = batch_norm_backward(&xg, pick(&wg), &got.stats, &gg).unwrap();
            let wr =
                batch_norm_backward(&f64_of(&xh), pick(&w64), &want.stats, &f64_of(&gh)).unwrap();
            assert_close(
                &format!("bn dx {what}"),
                &vals(&gr.input),
                &vals(&wr.input),
                bwd_tol,
            );
            assert_close(
                &format!("bn dw {what}"),
                &vals(&gr.weight),
                &vals(&wr.weight),
                bwd_tol,
            );
            assert_close(
                &format!("bn db {what}"),
                &vals(&gr.bias),
                &vals(&wr.bias),
                bwd_tol,
            );

            let eval = batch_norm_eval(
                &xg,
                pick(&wg),
                pick(&bg),
                RunningStats {
                    mean: &rmg,
                    var: &rvg,
                },
                cfg.eps,
            )
            .unwrap();
            let want_eval = batch_norm_eval(
                &f64_of(&xh),
                pick(&w64),
                pick(&b64),
                RunningStats {
                    mean: &rm64,
                    var: &rv64,
                },
                cfg.eps,
            )
            .unwrap();
            assert_close(
                &format!("bn eval {what}"),
                &vals(&eval),
                &vals(&want_eval),
                fwd_tol,
            );

            let gcfg = GroupNormConfig {
                num_groups: groups,
                eps: 1e-5,
            };
            let got = group_norm(&xg, pick(&wg), pick(&bg), &gcfg).unwrap();
            let want = group_norm(&f64_of(&xh), pick(&w64), pick(&b64), &gcfg).unwrap();
            assert_close(
                &format!("gn {what}"),
                &vals(&got.output),
                &vals(&want.output),
                fwd_tol,
            );
            assert_close(
                &format!("gn inv_std {what}"),
                &vals(&got.stats.inv_std),
                &vals(&want.stats.inv_std),
                fwd_tol,
            );
            let gr = group_norm_backward(&xg, pick(&wg), &got.stats, &gg, &gcfg).unwrap();
            let wr =
                group_norm_backward(&f64_of(&xh), pick(&w64), &want.stats, &f64_of(&gh), &gcfg)
                    .unwrap();
            assert_close(
                &format!("gn dx {what}"),
                &vals(&gr.input),
                &vals(&wr.input),
                bwd_tol,
            );
            assert_close(
                &format!("gn dw {what}"),
                &vals(&gr.weight),
                &vals(&wr.weight),
                bwd_tol,
            );
            assert_close(
                &format!("gn db {what}"),
                &vals(&gr.bias),
                &vals(&wr.bias),
                bwd_tol,
            );
        }
    }
}

#[test]
fn cuda_large_maps_are_reproducible() {
    // Channels much longer than a block (8×64×50×84 per BatchNorm channel: 33 600 values), 32 groups.
    let Some(gpu) = detkd::cuda::gpu_for_test("norm::cuda_large_maps_are_reproducible") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(971);
    let s = [8, 64, 50, 84];
    let n: usize = s.iter().product();
    let x = host(&rng.normal_vec(n), &s, DType::F32);
    let g = host(&rng.normal_vec(n), &s, DType::F32);
    let w = host(&rng.normal_vec(64), &[64], DType::F32);
    let (xg, gg, wg) = (
        x.to_device(&gpu).unwrap(),
        g.to_device(&gpu).unwrap(),
        w.to_device(&gpu).unwrap(),
    );
    let bits = |t: &Tensor| -> Vec<u64> { vals(t).iter().map(|v| v.to_bits()).collect() };
    let cfg = BatchNormConfig::default();
    let bn = batch_norm_train(&xg, Some(&wg), None, None, &cfg).unwrap();
    let want = batch_norm_train(&f64_of(&x), Some(&f64_of(&w)), None, None, &cfg).unwrap();
    assert_close("bn", &vals(&bn.output), &vals(&want.output), 1e-5);
    let first = batch_norm_backward(&xg, Some(&wg), &bn.stats, &gg).unwrap();
    let again = batch_norm_backward(&xg, Some(&wg), &bn.stats, &gg).unwrap();
    assert_eq!(bits(&first.input), bits(&again.input));
    assert_eq!(bits(&first.weight), bits(&again.weight));
    let gcfg = GroupNormConfig::default();
    let gn = group_norm(&xg, Some(&wg), None, &gcfg).unwrap();
    let want = group_norm(&f64_of(&x), Some(&f64_of(&w)), None, &gcfg).unwrap();
    assert_close("gn", &vals(&gn.output), &vals(&want.output), 1e-5);
    let first = group_norm_backward(&xg, Some(&wg), &gn.stats, &gg, &gcfg).unwrap();
    let again = group_norm_backward(&xg, Some(&wg), &gn.stats, &gg, &gcfg).unwrap();
    assert_eq!(bits(&first.input), bits(&again.input));
    assert_eq!(bits(&first.bias), bits(&again.bias));
    let wr = group_norm_backward(
        &f64_of(&x),
        Some(&f64_of(&w)),
        &want.stats,
        &f64_of(&g),
        &gcfg,
    )
    .unwrap();
    assert_close("gn dx", &vals(&first.input), &vals(&wr.input), 1e-4);
}

#[test]
fn cuda_matches_pytorch_fixtures() {
    let Some(gpu) = detkd::cuda::gpu_for_test("norm::cuda_matches_pytorch_fixtures") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    for (name, bytes) in FIXTURES {
        for &(dtype, tol) in &dtypes_for(name)[1..] {
            check_fixture(name, bytes, dtype, &gpu, tol);
        }
    }
}

#[test]
fn cuda_mixed_devices_are_errors() {
    let Some(gpu) = detkd::cuda::gpu_for_test("norm::cuda_mixed_devices_are_errors") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let x = host(
        &[0.5, 1.5, -1.0, 2.0, 0.0, 3.0, 1.0, -2.0],
        &[2, 2, 1, 2],
        DType::F32,
    )
    .to_device(&gpu)
    .unwrap();
    let w = host(&[1.0, 2.0], &[2], DType::F32);
    let err = batch_norm_train(&x, Some(&w), None, None, &BatchNormConfig::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("`weight`") && err.contains("cpu"), "{err}");
    let err = group_norm(
        &x,
        None,
        Some(&w),
        &GroupNormConfig {
            num_groups: 2,
            eps: 1e-5,
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("`bias`"), "{err}");
    let empty = host(&[], &[0, 2, 3, 3], DType::F32)
        .to_device(&gpu)
        .unwrap();
    let out = group_norm(
        &empty,
        None,
        None,
        &GroupNormConfig {
            num_groups: 2,
            eps: 1e-5,
        },
    )
    .unwrap();
    assert_eq!(out.output.shape(), &[0, 2, 3, 3]);
}
