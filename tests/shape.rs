//! The shape family against PyTorch (golden fixtures from scripts/make_fixtures_shape.py, run through the
//! `detkd parity` runner) and CUDA against the CPU reference, bit for bit. GPU tests print `SKIP` without
//! a driver and fail under `DETKD_REQUIRE_GPU=1`.

use detkd::ops::shape::{
    concat, concat_into, index_select, index_select_backward, index_select_backward_into,
    index_select_into, narrow, narrow_backward, narrow_backward_into, narrow_into, permute,
    permute_backward, permute_into, split, transpose,
};
use detkd::tensor::{io, CpuStorage};
use detkd::testing::{assert_close, poisoned, vals, Rng};
use detkd::{DType, Device, Tensor};

/// Every fixture, embedded so the test binary runs anywhere (e.g. carried to a GPU machine).
macro_rules! fixtures {
    ($($name:literal),* $(,)?) => {
        [$(($name, include_bytes!(concat!("fixtures/shape/", $name, ".safetensors")).as_slice())),*]
    };
}
const FIXTURES: [(&str, &[u8]); 16] = fixtures![
    "permute_nchw_to_nhwc",
    "permute_rank6",
    "permute_i64_labels",
    "transpose",
    "narrow",
    "narrow_last_axis",
    "narrow_zero_length",
    "narrow_zero_length_at_end",
    "concat_anchor_axis",
    "concat_with_empty_part",
    "concat_i64_labels",
    "split",
    "index_select_duplicates",
    "index_select_middle_axis",
    "index_select_i64_labels",
    "index_select_empty",
];

/// Bit patterns of a tensor's elements (copied to the host), for exact comparisons in every dtype.
fn bits(t: &Tensor) -> Vec<u64> {
    let host = t.to_device(&Device::Cpu).unwrap();
    match host.cpu_storage().unwrap() {
        CpuStorage::F32(v) => v.iter().map(|x| x.to_bits() as u64).collect(),
        CpuStorage::F64(v) => v.iter().map(|x| x.to_bits()).collect(),
        CpuStorage::F16(v) => v.iter().map(|x| x.to_bits() as u64).collect(),
        CpuStorage::BF16(v) => v.iter().map(|x| x.to_bits() as u64).collect(),
        CpuStorage::I64(v) => v.iter().map(|&x| x as u64).collect(),
    }
}

/// Runs the fixture's op with `dtype` on `device` and compares every result with PyTorch's: moved data
/// must equal PyTorch's (rounded to `dtype`) bit for bit; index_select's gradient, a sum, within
/// `sum_tol` relative.
fn check_fixture(name: &str, bytes: &[u8], dtype: DType, device: &Device, sum_tol: f64) {
    let mut inputs = io::from_bytes(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    inputs.metadata.insert("dtype".into(), dtype.name().into());
    let results = detkd::parity::run(&inputs, device).unwrap_or_else(|e| panic!("{name}: {e}"));
    let expected: Vec<&String> = inputs
        .tensors
        .keys()
        .filter(|k| k.starts_with("expected."))
        .collect();
    assert!(
        !expected.is_empty(),
        "{name}: fixture has no expected results"
    );
    let has_grad = inputs.tensors.keys().any(|k| k.starts_with("grad_out"));
    assert_eq!(
        has_grad,
        expected.iter().any(|k| k.starts_with("expected.grad_x")),
        "{name}: a fixture with an upstream gradient must hold the input gradient"
    );
    assert_eq!(
        expected.len(),
        results.tensors.len(),
        "{name}: results {:?}",
        results.tensors.keys()
    );
    let op = inputs.metadata["op"].clone();
    for key in expected {
        let result_name = &key["expected.".len()..];
        let got = results
            .get(result_name)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = inputs.get(key).unwrap();
        let what = format!("{name}/{result_name} ({dtype} on {device})");
        assert_eq!(got.shape(), want.shape(), "{what}");
        if want.dtype() == DType::I64 {
            assert_eq!(got.dtype(), DType::I64, "{what}: labels keep their dtype");
            assert_eq!(bits(got), bits(want), "{what}");
            continue;
        }
        assert_eq!(got.dtype(), dtype, "{what}");
        if op == "index_select" && result_name == "grad_x" {
            assert_close(&what, &vals(got), &vals(want), sum_tol);
        } else {
            assert_eq!(
                bits(got),
                bits(&want.to_dtype(dtype).unwrap()),
                "{what}: not bitwise PyTorch's"
            );
        }
    }
}

const SUM_TOLERANCES: [(DType, f64); 4] = [
    (DType::F64, 1e-12),
    (DType::F32, 1e-6),
    (DType::F16, 1e-2),
    (DType::BF16, 1e-2),
];

#[test]
fn cpu_matches_pytorch_fixtures() {
    for (name, bytes) in FIXTURES {
        for (dtype, tol) in SUM_TOLERANCES {
            check_fixture(name, bytes, dtype, &Device::Cpu, tol);
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
        for (dtype, tol) in &SUM_TOLERANCES[1..] {
            check_fixture(name, bytes, *dtype, &gpu, *tol);
        }
    }
}

#[test]
fn fixtures_cover_every_op_and_the_edge_cases() {
    let get =
        |name: &str| io::from_bytes(FIXTURES.iter().find(|(n, _)| *n == name).unwrap().1).unwrap();
    let ops: Vec<String> = FIXTURES
        .iter()
        .map(|(_, b)| io::from_bytes(b).unwrap().metadata["op"].clone())
        .collect();
    for op in [
        "permute",
        "transpose",
        "narrow",
        "concat",
        "split",
        "index_select",
    ] {
        assert!(ops.iter().any(|o| o == op), "no fixture for {op}");
    }
    // Duplicated indices (summed by the backward) and an empty list.
    let dup = get("index_select_duplicates")
        .get("indices")
        .unwrap()
        .to_vec::<i64>()
        .unwrap();
    assert!(
        dup.iter()
            .any(|v| dup.iter().filter(|w| *w == v).count() > 1),
        "{dup:?}"
    );
    assert_eq!(
        get("index_select_empty").get("indices").unwrap().shape(),
        &[0]
    );
    // int64 data: permute, concat and index_select of labels.
    for name in [
        "permute_i64_labels",
        "concat_i64_labels",
        "index_select_i64_labels",
    ] {
        let f = get(name);
        let x = f
            .tensors
            .iter()
            .find(|(k, _)| k.starts_with("x"))
            .unwrap()
            .1;
        assert_eq!(x.dtype(), DType::I64, "{name}");
    }
    // Zero-length slices, an empty concat part, an empty split piece, a rank-6 permute.
    assert_eq!(
        get("narrow_zero_length")
            .get("expected.output")
            .unwrap()
            .shape(),
        &[4, 0, 3]
    );
    assert_eq!(get("narrow_zero_length_at_end").metadata["start"], "6");
    assert_eq!(
        get("concat_with_empty_part").get("x.1").unwrap().shape(),
        &[0, 2]
    );
    assert_eq!(
        get("split").get("expected.output.1").unwrap().shape(),
        &[0, 2]
    );
    assert_eq!(get("permute_rank6").get("x").unwrap().rank(), 6);
}

#[test]
fn parity_rejects_bad_metadata_and_inputs() {
    let bytes = FIXTURES
        .iter()
        .find(|(n, _)| *n == "permute_nchw_to_nhwc")
        .unwrap()
        .1;
    let mut inputs = io::from_bytes(bytes).unwrap();
    for (value, expected) in [
        (
            "0,x,3,1",
            "`perm`: expected comma-separated non-negative axes",
        ),
        ("0,1,2", "`perm`: expected a permutation of the 4 axes"),
        ("0,1,1,2", "axis 1 appears twice"),
    ] {
        inputs.metadata.insert("perm".into(), value.into());
        let err = detkd::parity::run(&inputs, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "perm={value}: {err}");
    }
    let bytes = FIXTURES.iter().find(|(n, _)| *n == "narrow").unwrap().1;
    let mut inputs = io::from_bytes(bytes).unwrap();
    inputs.metadata.insert("length".into(), "9".into());
    let err = detkd::parity::run(&inputs, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`len`") && err.contains("runs past the end of axis 1"),
        "{err}"
    );
    inputs.metadata.remove("axis");
    let err = detkd::parity::run(&inputs, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`axis`"), "{err}");
    let bytes = FIXTURES
        .iter()
        .find(|(n, _)| *n == "concat_anchor_axis")
        .unwrap()
        .1;
    let mut inputs = io::from_bytes(bytes).unwrap();
    let part = inputs.tensors.remove("x.0").unwrap();
    inputs.tensors.insert("x.9".into(), part);
    let err = detkd::parity::run(&inputs, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`x.0`"), "{err}");
    let bytes = FIXTURES
        .iter()
        .find(|(n, _)| *n == "index_select_duplicates")
        .unwrap()
        .1;
    let mut inputs = io::from_bytes(bytes).unwrap();
    inputs.tensors.insert(
        "indices".into(),
        Tensor::from_vec(vec![0i64, 6], &[2]).unwrap(),
    );
    let err = detkd::parity::run(&inputs, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`indices`: entry 1 is 6, outside [0, 6)"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------------------
// CUDA vs CPU, bit for bit

/// The device dtypes, each with fresh random data of its kind (integers for i64).
const DEVICE_DTYPES: [DType; 4] = [DType::F32, DType::F16, DType::BF16, DType::I64];

fn random_tensor(rng: &mut Rng, shape: &[usize], dtype: DType) -> Tensor {
    let n = shape.iter().product();
    if dtype == DType::I64 {
        let v: Vec<i64> = (0..n).map(|_| rng.next_u64() as i64).collect();
        return Tensor::from_vec(v, shape).unwrap();
    }
    Tensor::from_vec(rng.normal_vec(n), shape)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn random_perm(rng: &mut Rng, rank: usize) -> Vec<usize> {
    let mut p: Vec<usize> = (0..rank).collect();
    for i in (1..rank).rev() {
        p.swap(i, rng.below(i + 1));
    }
    p
}

#[test]
fn cuda_permute_matches_cpu_bitwise() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_permute_matches_cpu_bitwise") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(900);
    for case in 0..48 {
        // Extents around the 32-wide tiles and the tiled/generic switch at 8; rank 0 to 6.
        let rank = case % 7;
        let max = [1, 300, 90, 40, 12, 7, 5][rank];
        let shape: Vec<usize> = (0..rank).map(|_| 1 + rng.below(max)).collect();
        let perm = random_perm(&mut rng, rank);
        let out_shape: Vec<usize> = perm.iter().map(|&a| shape[a]).collect();
        for dtype in DEVICE_DTYPES {
            let what = format!("case {case} {dtype} shape {shape:?} perm {perm:?}");
            let x = random_tensor(&mut rng, &shape, dtype);
            let want = permute(&x, &perm).unwrap();
            let mut out = poisoned(&out_shape, dtype, &gpu);
            permute_into(&x.to_device(&gpu).unwrap(), &perm, &mut out).unwrap();
            assert_eq!(bits(&out), bits(&want), "permute {what}");
            if dtype != DType::I64 {
                let g = random_tensor(&mut rng, &out_shape, dtype);
                let got = permute_backward(&g.to_device(&gpu).unwrap(), &perm).unwrap();
                assert_eq!(
                    bits(&got),
                    bits(&permute_backward(&g, &perm).unwrap()),
                    "backward {what}"
                );
            }
        }
    }
    // The layout change of the benchmark, at a reduced size: NCHW -> NHWC through the tiled kernel.
    let x = random_tensor(&mut rng, &[2, 64, 25, 42], DType::F32);
    let got = permute(&x.to_device(&gpu).unwrap(), &[0, 2, 3, 1]).unwrap();
    assert_eq!(bits(&got), bits(&permute(&x, &[0, 2, 3, 1]).unwrap()));
    let got = transpose(&x.to_device(&gpu).unwrap(), 1, 3).unwrap();
    assert_eq!(bits(&got), bits(&transpose(&x, 1, 3).unwrap()));
}

#[test]
fn cuda_narrow_concat_split_match_cpu_bitwise() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_narrow_concat_split_match_cpu_bitwise") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(901);
    for case in 0..30 {
        let rank = 1 + case % 4;
        let max = [700, 60, 20, 9][rank - 1];
        let shape: Vec<usize> = (0..rank).map(|_| 1 + rng.below(max)).collect();
        let axis = rng.below(rank);
        let extent = shape[axis];
        let start = rng.below(extent + 1);
        let len = rng.below(extent - start + 1);
        let sizes = [start, len, extent - start - len];
        for dtype in DEVICE_DTYPES {
            let what = format!("case {case} {dtype} shape {shape:?} axis {axis} [{start}, +{len})");
            let x = random_tensor(&mut rng, &shape, dtype);
            let xg = x.to_device(&gpu).unwrap();
            let want = narrow(&x, axis, start, len).unwrap();
            let mut out = poisoned(want.shape(), dtype, &gpu);
            narrow_into(&xg, axis, start, len, &mut out).unwrap();
            assert_eq!(bits(&out), bits(&want), "narrow {what}");

            let pieces = split(&xg, axis, &sizes).unwrap();
            let want_pieces = split(&x, axis, &sizes).unwrap();
            for (p, w) in pieces.iter().zip(&want_pieces) {
                assert_eq!(bits(p), bits(w), "split {what}");
            }
            // Concat of the pieces in another order, into a poisoned buffer.
            let order = [&pieces[2], &pieces[0], &pieces[1]];
            let want = concat(&[&want_pieces[2], &want_pieces[0], &want_pieces[1]], axis).unwrap();
            let mut out = poisoned(&shape, dtype, &gpu);
            concat_into(&order, axis, &mut out).unwrap();
            assert_eq!(bits(&out), bits(&want), "concat {what}");

            if dtype != DType::I64 {
                let g = random_tensor(
                    &mut rng,
                    narrow(&x, axis, start, len).unwrap().shape(),
                    dtype,
                );
                let mut out = poisoned(&shape, dtype, &gpu);
                narrow_backward_into(&g.to_device(&gpu).unwrap(), axis, start, &mut out).unwrap();
                let want = narrow_backward(&g, &shape, axis, start).unwrap();
                assert_eq!(bits(&out), bits(&want), "narrow_backward {what}");
            }
        }
    }
    // The FPN head outputs of the benchmark, at a reduced size: [2, Σ anchors, 80] from five levels.
    let parts: Vec<Tensor> = [1500, 375, 94, 24, 7]
        .iter()
        .map(|&n| random_tensor(&mut rng, &[2, n, 80], DType::BF16))
        .collect();
    let refs: Vec<&Tensor> = parts.iter().collect();
    let on_gpu: Vec<Tensor> = parts.iter().map(|p| p.to_device(&gpu).unwrap()).collect();
    let got = concat(&on_gpu.iter().collect::<Vec<_>>(), 1).unwrap();
    assert_eq!(bits(&got), bits(&concat(&refs, 1).unwrap()));
}

fn random_indices(rng: &mut Rng, m: usize, extent: usize) -> Vec<i64> {
    (0..m).map(|_| rng.below(extent) as i64).collect()
}

#[test]
fn cuda_index_select_and_backward_match_cpu_bitwise() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_index_select_and_backward_match_cpu_bitwise")
    else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(902);
    for case in 0..30 {
        let rank = 1 + case % 4;
        let max = [500, 80, 20, 9][rank - 1];
        let shape: Vec<usize> = (0..rank).map(|_| 1 + rng.below(max)).collect();
        let axis = rng.below(rank);
        // Up to twice the extent: many duplicates, some rows never picked.
        let m = rng.below(2 * shape[axis] + 1);
        let idx = random_indices(&mut rng, m, shape[axis]);
        let list = Tensor::from_vec(idx.clone(), &[m]).unwrap();
        let list_gpu = list.to_device(&gpu).unwrap();
        let mut out_shape = shape.clone();
        out_shape[axis] = m;
        for dtype in DEVICE_DTYPES {
            let what = format!("case {case} {dtype} shape {shape:?} axis {axis} m {m}");
            let x = random_tensor(&mut rng, &shape, dtype);
            let xg = x.to_device(&gpu).unwrap();
            let want = index_select(&x, axis, &list).unwrap();
            // Index lists on the host and on the device.
            for indices in [&list, &list_gpu] {
                let mut out = poisoned(&out_shape, dtype, &gpu);
                index_select_into(&xg, axis, indices, &mut out).unwrap();
                assert_eq!(bits(&out), bits(&want), "index_select {what}");
            }
            if dtype != DType::I64 {
                let g = random_tensor(&mut rng, &out_shape, dtype);
                let want = index_select_backward(&g, &shape, axis, &list).unwrap();
                let mut out = poisoned(&shape, dtype, &gpu);
                index_select_backward_into(&g.to_device(&gpu).unwrap(), axis, &list_gpu, &mut out)
                    .unwrap();
                assert_eq!(bits(&out), bits(&want), "index_select_backward {what}");
            }
        }
    }
}

#[test]
fn cuda_index_select_backward_is_deterministic() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_index_select_backward_is_deterministic") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(903);
    // 4096 gathered rows onto 300 (about 14 per row, as a float-atomic scatter would race on) of width
    // 517, and the same along a middle axis.
    for (shape, axis, m) in [(vec![300, 517], 0, 4096), (vec![3, 50, 129], 1, 800)] {
        let idx = random_indices(&mut rng, m, shape[axis]);
        let list = Tensor::from_vec(idx, &[m]).unwrap();
        let mut gshape = shape.clone();
        gshape[axis] = m;
        for dtype in [DType::F32, DType::F16, DType::BF16] {
            let g = random_tensor(&mut rng, &gshape, dtype);
            let gg = g.to_device(&gpu).unwrap();
            let first = bits(&index_select_backward(&gg, &shape, axis, &list).unwrap());
            let second = bits(&index_select_backward(&gg, &shape, axis, &list).unwrap());
            assert!(first == second, "{dtype} {shape:?}: two runs differ");
            let cpu = bits(&index_select_backward(&g, &shape, axis, &list).unwrap());
            assert!(
                first == cpu,
                "{dtype} {shape:?}: differs from the CPU reference"
            );
        }
    }
}

#[test]
fn cuda_rejects_mixed_devices_and_handles_empty_tensors() {
    let Some(gpu) =
        detkd::cuda::gpu_for_test("cuda_rejects_mixed_devices_and_handles_empty_tensors")
    else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(904);
    let x = random_tensor(&mut rng, &[4, 3], DType::F32);
    let xg = x.to_device(&gpu).unwrap();
    let err = concat(&[&xg, &x], 0).unwrap_err().to_string();
    assert!(err.contains("`parts[1]`") && err.contains("cpu"), "{err}");
    let mut out = Tensor::zeros(&[3, 4], DType::F32, &Device::Cpu).unwrap();
    let err = permute_into(&xg, &[1, 0], &mut out)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`out`") && err.contains("cpu"), "{err}");
    // Indices on the device of a host tensor are refused; on the host they serve a device tensor.
    let list = Tensor::from_vec(vec![3i64, 0], &[2]).unwrap();
    let list_gpu = list.to_device(&gpu).unwrap();
    let err = index_select(&x, 0, &list_gpu).unwrap_err().to_string();
    assert!(
        err.contains("`indices`: expected a tensor on cpu (where `x` is), got one on cuda:0"),
        "{err}"
    );
    assert_eq!(
        bits(&index_select(&xg, 0, &list).unwrap()),
        bits(&index_select(&x, 0, &list).unwrap())
    );
    // Device indices are validated like host ones.
    let bad = Tensor::from_vec(vec![0i64, 4], &[2])
        .unwrap()
        .to_device(&gpu)
        .unwrap();
    let err = index_select(&xg, 0, &bad).unwrap_err().to_string();
    assert!(err.contains("entry 1 is 4, outside [0, 4)"), "{err}");
    let grad = random_tensor(&mut rng, &[2, 3], DType::F32);
    let err = index_select_backward(&grad, &[4, 3], 0, &list_gpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`indices`"), "{err}");

    // Empty results come back without a launch; an empty gradient scatters to zeros.
    let empty = Tensor::zeros(&[0, 3], DType::F32, &gpu).unwrap();
    assert_eq!(permute(&empty, &[1, 0]).unwrap().shape(), &[3, 0]);
    assert_eq!(narrow(&xg, 1, 3, 0).unwrap().shape(), &[4, 0]);
    assert_eq!(concat(&[&empty, &empty], 0).unwrap().shape(), &[0, 3]);
    let none = Tensor::from_vec(Vec::<i64>::new(), &[0]).unwrap();
    assert_eq!(index_select(&xg, 0, &none).unwrap().shape(), &[0, 3]);
    let mut out = poisoned(&[4, 3], DType::F32, &gpu);
    index_select_backward_into(&empty, 0, &none, &mut out).unwrap();
    assert_eq!(vals(&out), vec![0.0; 12]);
    let f64_on_gpu = Tensor::zeros(&[2], DType::F64, &gpu);
    assert!(f64_on_gpu.is_err(), "f64 stays on the host");
}
