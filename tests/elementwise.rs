//! The element-wise family against PyTorch (golden fixtures from scripts/make_fixtures_glue.py, run through
//! the `detkd parity` runner) and CUDA against the CPU reference. GPU tests print `SKIP` without a driver
//! and fail under `DETKD_REQUIRE_GPU=1`.

use detkd::ops::elementwise::{
    add_scaled, binary, binary_backward, binary_into, broadcast_shape, broadcast_to, fill, full,
    scale, scale_into, sum_to_shape, sum_to_shape_into, unary, unary_backward, unary_into,
    BinaryOp, UnaryOp,
};
use detkd::tensor::io;
use detkd::testing::{assert_close, f64_of, host, poisoned, vals, Rng, TOLERANCES};
use detkd::{DType, Device, Tensor};

/// Every fixture, embedded so the test binary runs anywhere (e.g. carried to a GPU machine).
macro_rules! fixtures {
    ($($name:literal),* $(,)?) => {
        [$(($name, include_bytes!(concat!("fixtures/elementwise/", $name, ".safetensors")).as_slice())),*]
    };
}
const FIXTURES: [(&str, &[u8]); 23] = fixtures![
    "add_bcast_4d",
    "sub_vector_into_3d",
    "mul_scalar_operand",
    "mul_one_element",
    "div_bcast_both",
    "div_same_shape",
    "sub_rank6",
    "add_empty",
    "div_scalar_divisor",
    "sum_to_shape_bias",
    "sum_to_shape_scalar",
    "broadcast_to",
    "scale",
    "add_scaled",
    "fill",
    "unary_neg",
    "unary_relu",
    "unary_sigmoid",
    "unary_exp",
    "unary_log",
    "unary_sqrt",
    "unary_square",
    "unary_abs",
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
    assert!(!expected.is_empty(), "{name}: fixture has no expectation");
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

/// Fixture inputs are exact in every dtype, so each run is compared with the same float64 expectation.
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
    let ops: Vec<&str> = files
        .iter()
        .map(|(_, f)| f.metadata["op"].as_str())
        .collect();
    for op in [
        "add",
        "sub",
        "mul",
        "div",
        "sum_to_shape",
        "broadcast_to",
        "scale",
        "add_scaled",
        "fill",
    ]
    .into_iter()
    .chain(UnaryOp::ALL.iter().map(|op| op.name()))
    {
        assert!(ops.contains(&op), "no fixture for {op}");
    }
    let get = |name: &str| &files.iter().find(|(n, _)| *n == name).unwrap().1;
    let shapes = |name: &str| {
        let f = get(name);
        (
            f.get("a").unwrap().shape().to_vec(),
            f.get("b").unwrap().shape().to_vec(),
        )
    };
    assert_eq!(shapes("add_bcast_4d"), (vec![2, 3, 4, 5], vec![1, 3, 1, 1]));
    assert_eq!(shapes("sub_vector_into_3d"), (vec![4], vec![2, 3, 4]));
    assert_eq!(shapes("mul_scalar_operand").0, Vec::<usize>::new());
    assert_eq!(shapes("add_empty").0, vec![0, 3]);
    assert_eq!(shapes("sub_rank6").1.len(), 6);
    assert_eq!(get("sum_to_shape_scalar").metadata["shape"], "");
}

#[test]
fn parity_rejects_bad_metadata_and_inputs() {
    let get =
        |name: &str| io::from_bytes(FIXTURES.iter().find(|(n, _)| *n == name).unwrap().1).unwrap();
    let run = |inputs: &io::NamedTensors| {
        detkd::parity::run(inputs, &Device::Cpu)
            .unwrap_err()
            .to_string()
    };
    let mut scale_file = get("scale");
    scale_file.metadata.insert("s".into(), "twice".into());
    assert!(run(&scale_file).contains("`s`: expected a float"));
    scale_file.metadata.insert("s".into(), "inf".into());
    assert!(run(&scale_file).contains("`s`: must be finite"));
    let mut sum_file = get("sum_to_shape_bias");
    sum_file.metadata.insert("shape".into(), "3,x".into());
    assert!(run(&sum_file).contains("`shape`: expected comma-separated"));
    sum_file.metadata.insert("shape".into(), "7".into());
    assert!(run(&sum_file).contains("broadcastable to x's"));
    let mut add_file = get("add_bcast_4d");
    add_file.tensors.remove("b");
    assert!(run(&add_file).contains("`b`"));
}

// ---------------------------------------------------------------------------------------------------------
// CUDA vs CPU

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Values with `|v|` in `[lo, lo + 2)`, random signs: away from kinks and poles.
fn away_from_zero(rng: &mut Rng, n: usize, lo: f64) -> Vec<f64> {
    (0..n)
        .map(|_| {
            let m = rng.uniform(lo, lo + 2.0);
            if rng.below(2) == 0 {
                m
            } else {
                -m
            }
        })
        .collect()
}

/// A random broadcast pair of rank ≤ 6 with extents up to `max_extent`.
fn random_pair(rng: &mut Rng, max_extent: usize) -> (Vec<usize>, Vec<usize>) {
    let rank = 1 + rng.below(6);
    let full: Vec<usize> = (0..rank).map(|_| 1 + rng.below(max_extent)).collect();
    let (mut a, mut b) = (full.clone(), full.clone());
    for d in 0..rank {
        match rng.below(3) {
            0 => a[d] = 1,
            1 => b[d] = 1,
            _ => {}
        }
    }
    let drop = rng.below(rank);
    (a, b[drop..].to_vec())
}

#[test]
fn cuda_binary_ops_match_cpu_on_random_shapes() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_binary_ops_match_cpu_on_random_shapes") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(100);
    for case in 0..40 {
        let (sa, sb) = random_pair(&mut rng, if case < 30 { 6 } else { 40 });
        let full = broadcast_shape(&sa, &sb).unwrap();
        if numel(&full) > 2_000_000 {
            continue;
        }
        let a = rng.normal_vec(numel(&sa));
        let b = away_from_zero(&mut rng, numel(&sb), 0.5);
        let g = rng.normal_vec(numel(&full));
        for (dtype, fwd_tol, bwd_tol) in TOLERANCES {
            let (ah, bh, gh) = (
                host(&a, &sa, dtype),
                host(&b, &sb, dtype),
                host(&g, &full, dtype),
            );
            let (ag, bg, gg) = (
                ah.to_device(&gpu).unwrap(),
                bh.to_device(&gpu).unwrap(),
                gh.to_device(&gpu).unwrap(),
            );
            for op in [BinaryOp::Add, BinaryOp::Sub, BinaryOp::Mul, BinaryOp::Div] {
                let what = format!("case {case} {op:?} {dtype} {sa:?} {sb:?}");
                let mut out = poisoned(&full, dtype, &gpu);
                binary_into(op, &ag, &bg, &mut out).unwrap();
                let want = binary(op, &f64_of(&ah), &f64_of(&bh)).unwrap();
                assert_close(
                    &format!("forward {what}"),
                    &vals(&out),
                    &vals(&want),
                    fwd_tol,
                );
                let got = binary_backward(op, &ag, &bg, &gg).unwrap();
                let want = binary_backward(op, &f64_of(&ah), &f64_of(&bh), &f64_of(&gh)).unwrap();
                assert_eq!(got.grad_b.dtype(), dtype);
                assert_close(
                    &format!("da {what}"),
                    &vals(&got.grad_a),
                    &vals(&want.grad_a),
                    bwd_tol,
                );
                assert_close(
                    &format!("db {what}"),
                    &vals(&got.grad_b),
                    &vals(&want.grad_b),
                    bwd_tol,
                );
            }
        }
    }
}

#[test]
fn cuda_sum_to_shape_matches_cpu_for_every_strategy() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_sum_to_shape_matches_cpu_for_every_strategy")
    else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    // One thread per output (few terms; many contiguous outputs), one block per output (one chunk), and
    // chunked blocks with a finishing pass (more than 8192 terms per output), strided and contiguous.
    let cases: [(&[usize], &[usize]); 10] = [
        (&[7, 5], &[5]),
        (&[40, 9000], &[9000]),
        (&[300, 700], &[300, 1]),
        (&[3, 20_000], &[3, 1]),
        (&[8, 64, 50, 21], &[1, 64, 1, 1]),
        (&[40_000, 3], &[3]),
        (&[2, 3, 70_001], &[]),
        (&[5, 1, 6, 2], &[5, 1, 1, 2]),
        (&[2, 3, 4, 5, 6, 7], &[3, 1, 5, 1, 1]),
        (&[33, 257], &[33, 257]),
    ];
    let mut rng = Rng::new(200);
    for (full, target) in cases {
        let x = rng.normal_vec(numel(full));
        for (dtype, tol, _) in TOLERANCES {
            let xh = host(&x, full, dtype);
            let mut out = poisoned(target, dtype, &gpu);
            sum_to_shape_into(&xh.to_device(&gpu).unwrap(), &mut out).unwrap();
            let want = sum_to_shape(&f64_of(&xh), target).unwrap();
            assert_close(
                &format!("{dtype} {full:?} -> {target:?}"),
                &vals(&out),
                &vals(&want),
                tol,
            );
        }
    }
}

#[test]
fn cuda_unary_scale_fill_match_cpu() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_unary_scale_fill_match_cpu") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(300);
    for case in 0..6 {
        let shape = [1 + rng.below(300), [1, 7, 256, 1000][case % 4]];
        let n = numel(&shape);
        let g = rng.normal_vec(n);
        for op in UnaryOp::ALL {
            let x: Vec<f64> = match op {
                UnaryOp::Log | UnaryOp::Sqrt => away_from_zero(&mut rng, n, 0.25)
                    .iter()
                    .map(|v| v.abs())
                    .collect(),
                UnaryOp::Exp => rng.normal_vec(n),
                _ => away_from_zero(&mut rng, n, 0.05),
            };
            for (dtype, fwd_tol, bwd_tol) in TOLERANCES {
                let what = format!("case {case} {} {dtype} {shape:?}", op.name());
                let (xh, gh) = (host(&x, &shape, dtype), host(&g, &shape, dtype));
                let xg = xh.to_device(&gpu).unwrap();
                let mut out = poisoned(&shape, dtype, &gpu);
                unary_into(op, &xg, &mut out).unwrap();
                let want = unary(op, &f64_of(&xh)).unwrap();
                assert_close(
                    &format!("forward {what}"),
                    &vals(&out),
                    &vals(&want),
                    fwd_tol,
                );
                // Both sides read the same (GPU) forward output.
                let got = unary_backward(op, Some(&xg), Some(&out), &gh.to_device(&gpu).unwrap())
                    .unwrap();
                let want =
                    unary_backward(op, Some(&f64_of(&xh)), Some(&f64_of(&out)), &f64_of(&gh))
                        .unwrap();
                assert_close(
                    &format!("backward {what}"),
                    &vals(&got),
                    &vals(&want),
                    bwd_tol,
                );
            }
        }
        for (dtype, tol, _) in TOLERANCES {
            let xh = host(&g, &shape, dtype);
            let xg = xh.to_device(&gpu).unwrap();
            let mut out = poisoned(&shape, dtype, &gpu);
            scale_into(&xg, -0.3, &mut out).unwrap();
            assert_close(
                "scale",
                &vals(&out),
                &vals(&scale(&f64_of(&xh), -0.3).unwrap()),
                tol,
            );
            let mut acc_g = host(&rng.normal_vec(n), &shape, dtype)
                .to_device(&gpu)
                .unwrap();
            let mut acc_c = f64_of(&acc_g);
            add_scaled(&mut acc_g, &xg, 0.75).unwrap();
            add_scaled(&mut acc_c, &f64_of(&xh), 0.75).unwrap();
            assert_close("add_scaled", &vals(&acc_g), &vals(&acc_c), tol);
            let mut filled = poisoned(&shape, dtype, &gpu);
            fill(&mut filled, 0.1).unwrap();
            let want = full(&shape, 0.1, dtype, &Device::Cpu).unwrap();
            assert_eq!(vals(&filled), vals(&want), "fill rounds like the CPU");
            let b = broadcast_to(
                &xg.reshape(&[shape[0], shape[1]]).unwrap(),
                &[2, shape[0], shape[1]],
            )
            .unwrap();
            assert_eq!(vals(&b)[..n], vals(&xh)[..], "broadcast_to copies exactly");
        }
    }
}

#[test]
fn cuda_bias_gradient_is_bitwise_reproducible() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_bias_gradient_is_bitwise_reproducible") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(400);
    let (sa, sb) = ([4, 256, 50, 84], [1, 256, 1, 1]);
    let a = host(&rng.normal_vec(numel(&sa)), &sa, DType::F32)
        .to_device(&gpu)
        .unwrap();
    let b = host(&rng.normal_vec(256), &sb, DType::F32)
        .to_device(&gpu)
        .unwrap();
    let g = host(&rng.normal_vec(numel(&sa)), &sa, DType::F32)
        .to_device(&gpu)
        .unwrap();
    let bits = |t: &Tensor| vals(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let first = binary_backward(BinaryOp::Mul, &a, &b, &g).unwrap();
    for _ in 0..3 {
        let again = binary_backward(BinaryOp::Mul, &a, &b, &g).unwrap();
        assert_eq!(bits(&first.grad_b), bits(&again.grad_b));
        assert_eq!(bits(&first.grad_a), bits(&again.grad_a));
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
fn cuda_bad_inputs_are_errors_and_empty_inputs_launch_nothing() {
    let Some(gpu) =
        detkd::cuda::gpu_for_test("cuda_bad_inputs_are_errors_and_empty_inputs_launch_nothing")
    else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let a = host(&[1.0, 2.0, 3.0], &[3], DType::F32)
        .to_device(&gpu)
        .unwrap();
    let cpu = host(&[1.0, 2.0, 3.0], &[3], DType::F32);
    let e = binary(BinaryOp::Add, &a, &cpu).unwrap_err().to_string();
    assert!(e.contains("`b`") && e.contains("cpu"), "{e}");
    let mut acc = cpu.try_clone().unwrap();
    assert!(add_scaled(&mut acc, &a, 1.0)
        .unwrap_err()
        .to_string()
        .contains("`x`"));
    let mut out = poisoned(&[3], DType::F32, &Device::Cpu);
    assert!(unary_into(UnaryOp::Exp, &a, &mut out)
        .unwrap_err()
        .to_string()
        .contains("`out`"));
    let h = host(&[1.0, 2.0, 3.0], &[3], DType::F16)
        .to_device(&gpu)
        .unwrap();
    assert!(binary(BinaryOp::Mul, &a, &h)
        .unwrap_err()
        .to_string()
        .contains("dtype"));
    let empty = host(&[], &[0, 4], DType::F32).to_device(&gpu).unwrap();
    let row = host(&[1.0; 4], &[1, 4], DType::F32)
        .to_device(&gpu)
        .unwrap();
    assert_eq!(
        binary(BinaryOp::Add, &empty, &row).unwrap().shape(),
        &[0, 4]
    );
    let grads = binary_backward(BinaryOp::Mul, &empty, &row, &empty).unwrap();
    assert_eq!(vals(&grads.grad_b), vec![0.0; 4]);
    let mut sum = poisoned(&[4], DType::F32, &gpu);
    sum_to_shape_into(&empty, &mut sum).unwrap();
    assert_eq!(vals(&sum), vec![0.0; 4], "an empty sum is written as 0");
    assert_eq!(unary(UnaryOp::Sigmoid, &empty).unwrap().shape(), &[0, 4]);
}
