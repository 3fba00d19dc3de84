//! The conv2d family against PyTorch (golden fixtures from scripts/make_fixtures_nn.py, run through the
//! `detkd parity` runner, in f64, f32, f16 and bf16) and CUDA against the CPU reference. GPU tests print
//! `SKIP` without a driver and fail under `DETKD_REQUIRE_GPU=1`.

use detkd::ops::conv2d::{conv2d, conv2d_backward, conv2d_into, Conv2dConfig, Conv2dGradsWanted};
use detkd::tensor::io;
use detkd::testing::{assert_close, f64_of, host, poisoned, vals, Rng, TOLERANCES};
use detkd::{DType, Device, Tensor};

/// Every fixture, embedded so the test binary runs anywhere (e.g. carried to a GPU machine).
macro_rules! fixtures {
    ($($name:literal),* $(,)?) => {
        [$(($name, include_bytes!(concat!("fixtures/conv2d/", $name, ".safetensors")).as_slice())),*]
    };
}
const FIXTURES: [(&str, &[u8]); 9] = fixtures![
    "conv3x3_s1_p1",
    "conv3x3_s2_p1",
    "conv3x3_d2_p2_no_bias",
    "conv_non_square",
    "conv5x3_s3x2",
    "conv1x1",
    "conv1x1_s2",
    "conv3x3_chunked",
    "conv_empty_batch",
];

/// (dtype, tolerance) against PyTorch's f64 results on the unrounded inputs.
const FIXTURE_TOLERANCES: [(DType, f64); 4] = [
    (DType::F64, 1e-12),
    (DType::F32, 1e-5),
    (DType::F16, 1e-2),
    (DType::BF16, 2e-2),
];

/// Runs the fixture's op with `dtype` on `device` and compares every result with PyTorch's; every result
/// must have a PyTorch counterpart and the other way round.
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
        expected.len() >= 3,
        "{name}: fixture lacks the output and gradients"
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
        assert_eq!(got.dtype(), dtype, "{name}/{result_name}");
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
        for (dtype, tol) in FIXTURE_TOLERANCES {
            check_fixture(name, bytes, dtype, &Device::Cpu, tol);
        }
    }
}

#[test]
fn fixtures_cover_the_geometries() {
    let meta = |name: &str| {
        io::from_bytes(FIXTURES.iter().find(|(n, _)| *n == name).unwrap().1)
            .unwrap()
            .metadata
    };
    let all: Vec<_> = FIXTURES.iter().map(|(n, _)| meta(n)).collect();
    let any = |key: &str, value: &str| all.iter().any(|m| m.get(key).is_some_and(|v| v == value));
    assert!(any("stride", "2,2") && any("dilation", "2,2") && any("padding", "1,0"));
    assert!(any("stride", "2,1") && any("dilation", "1,2"), "non-square");
    assert!(any("workspace_bytes", "1"), "a chunked batch");
    let f =
        |name: &str| io::from_bytes(FIXTURES.iter().find(|(n, _)| *n == name).unwrap().1).unwrap();
    assert_eq!(f("conv1x1").get("weight").unwrap().shape(), &[6, 4, 1, 1]);
    assert_eq!(f("conv_empty_batch").get("x").unwrap().shape()[0], 0);
    assert!(!f("conv3x3_d2_p2_no_bias").tensors.contains_key("bias"));
}

#[test]
fn parity_rejects_bad_metadata() {
    let (_, bytes) = FIXTURES[0];
    for (key, value, expected) in [
        ("stride", "1,2,3", "`stride`: expected `h,w` or one integer"),
        (
            "padding",
            "a",
            "`padding`: expected comma-separated non-negative integers",
        ),
        (
            "dilation",
            "0",
            "`dilation`: the height dilation must be ≥ 1",
        ),
        (
            "workspace_bytes",
            "-1",
            "`workspace_bytes`: expected an integer",
        ),
    ] {
        let mut inputs = io::from_bytes(bytes).unwrap();
        inputs.metadata.insert(key.into(), value.into());
        let err = detkd::parity::run(&inputs, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{key}={value}: {err}");
    }
    let mut inputs = io::from_bytes(bytes).unwrap();
    inputs.tensors.remove("weight");
    let err = detkd::parity::run(&inputs, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("weight"), "{err}");
}

// ---------------------------------------------------------------------------------------------------------
// CUDA vs CPU

#[test]
fn cuda_matches_cpu_on_random_shapes() {
    let Some(gpu) = detkd::cuda::gpu_for_test("conv2d::cuda_matches_cpu_on_random_shapes") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(900);
    for case in 0..24 {
        let (b, cin, cout) = (1 + rng.below(3), 1 + rng.below(20), 1 + rng.below(70));
        let (h, w) = (1 + rng.below(30), 1 + rng.below(30));
        // Every fourth case is pointwise (1×1, stride 1, no padding), the path without im2col.
        let pointwise = case % 4 == 3;
        let (kh, kw) = if pointwise {
            (1, 1)
        } else {
            ([1, 3, 5][rng.below(3)], [1, 2, 3][rng.below(3)])
        };
        let mut cfg = if pointwise {
            Conv2dConfig::default()
        } else {
            Conv2dConfig {
                stride: (1 + rng.below(3), 1 + rng.below(2)),
                padding: (rng.below(3), rng.below(2)),
                dilation: (1 + rng.below(2), 1 + rng.below(2)),
                ..Conv2dConfig::default()
            }
        };
        if case % 5 == 1 {
            cfg.workspace_bytes = 1; // one image per chunk
        }
        let span_h = cfg.dilation.0 * (kh - 1) + 1;
        let span_w = cfg.dilation.1 * (kw - 1) + 1;
        let (h, w) = (h.max(span_h), w.max(span_w));
        let with_bias = case % 3 != 0;
        let (xs, ws) = ([b, cin, h, w], [cout, cin, kh, kw]);
        let x = rng.normal_vec(xs.iter().product());
        let wv = rng.normal_vec(ws.iter().product());
        let bv = rng.normal_vec(cout);
        for (dtype, fwd_tol, bwd_tol) in TOLERANCES {
            let what = format!("case {case} {dtype} x={xs:?} w={ws:?} {cfg:?} bias={with_bias}");
            let (xh, wh, bh) = (
                host(&x, &xs, dtype),
                host(&wv, &ws, dtype),
                host(&bv, &[cout], dtype),
            );
            let want = conv2d(
                &f64_of(&xh),
                &f64_of(&wh),
                with_bias.then(|| f64_of(&bh)).as_ref(),
                &cfg,
            )
            .unwrap();
            let (xg, wg, bg) = (
                xh.to_device(&gpu).unwrap(),
                wh.to_device(&gpu).unwrap(),
                bh.to_device(&gpu).unwrap(),
            );
            let mut out = poisoned(want.shape(), dtype, &gpu);
            conv2d_into(&xg, &wg, with_bias.then_some(&bg), &cfg, &mut out).unwrap();
            assert_close(
                &format!("forward {what}"),
                &vals(&out),
                &vals(&want),
                fwd_tol,
            );

            let g = host(&rng.normal_vec(want.numel()), want.shape(), dtype);
            let wanted = Conv2dGradsWanted {
                input: true,
                bias: with_bias,
            };
            let got = conv2d_backward(&xg, &wg, &g.to_device(&gpu).unwrap(), wanted, &cfg).unwrap();
            let reference =
                conv2d_backward(&f64_of(&xh), &f64_of(&wh), &f64_of(&g), wanted, &cfg).unwrap();
            assert_eq!(got.weight.dtype(), dtype);
            assert_close(
                &format!("dx {what}"),
                &vals(got.input.as_ref().unwrap()),
                &vals(reference.input.as_ref().unwrap()),
                bwd_tol,
            );
            assert_close(
                &format!("dw {what}"),
                &vals(&got.weight),
                &vals(&reference.weight),
                bwd_tol,
            );
            assert_eq!(got.bias.is_some(), with_bias);
            if let (Some(db), Some(want_db)) = (&got.bias, &reference.bias) {
                assert_close(&format!("db {what}"), &vals(db), &vals(want_db), bwd_tol);
            }
        }
    }
}

#[test]
fn cuda_large_layer_matches_cpu_and_is_reproducible() {
    // A detector-sized layer: 3×3, 64 → 64 channels at 40×40, 2 images; rows longer than the GEMM tiles and
    // split-K engaged for the weight gradient (K = B·OH·OW per image).
    let Some(gpu) =
        detkd::cuda::gpu_for_test("conv2d::cuda_large_layer_matches_cpu_and_is_reproducible")
    else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(901);
    let (xs, ws) = ([2, 64, 40, 40], [64, 64, 3, 3]);
    let cfg = Conv2dConfig::square(1, 1, 1);
    let x = host(&rng.normal_vec(xs.iter().product()), &xs, DType::F32);
    let w = host(&rng.normal_vec(ws.iter().product()), &ws, DType::F32);
    let b = host(&rng.normal_vec(64), &[64], DType::F32);
    let want = conv2d(&f64_of(&x), &f64_of(&w), Some(&f64_of(&b)), &cfg).unwrap();
    let (xg, wg, bg) = (
        x.to_device(&gpu).unwrap(),
        w.to_device(&gpu).unwrap(),
        b.to_device(&gpu).unwrap(),
    );
    let got = conv2d(&xg, &wg, Some(&bg), &cfg).unwrap();
    assert_close("forward", &vals(&got), &vals(&want), 1e-5);
    let g = host(&rng.normal_vec(want.numel()), want.shape(), DType::F32);
    let gg = g.to_device(&gpu).unwrap();
    let first = conv2d_backward(&xg, &wg, &gg, Conv2dGradsWanted::default(), &cfg).unwrap();
    let reference = conv2d_backward(
        &f64_of(&x),
        &f64_of(&w),
        &f64_of(&g),
        Conv2dGradsWanted::default(),
        &cfg,
    )
    .unwrap();
    assert_close(
        "dx",
        &vals(first.input.as_ref().unwrap()),
        &vals(reference.input.as_ref().unwrap()),
        1e-4,
    );
    assert_close("dw", &vals(&first.weight), &vals(&reference.weight), 1e-4);
    assert_close(
        "db",
        &vals(first.bias.as_ref().unwrap()),
        &vals(reference.bias.as_ref().unwrap()),
        1e-4,
    );
    let bits = |t: &Tensor| -> Vec<u64> { vals(t).iter().map(|v| v.to_bits()).collect() };
    for _ in 0..2 {
        let again = conv2d_backward(&xg, &wg, &gg, Conv2dGradsWanted::default(), &cfg).unwrap();
        assert_eq!(
            bits(again.input.as_ref().unwrap()),
            bits(first.input.as_ref().unwrap())
        );
        assert_eq!(bits(&again.weight), bits(&first.weight));
        assert_eq!(
            bits(again.bias.as_ref().unwrap()),
            bits(first.bias.as_ref().unwrap())
        );
        assert_eq!(
            bits(&conv2d(&xg, &wg, Some(&bg), &cfg).unwrap()),
            bits(&got)
        );
    }
}

#[test]
fn cuda_matches_pytorch_fixtures() {
    let Some(gpu) = detkd::cuda::gpu_for_test("conv2d::cuda_matches_pytorch_fixtures") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    for (name, bytes) in FIXTURES {
        for (dtype, tol) in &FIXTURE_TOLERANCES[1..] {
            check_fixture(name, bytes, *dtype, &gpu, *tol);
        }
    }
}

#[test]
fn cuda_bad_inputs_are_errors_and_empty_batches_launch_nothing() {
    let Some(gpu) = detkd::cuda::gpu_for_test("conv2d::cuda_bad_inputs_are_errors") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let x = host(&[0.5; 75], &[1, 3, 5, 5], DType::F32);
    let w = host(&[0.25; 54], &[2, 3, 3, 3], DType::F32);
    let cfg = Conv2dConfig::square(1, 1, 1);
    let err = conv2d(&x.to_device(&gpu).unwrap(), &w, None, &cfg)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`weight`") && err.contains("cpu"), "{err}");
    let bias = host(&[1.0, 2.0], &[2], DType::F32);
    let err = conv2d(
        &x.to_device(&gpu).unwrap(),
        &w.to_device(&gpu).unwrap(),
        Some(&bias),
        &cfg,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("`bias`"), "{err}");
    let empty = host(&[], &[0, 3, 5, 5], DType::F32)
        .to_device(&gpu)
        .unwrap();
    let wg = w.to_device(&gpu).unwrap();
    let y = conv2d(&empty, &wg, None, &cfg).unwrap();
    assert_eq!(y.shape(), &[0, 2, 5, 5]);
    let grads = conv2d_backward(&empty, &wg, &y, Conv2dGradsWanted::default(), &cfg).unwrap();
    assert_eq!(vals(&grads.weight), vec![0.0; 54]);
}
