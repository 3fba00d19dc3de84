//! The softmax family against PyTorch (golden fixtures from scripts/make_fixtures_glue.py, run through the
//! `detkd parity` runner) and CUDA against the CPU reference. GPU tests print `SKIP` without a driver and
//! fail under `DETKD_REQUIRE_GPU=1`.

use detkd::ops::softmax::{
    log_softmax_last_axis, log_softmax_last_axis_backward, log_softmax_last_axis_into,
    softmax_last_axis, softmax_last_axis_backward, softmax_last_axis_into,
};
use detkd::tensor::io;
use detkd::testing::{assert_close, f64_of, host, poisoned, vals, Rng, TOLERANCES};
use detkd::{DType, Device, Tensor};

/// Every fixture, embedded so the test binary runs anywhere (e.g. carried to a GPU machine).
macro_rules! fixtures {
    ($($name:literal),* $(,)?) => {
        [$(($name, include_bytes!(concat!("fixtures/softmax/", $name, ".safetensors")).as_slice())),*]
    };
}
const FIXTURES: [(&str, &[u8]); 9] = fixtures![
    "softmax_ld_bins",
    "softmax_classes_t2",
    "log_softmax_t05",
    "softmax_negative_temperature",
    "softmax_rank3",
    "softmax_single_column",
    "log_softmax_long_row",
    "softmax_large_logits",
    "log_softmax_large_logits",
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
    assert_eq!(expected.len(), 2, "{name}: expected output and gradient");
    assert_eq!(results.tensors.len(), 2, "{name}");
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

/// Fixture inputs are exact in every dtype. Half-precision gradients are computed from the rounded
/// forward output (what a tape keeps), hence the looser bf16 bound.
const FIXTURE_TOLERANCES: [(DType, f64); 4] = [
    (DType::F64, 1e-12),
    (DType::F32, 1e-5),
    (DType::F16, 1e-2),
    (DType::BF16, 2e-2),
];

#[test]
fn cpu_matches_pytorch_fixtures() {
    for (name, bytes) in FIXTURES {
        for (dtype, tol) in FIXTURE_TOLERANCES {
            check_fixture(name, bytes, dtype, &Device::Cpu, tol);
        }
    }
}

#[test]
fn fixtures_cover_both_ops_and_the_edge_cases() {
    let files: Vec<_> = FIXTURES
        .iter()
        .map(|(n, b)| (*n, io::from_bytes(b).unwrap()))
        .collect();
    for op in ["softmax_last_axis", "log_softmax_last_axis"] {
        assert!(files.iter().any(|(_, f)| f.metadata["op"] == op), "{op}");
    }
    let get = |name: &str| &files.iter().find(|(n, _)| *n == name).unwrap().1;
    let large = get("softmax_large_logits")
        .get("x")
        .unwrap()
        .to_vec::<f64>()
        .unwrap();
    assert!(large.iter().all(|v| v.abs() > 900.0), "large logits");
    assert!(get("log_softmax_long_row").get("x").unwrap().shape()[1] > 1024);
    assert!(get("softmax_negative_temperature").metadata["temperature"].starts_with('-'));
}

#[test]
fn parity_rejects_a_bad_temperature() {
    let (_, bytes) = FIXTURES[0];
    let mut inputs = io::from_bytes(bytes).unwrap();
    for (value, expected) in [
        ("warm", "`temperature`: expected a float"),
        ("0", "`temperature`: must be finite and non-zero"),
        ("nan", "`temperature`: must be finite and non-zero"),
    ] {
        inputs.metadata.insert("temperature".into(), value.into());
        let err = detkd::parity::run(&inputs, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{value}: {err}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// CUDA vs CPU

#[test]
fn cuda_softmax_matches_cpu_on_random_shapes() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_softmax_matches_cpu_on_random_shapes") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(100);
    // Every group width (1..32 lanes), the group/block boundary at 1024, and rows of 64k and more.
    let widths = [
        1, 2, 3, 4, 5, 8, 9, 17, 31, 32, 33, 64, 80, 127, 128, 129, 1000, 1024, 1025, 3000, 65_536,
        70_001,
    ];
    for (case, &cols) in widths.iter().enumerate() {
        let rows = if cols > 10_000 {
            1 + rng.below(4)
        } else {
            1 + rng.below(700)
        };
        let temperature = [1.0, 2.0, 0.5, -1.3][case % 4];
        let scale = [1.0, 5.0, 30.0][case % 3];
        let x: Vec<f64> = rng
            .normal_vec(rows * cols)
            .iter()
            .map(|v| v * scale)
            .collect();
        let g = rng.normal_vec(rows * cols);
        for (dtype, fwd_tol, bwd_tol) in TOLERANCES {
            let shape = [rows, cols];
            let (xh, gh) = (host(&x, &shape, dtype), host(&g, &shape, dtype));
            let (xg, gg) = (xh.to_device(&gpu).unwrap(), gh.to_device(&gpu).unwrap());
            for log in [false, true] {
                let what = format!("cols={cols} rows={rows} T={temperature} {dtype} log={log}");
                let mut out = poisoned(&shape, dtype, &gpu);
                if log {
                    log_softmax_last_axis_into(&xg, temperature, &mut out).unwrap();
                } else {
                    softmax_last_axis_into(&xg, temperature, &mut out).unwrap();
                }
                let want = if log {
                    log_softmax_last_axis(&f64_of(&xh), temperature)
                } else {
                    softmax_last_axis(&f64_of(&xh), temperature)
                }
                .unwrap();
                assert_close(
                    &format!("forward {what}"),
                    &vals(&out),
                    &vals(&want),
                    fwd_tol,
                );
                // The backward reads the forward output: give both sides the same (GPU) one.
                let (got, want) = if log {
                    (
                        log_softmax_last_axis_backward(&out, &gg, temperature).unwrap(),
                        log_softmax_last_axis_backward(&f64_of(&out), &f64_of(&gh), temperature)
                            .unwrap(),
                    )
                } else {
                    (
                        softmax_last_axis_backward(&out, &gg, temperature).unwrap(),
                        softmax_last_axis_backward(&f64_of(&out), &f64_of(&gh), temperature)
                            .unwrap(),
                    )
                };
                assert_eq!(got.dtype(), dtype);
                assert_close(
                    &format!("backward {what}"),
                    &vals(&got),
                    &vals(&want),
                    bwd_tol,
                );
            }
        }
    }
}

#[test]
fn cuda_softmax_is_stable_and_reproducible() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_softmax_is_stable_and_reproducible") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(200);
    for cols in [17, 80, 5000] {
        // ±1e4 offsets: e^{1e4} overflows every float type; the max shift must keep this finite.
        let x: Vec<f64> = rng
            .normal_vec(64 * cols)
            .iter()
            .enumerate()
            .map(|(i, v)| v + if (i / cols) % 2 == 0 { 1e4 } else { -1e4 })
            .collect();
        let xg = host(&x, &[64, cols], DType::F32).to_device(&gpu).unwrap();
        let p = softmax_last_axis(&xg, 1.0).unwrap();
        let want = softmax_last_axis(&f64_of(&host(&x, &[64, cols], DType::F32)), 1.0).unwrap();
        assert_close(
            &format!("large logits cols={cols}"),
            &vals(&p),
            &vals(&want),
            1e-5,
        );
        let bits = |t: &Tensor| vals(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let lp = bits(&log_softmax_last_axis(&xg, 1.0).unwrap());
        for _ in 0..3 {
            assert_eq!(bits(&softmax_last_axis(&xg, 1.0).unwrap()), bits(&p));
            assert_eq!(bits(&log_softmax_last_axis(&xg, 1.0).unwrap()), lp);
        }
    }
}

#[test]
fn cuda_matches_pytorch_fixtures() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_matches_pytorch_fixtures") else {
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
fn cuda_empty_and_mixed_device_inputs() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_empty_and_mixed_device_inputs") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    for shape in [[0usize, 17], [5, 0]] {
        let e = host(&[], &shape, DType::F16).to_device(&gpu).unwrap();
        assert_eq!(softmax_last_axis(&e, 1.0).unwrap().shape(), &shape);
        assert_eq!(
            log_softmax_last_axis_backward(&e, &e, 1.0).unwrap().shape(),
            &shape
        );
    }
    let y = host(&[0.5, 0.5], &[1, 2], DType::F32)
        .to_device(&gpu)
        .unwrap();
    let g = host(&[1.0, 0.0], &[1, 2], DType::F32);
    let e = softmax_last_axis_backward(&y, &g, 1.0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("`grad_out`") && e.contains("cpu"), "{e}");
}
