//! The resize family against PyTorch (golden fixtures from scripts/make_fixtures_nn.py, run through the
//! `detkd parity` runner, in f64, f32, f16 and bf16) and CUDA against the CPU reference. GPU tests print
//! `SKIP` without a driver and fail under `DETKD_REQUIRE_GPU=1`.

use detkd::ops::resize::{
    resize_bilinear, resize_bilinear_backward, resize_bilinear_into, upsample_nearest2x,
    upsample_nearest2x_backward, upsample_nearest2x_into,
};
use detkd::tensor::io;
use detkd::testing::{assert_close, f64_of, host, poisoned, vals, Rng, TOLERANCES};
use detkd::{DType, Device, Tensor};

/// Every fixture, embedded so the test binary runs anywhere (e.g. carried to a GPU machine).
macro_rules! fixtures {
    ($($name:literal),* $(,)?) => {
        [$(($name, include_bytes!(concat!("fixtures/resize/", $name, ".safetensors")).as_slice())),*]
    };
}
const FIXTURES: [(&str, &[u8]); 10] = fixtures![
    "bilinear_up_non_integer",
    "bilinear_down_non_integer",
    "bilinear_up_and_down",
    "bilinear_up_2x",
    "bilinear_same_size",
    "bilinear_to_1x1",
    "bilinear_from_one_row",
    "bilinear_empty_batch",
    "nearest2x",
    "nearest2x_1x1",
];

const FIXTURE_TOLERANCES: [(DType, f64); 4] = [
    (DType::F64, 1e-12),
    (DType::F32, 1e-5),
    (DType::F16, 1e-2),
    (DType::BF16, 1e-2),
];

/// Runs the fixture's op with `dtype` on `device` and compares every result with PyTorch's; results and
/// PyTorch's tensors must correspond one to one.
fn check_fixture(name: &str, bytes: &[u8], dtype: DType, device: &Device, tol: f64) {
    let mut inputs = io::from_bytes(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    inputs.metadata.insert("dtype".into(), dtype.name().into());
    let results = detkd::parity::run(&inputs, device).unwrap_or_else(|e| panic!("{name}: {e}"));
    let expected: Vec<&String> = inputs
        .tensors
        .keys()
        .filter(|k| k.starts_with("expected."))
        .collect();
    assert_eq!(expected.len(), 2, "{name}: output and grad_x");
    assert_eq!(expected.len(), results.tensors.len(), "{name}");
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
fn fixtures_cover_up_down_and_non_integer_factors() {
    let mut factors = Vec::new();
    for (name, bytes) in FIXTURES {
        let f = io::from_bytes(bytes).unwrap();
        if f.metadata["op"] != "resize_bilinear" {
            continue;
        }
        let (x, y) = (
            f.get("x").unwrap().shape(),
            f.get("expected.output").unwrap().shape(),
        );
        for axis in [2, 3] {
            factors.push((name, y[axis] as f64 / x[axis] as f64));
        }
    }
    let non_integer =
        |r: f64| (r - r.round()).abs() > 1e-9 && (1.0 / r - (1.0 / r).round()).abs() > 1e-9;
    assert!(
        factors.iter().any(|&(_, r)| r > 1.0 && non_integer(r)),
        "non-integer upscale"
    );
    assert!(
        factors.iter().any(|&(_, r)| r < 1.0 && non_integer(r)),
        "non-integer downscale"
    );
    assert!(factors.iter().any(|&(_, r)| r == 1.0), "identity");
}

#[test]
fn parity_needs_a_size() {
    let (_, bytes) = FIXTURES[0];
    let mut inputs = io::from_bytes(bytes).unwrap();
    inputs.metadata.remove("size");
    let err = detkd::parity::run(&inputs, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`size`"), "{err}");
    inputs.metadata.insert("size".into(), "4,0".into());
    let err = detkd::parity::run(&inputs, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`size`: the spatial size must be > 0"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------------------
// CUDA vs CPU

#[test]
fn cuda_matches_cpu_on_random_shapes() {
    let Some(gpu) = detkd::cuda::gpu_for_test("resize::cuda_matches_cpu_on_random_shapes") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(950);
    for case in 0..20 {
        let (b, c) = (1 + rng.below(3), 1 + rng.below(9));
        let (h, w) = (1 + rng.below(40), 1 + rng.below(60));
        let (oh, ow) = (1 + rng.below(80), 1 + rng.below(50));
        let x = rng.normal_vec(b * c * h * w);
        let g = rng.normal_vec(b * c * oh * ow);
        let g2 = rng.normal_vec(b * c * 4 * h * w);
        for (dtype, fwd_tol, bwd_tol) in TOLERANCES {
            let what = format!("case {case} {dtype} [{b}, {c}, {h}, {w}] → ({oh}, {ow})");
            let xh = host(&x, &[b, c, h, w], dtype);
            let xg = xh.to_device(&gpu).unwrap();
            let mut out = poisoned(&[b, c, oh, ow], dtype, &gpu);
            resize_bilinear_into(&xg, &mut out).unwrap();
            let want = resize_bilinear(&f64_of(&xh), (oh, ow)).unwrap();
            assert_close(
                &format!("bilinear {what}"),
                &vals(&out),
                &vals(&want),
                fwd_tol,
            );
            let gh = host(&g, &[b, c, oh, ow], dtype);
            let got = resize_bilinear_backward(&gh.to_device(&gpu).unwrap(), (h, w)).unwrap();
            let want = resize_bilinear_backward(&f64_of(&gh), (h, w)).unwrap();
            assert_eq!(got.dtype(), dtype);
            assert_close(
                &format!("bilinear backward {what}"),
                &vals(&got),
                &vals(&want),
                bwd_tol,
            );

            let mut up = poisoned(&[b, c, 2 * h, 2 * w], dtype, &gpu);
            upsample_nearest2x_into(&xg, &mut up).unwrap();
            assert_eq!(
                vals(&up),
                vals(&upsample_nearest2x(&xh).unwrap()),
                "nearest {what}: a copy"
            );
            let gh = host(&g2, &[b, c, 2 * h, 2 * w], dtype);
            let got = upsample_nearest2x_backward(&gh.to_device(&gpu).unwrap()).unwrap();
            let want = upsample_nearest2x_backward(&f64_of(&gh)).unwrap();
            assert_close(
                &format!("nearest backward {what}"),
                &vals(&got),
                &vals(&want),
                bwd_tol,
            );
        }
    }
}

#[test]
fn cuda_at_fpn_size_is_reproducible() {
    // An FPN-sized map (HGD's resize of a student level to the teacher's size): 2×64 channels, 50×84 →
    // 100×168 and a downscale, forward and backward twice, bitwise equal.
    let Some(gpu) = detkd::cuda::gpu_for_test("resize::cuda_at_fpn_size_is_reproducible") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(951);
    let x = host(
        &rng.normal_vec(2 * 64 * 50 * 84),
        &[2, 64, 50, 84],
        DType::F32,
    );
    let xg = x.to_device(&gpu).unwrap();
    for size in [(100, 168), (37, 61)] {
        let got = resize_bilinear(&xg, size).unwrap();
        assert_close(
            &format!("{size:?}"),
            &vals(&got),
            &vals(&resize_bilinear(&f64_of(&x), size).unwrap()),
            1e-5,
        );
        let g = got.to_device(&gpu).unwrap();
        let first = vals(&resize_bilinear_backward(&g, (50, 84)).unwrap());
        let again = vals(&resize_bilinear_backward(&g, (50, 84)).unwrap());
        assert!(first
            .iter()
            .zip(&again)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
        let want = resize_bilinear_backward(&f64_of(&got), (50, 84)).unwrap();
        assert_close(&format!("backward {size:?}"), &first, &vals(&want), 1e-4);
    }
}

#[test]
fn cuda_matches_pytorch_fixtures() {
    let Some(gpu) = detkd::cuda::gpu_for_test("resize::cuda_matches_pytorch_fixtures") else {
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
fn cuda_mixed_devices_are_errors() {
    let Some(gpu) = detkd::cuda::gpu_for_test("resize::cuda_mixed_devices_are_errors") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let x = host(&[0.5; 24], &[1, 2, 3, 4], DType::F32)
        .to_device(&gpu)
        .unwrap();
    let mut out = Tensor::zeros(&[1, 2, 5, 5], DType::F32, &Device::Cpu).unwrap();
    let err = resize_bilinear_into(&x, &mut out).unwrap_err().to_string();
    assert!(err.contains("`out`") && err.contains("cpu"), "{err}");
    let empty = host(&[], &[0, 2, 3, 4], DType::F32)
        .to_device(&gpu)
        .unwrap();
    assert_eq!(
        resize_bilinear(&empty, (7, 7)).unwrap().shape(),
        &[0, 2, 7, 7]
    );
}
