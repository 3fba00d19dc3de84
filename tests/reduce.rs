//! The reduction family against PyTorch (golden fixtures from scripts/make_fixtures_glue.py, run through
//! the `detkd parity` runner) and CUDA against the CPU reference. GPU tests print `SKIP` without a driver
//! and fail under `DETKD_REQUIRE_GPU=1`.

use detkd::ops::reduce::{
    max_last_axis, max_last_axis_backward, mean_all, mean_all_backward, mean_axes,
    mean_axes_backward, mean_axes_into, sum_all, sum_all_backward, sum_axes, sum_axes_backward,
    sum_axes_into,
};
use detkd::tensor::io;
use detkd::testing::{assert_close, f64_of, host, poisoned, vals, Rng, TOLERANCES};
use detkd::{DType, Device, Tensor};

/// Every fixture, embedded so the test binary runs anywhere (e.g. carried to a GPU machine).
macro_rules! fixtures {
    ($($name:literal),* $(,)?) => {
        [$(($name, include_bytes!(concat!("fixtures/reduce/", $name, ".safetensors")).as_slice())),*]
    };
}
const FIXTURES: [(&str, &[u8]); 11] = fixtures![
    "sum_all",
    "mean_all",
    "sum_all_scalar",
    "sum_axes_keepdim",
    "sum_axes_last_negative",
    "mean_axes",
    "mean_axes_every_axis",
    "sum_axes_leading",
    "max_last_axis",
    "max_last_axis_rank3",
    "max_last_axis_ties",
];

/// The dtype of result `name` for data of `dtype`: full sums are f32 for half storage, indices i64.
fn result_dtype(op: &str, name: &str, dtype: DType) -> DType {
    match (op, name) {
        ("sum_all" | "mean_all", "output") if dtype != DType::F64 => DType::F32,
        (_, "indices") => DType::I64,
        _ => dtype,
    }
}

/// Runs the fixture's op with `dtype` on `device` and compares every result with PyTorch's.
fn check_fixture(name: &str, bytes: &[u8], dtype: DType, device: &Device, tol: f64) {
    let mut inputs = io::from_bytes(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    inputs.metadata.insert("dtype".into(), dtype.name().into());
    let op = inputs.metadata["op"].clone();
    let results = detkd::parity::run(&inputs, device).unwrap_or_else(|e| panic!("{name}: {e}"));
    let expected: Vec<&String> = inputs
        .tensors
        .keys()
        .filter(|k| k.starts_with("expected."))
        .collect();
    assert!(
        expected.len() >= 2,
        "{name}: no expected output and gradient"
    );
    assert_eq!(expected.len(), results.tensors.len(), "{name}");
    for key in expected {
        let result_name = &key["expected.".len()..];
        let got = results
            .get(result_name)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = inputs.get(key).unwrap();
        assert_eq!(got.shape(), want.shape(), "{name}/{result_name}");
        assert_eq!(
            got.dtype(),
            result_dtype(&op, result_name, dtype),
            "{name}/{result_name}"
        );
        let (got, want) = (got.to_vec::<f64>().unwrap(), want.to_vec::<f64>().unwrap());
        if result_name == "indices" {
            assert_eq!(got, want, "{name}: indices ({dtype} on {device})");
        } else {
            assert_close(
                &format!("{name}/{result_name} ({dtype} on {device})"),
                &got,
                &want,
                tol,
            );
        }
    }
}

const FIXTURE_TOLERANCES: [(DType, f64); 4] = [
    (DType::F64, 1e-12),
    (DType::F32, 1e-6),
    (DType::F16, 1e-2),
    (DType::BF16, 1e-2),
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
fn fixtures_cover_every_op_and_the_edge_cases() {
    let files: Vec<_> = FIXTURES
        .iter()
        .map(|(n, b)| (*n, io::from_bytes(b).unwrap()))
        .collect();
    for op in [
        "sum_all",
        "mean_all",
        "sum_axes",
        "mean_axes",
        "max_last_axis",
    ] {
        assert!(
            files.iter().any(|(_, f)| f.metadata["op"] == op),
            "no fixture for {op}"
        );
    }
    let get = |name: &str| &files.iter().find(|(n, _)| *n == name).unwrap().1;
    assert_eq!(
        get("sum_all_scalar").get("x").unwrap().shape(),
        &[] as &[usize]
    );
    assert_eq!(get("sum_axes_last_negative").metadata["axes"], "-1");
    assert_eq!(get("sum_axes_keepdim").metadata["keepdim"], "true");
    let ties = get("max_last_axis_ties").get("expected.indices").unwrap();
    assert_eq!(
        ties.to_vec::<i64>().unwrap(),
        vec![1, 0, 1],
        "first maximum wins"
    );
}

#[test]
fn parity_rejects_bad_metadata() {
    let get =
        |name: &str| io::from_bytes(FIXTURES.iter().find(|(n, _)| *n == name).unwrap().1).unwrap();
    let run = |inputs: &io::NamedTensors| {
        detkd::parity::run(inputs, &Device::Cpu)
            .unwrap_err()
            .to_string()
    };
    let mut f = get("sum_axes_keepdim");
    f.metadata.insert("axes".into(), "1,one".into());
    assert!(run(&f).contains("`axes`: expected comma-separated integers"));
    f.metadata.insert("axes".into(), "1,5".into());
    assert!(run(&f).contains("axis 5 is out of range"));
    f.metadata.insert("axes".into(), "1,-3".into());
    assert!(run(&f).contains("appears twice"));
    f.metadata.insert("axes".into(), "1".into());
    f.metadata.insert("keepdim".into(), "yes".into());
    assert!(run(&f).contains("`keepdim`: expected `true` or `false`"));
}

// ---------------------------------------------------------------------------------------------------------
// CUDA vs CPU

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

#[test]
fn cuda_full_reductions_match_cpu() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_full_reductions_match_cpu") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(100);
    // Around the block size, and beyond grid_for's 65 536-block cap (grid-stride slices).
    for n in [1, 255, 256, 257, 100_003, 65_536 * 256 + 77] {
        // Positive values: the sum has no cancellation, so the relative tolerance is meaningful.
        let x: Vec<f64> = (0..n).map(|_| rng.uniform(0.0, 1.0)).collect();
        for (dtype, tol, _) in TOLERANCES {
            let xh = host(&x, &[n], dtype);
            let xg = xh.to_device(&gpu).unwrap();
            for mean in [false, true] {
                let (got, want) = if mean {
                    (mean_all(&xg).unwrap(), mean_all(&f64_of(&xh)).unwrap())
                } else {
                    (sum_all(&xg).unwrap(), sum_all(&f64_of(&xh)).unwrap())
                };
                assert_eq!((got.dtype(), got.shape()), (DType::F32, &[] as &[usize]));
                // Accumulated in f32 whatever the storage: f32 tolerance for half inputs too.
                let tol = tol.min(1e-5);
                assert_close(
                    &format!("n={n} {dtype} mean={mean}"),
                    &vals(&got),
                    &vals(&want),
                    tol,
                );
            }
            if n < 1000 {
                let g = host(&[0.75], &[], DType::F32).to_device(&gpu).unwrap();
                let dx = mean_all_backward(&xg, &g).unwrap();
                assert_eq!(dx.dtype(), dtype);
                let want = mean_all_backward(&f64_of(&xh), &f64_of(&g)).unwrap();
                assert_close("mean_all backward", &vals(&dx), &vals(&want), tol);
                let dx = sum_all_backward(&xg, &host(&[0.5], &[], dtype).to_device(&gpu).unwrap())
                    .unwrap();
                assert!(vals(&dx).iter().all(|&v| v == 0.5));
            }
        }
    }
}

#[test]
fn cuda_axis_reductions_match_cpu_on_random_shapes() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_axis_reductions_match_cpu_on_random_shapes")
    else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(200);
    for case in 0..30 {
        let rank = 1 + rng.below(5);
        let max_extent = if case < 20 { 9 } else { 120 };
        let shape: Vec<usize> = (0..rank).map(|_| 1 + rng.below(max_extent)).collect();
        if numel(&shape) > 3_000_000 {
            continue;
        }
        let mut axes: Vec<isize> = (0..rank as isize).filter(|_| rng.below(2) == 0).collect();
        if axes.is_empty() {
            axes.push(-1);
        }
        let keepdim = rng.below(2) == 0;
        let x = rng.normal_vec(numel(&shape));
        let out_shape = sum_axes(&host(&x, &shape, DType::F64), &axes, keepdim)
            .unwrap()
            .shape()
            .to_vec();
        let g = rng.normal_vec(numel(&out_shape));
        for (dtype, fwd_tol, bwd_tol) in TOLERANCES {
            let what = format!("case {case} {dtype} {shape:?} axes {axes:?} keepdim {keepdim}");
            let (xh, gh) = (host(&x, &shape, dtype), host(&g, &out_shape, dtype));
            let (xg, gg) = (xh.to_device(&gpu).unwrap(), gh.to_device(&gpu).unwrap());
            for mean in [false, true] {
                let mut out = poisoned(&out_shape, dtype, &gpu);
                if mean {
                    mean_axes_into(&xg, &axes, keepdim, &mut out).unwrap();
                } else {
                    sum_axes_into(&xg, &axes, keepdim, &mut out).unwrap();
                }
                let want = if mean {
                    mean_axes(&f64_of(&xh), &axes, keepdim)
                } else {
                    sum_axes(&f64_of(&xh), &axes, keepdim)
                }
                .unwrap();
                assert_close(
                    &format!("forward mean={mean} {what}"),
                    &vals(&out),
                    &vals(&want),
                    fwd_tol,
                );
                let (got, want) = if mean {
                    (
                        mean_axes_backward(&xg, &axes, keepdim, &gg).unwrap(),
                        mean_axes_backward(&f64_of(&xh), &axes, keepdim, &f64_of(&gh)).unwrap(),
                    )
                } else {
                    (
                        sum_axes_backward(&xg, &axes, keepdim, &gg).unwrap(),
                        sum_axes_backward(&f64_of(&xh), &axes, keepdim, &f64_of(&gh)).unwrap(),
                    )
                };
                assert_close(
                    &format!("backward mean={mean} {what}"),
                    &vals(&got),
                    &vals(&want),
                    bwd_tol,
                );
            }
        }
    }
}

#[test]
fn cuda_max_last_axis_matches_cpu_exactly() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_max_last_axis_matches_cpu_exactly") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(300);
    for case in 0..16 {
        let rows = 1 + rng.below(3000);
        let cols = [1, 2, 17, 31, 32, 33, 80, 1000, 2049][case % 9];
        // Small integers: many ties, so the first-index rule is exercised; a few NaNs in some cases.
        let mut x: Vec<f64> = (0..rows * cols).map(|_| rng.below(7) as f64).collect();
        if case % 4 == 3 {
            for _ in 0..rows / 3 {
                let i = rng.below(x.len());
                x[i] = f64::NAN;
            }
        }
        let g = rng.normal_vec(rows);
        for (dtype, _, bwd_tol) in TOLERANCES {
            let xh = host(&x, &[rows, cols], dtype);
            let xg = xh.to_device(&gpu).unwrap();
            let got = max_last_axis(&xg).unwrap();
            let want = max_last_axis(&xh).unwrap();
            let what = format!("case {case} {dtype} rows={rows} cols={cols}");
            assert_eq!(
                got.indices.to_vec::<i64>().unwrap(),
                want.indices.to_vec::<i64>().unwrap(),
                "{what}"
            );
            let bits = |t: &Tensor| vals(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got.values), bits(&want.values), "{what}");
            let gh = host(&g, &[rows], dtype);
            // Indices on the device and on the host.
            for indices in [&got.indices, &want.indices] {
                let dx =
                    max_last_axis_backward(&xg, indices, &gh.to_device(&gpu).unwrap()).unwrap();
                let wx = max_last_axis_backward(&f64_of(&xh), &want.indices, &f64_of(&gh)).unwrap();
                assert_close(&format!("backward {what}"), &vals(&dx), &vals(&wx), bwd_tol);
            }
        }
    }
    // Out-of-range device indices are caught on the host.
    let x = host(&[1.0, 2.0], &[1, 2], DType::F32)
        .to_device(&gpu)
        .unwrap();
    let bad = Tensor::from_vec(vec![2i64], &[1])
        .unwrap()
        .to_device(&gpu)
        .unwrap();
    let g = host(&[1.0], &[1], DType::F32).to_device(&gpu).unwrap();
    let e = max_last_axis_backward(&x, &bad, &g)
        .unwrap_err()
        .to_string();
    assert!(e.contains("entry 0 is 2, outside [0, 2)"), "{e}");
}

#[test]
fn cuda_sums_are_bitwise_reproducible() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_sums_are_bitwise_reproducible") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(400);
    let x = host(&rng.normal_vec(3_000_017), &[3_000_017], DType::F32)
        .to_device(&gpu)
        .unwrap();
    let y = host(&rng.normal_vec(64 * 30_000), &[64, 30_000], DType::F32)
        .to_device(&gpu)
        .unwrap();
    let bits = |t: &Tensor| vals(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let first = (
        bits(&sum_all(&x).unwrap()),
        bits(&sum_axes(&y, &[0], false).unwrap()),
    );
    for _ in 0..3 {
        let again = (
            bits(&sum_all(&x).unwrap()),
            bits(&sum_axes(&y, &[0], false).unwrap()),
        );
        assert_eq!(first, again);
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
    let empty = host(&[], &[0, 5], DType::BF16).to_device(&gpu).unwrap();
    assert_eq!(vals(&sum_all(&empty).unwrap()), vec![0.0]);
    assert!(vals(&mean_all(&empty).unwrap())[0].is_nan());
    assert_eq!(vals(&sum_axes(&empty, &[0], false).unwrap()), vec![0.0; 5]);
    assert!(vals(&mean_axes(&empty, &[0], false).unwrap())
        .iter()
        .all(|v| v.is_nan()));
    assert_eq!(max_last_axis(&empty).unwrap().indices.shape(), &[0]);
    let x = host(&[1.0; 4], &[2, 2], DType::F32)
        .to_device(&gpu)
        .unwrap();
    let g_cpu = host(&[1.0], &[], DType::F32);
    let e = sum_all_backward(&x, &g_cpu).unwrap_err().to_string();
    assert!(e.contains("`grad_out`") && e.contains("cpu"), "{e}");
}
