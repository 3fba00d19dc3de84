//! The prototype family against PyTorch (golden fixtures from scripts/make_fixtures_prototype.py, run
//! through the `detkd parity` runner) and CUDA against the CPU reference. GPU tests print `SKIP` without a
//! driver and fail under `DETKD_REQUIRE_GPU=1`.

use detkd::ops::prototype::{
    gkd_robust_weights, gkd_robust_weights_into, max_cosine_match, max_cosine_match_into,
    soft_assignment, soft_assignment_backward, soft_assignment_into, AssignmentOutput,
    MaxCosineConfig, MaxCosineMatch, RobustWeightInputs, SoftAssignConfig,
};
use detkd::ops::similarity::{cosine_cross, CosineConfig};
use detkd::tensor::io::{self, NamedTensors};
use detkd::testing::{
    assert_close, assert_close_nan, f64_of, host, poisoned, vals, Rng, TOLERANCES,
};
use detkd::{DType, Device, Tensor};

/// Every fixture, embedded so the test binary runs anywhere (e.g. carried to a GPU machine).
macro_rules! fixtures {
    ($($name:literal),* $(,)?) => {
        [$(($name, include_bytes!(concat!("fixtures/prototype/", $name, ".safetensors")).as_slice())),*]
    };
}
const FIXTURES: [(&str, &[u8]); 18] = fixtures![
    "soft_assign_tau_0_5",
    "soft_assign_tau_1",
    "soft_assign_tau_4",
    "soft_assign_tau_16",
    "soft_assign_log_tau_2",
    "soft_assign_mm",
    "soft_assign_large_logits",
    "soft_assign_far_log",
    "soft_assign_coincident",
    "soft_assign_k1",
    "soft_assign_empty_rows",
    "soft_assign_empty_prototypes",
    "max_cosine_match",
    "max_cosine_match_one_class_zero_row",
    "max_cosine_match_no_prototypes",
    "max_cosine_match_empty",
    "gkd_robust_weights",
    "gkd_robust_weights_no_prototypes",
];

fn fixture(name: &str) -> NamedTensors {
    let bytes = FIXTURES.iter().find(|(n, _)| *n == name).unwrap().1;
    io::from_bytes(bytes).unwrap()
}

/// `got` against `want` where NaN marks "no prototype": NaN exactly where `want` is NaN, and elsewhere
/// the relative error (to the largest finite magnitude of `want`) within `tol`.
#[track_caller]
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
        !expected.is_empty(),
        "{name}: fixture has no expected result"
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
        let what = format!("{name}/{result_name} ({dtype} on {device})");
        assert_eq!(got.shape(), want.shape(), "{what}");
        if want.dtype() == DType::I64 {
            assert_eq!(got.dtype(), DType::I64, "{what}");
            assert_eq!(
                got.to_vec::<i64>().unwrap(),
                want.to_vec::<i64>().unwrap(),
                "{what}"
            );
            continue;
        }
        assert_eq!(got.dtype(), dtype, "{what}");
        assert_close_nan(&what, &vals(got), &vals(want), tol);
    }
}

#[test]
fn cpu_matches_pytorch_fixtures() {
    for (name, bytes) in FIXTURES {
        check_fixture(name, bytes, DType::F64, &Device::Cpu, 1e-10);
        check_fixture(name, bytes, DType::F32, &Device::Cpu, 1e-5);
    }
}

/// Half storage against the fixtures. The expected values are for the unrounded inputs, so this measures
/// the inputs' rounding as much as the op: bf16 keeps 8 bits, and at τ = 1 its 2^-9 rounding of the
/// inputs alone moves `soft_assign_tau_1`'s prototype gradient by 1.9e-2, hence 2e-2 for bf16 (as for the
/// distribution losses). Half storage against f64 on the *rounded* inputs is checked at 1e-2 in the unit
/// tests and the CUDA parity tests.
#[test]
fn cpu_half_storage_is_close_to_the_fixtures() {
    for (name, bytes) in FIXTURES {
        check_fixture(name, bytes, DType::F16, &Device::Cpu, 1e-2);
        check_fixture(name, bytes, DType::BF16, &Device::Cpu, 2e-2);
    }
}

#[test]
fn fixtures_cover_the_required_cases() {
    let all: Vec<(&str, NamedTensors)> = FIXTURES.iter().map(|(n, _)| (*n, fixture(n))).collect();
    let of_op = |op: &str| -> Vec<&NamedTensors> {
        all.iter()
            .filter(|(_, f)| f.metadata["op"] == op)
            .map(|(_, f)| f)
            .collect()
    };
    let assign = of_op("soft_assignment");
    let mut taus: Vec<String> = assign
        .iter()
        .map(|f| f.metadata["temperature"].clone())
        .collect();
    taus.sort();
    taus.dedup();
    assert!(taus.len() >= 4, "temperatures {taus:?}");
    assert!(assign
        .iter()
        .any(|f| f.metadata["output"] == "log_probabilities"));
    assert!(assign
        .iter()
        .all(|f| f.tensors.contains_key("expected.grad_prototypes")));
    // K = 1, N = 0, K = 0.
    assert_eq!(
        fixture("soft_assign_k1").get("prototypes").unwrap().shape()[0],
        1
    );
    assert_eq!(
        fixture("soft_assign_empty_rows").get("x").unwrap().shape()[0],
        0
    );
    assert_eq!(
        fixture("soft_assign_empty_prototypes")
            .get("prototypes")
            .unwrap()
            .shape()[0],
        0
    );
    // Large logits: every logit below −104 (f32's exp underflow), and rows that are not one-hot.
    let large = fixture("soft_assign_large_logits");
    let (x, p) = (
        vals(large.get("x").unwrap()),
        vals(large.get("prototypes").unwrap()),
    );
    let d = large.get("x").unwrap().shape()[1];
    let tau: f64 = large.metadata["temperature"].parse().unwrap();
    let max_logit = x
        .chunks(d)
        .flat_map(|xi| {
            p.chunks(d)
                .map(move |pk| -xi.iter().zip(pk).map(|(a, b)| (a - b).powi(2)).sum::<f64>() / tau)
        })
        .fold(f64::NEG_INFINITY, f64::max);
    assert!(max_logit < -104.0, "{max_logit}");
    let k = large.get("prototypes").unwrap().shape()[0];
    let a = vals(large.get("expected.output").unwrap());
    assert!(a.chunks(k).any(|row| row.iter().all(|&v| v < 0.99)));
    // Rows with no prototype of their class, and no prototypes at all.
    for (name, key) in [
        ("max_cosine_match", "expected.similarity"),
        ("max_cosine_match_no_prototypes", "expected.similarity"),
    ] {
        let f = fixture(name);
        assert!(
            vals(f.get(key).unwrap()).iter().any(|v| v.is_nan()),
            "{name}"
        );
        let idx = f.get("expected.index").unwrap().to_vec::<i64>().unwrap();
        assert!(idx.contains(&-1), "{name}");
    }
    let w = vals(
        fixture("gkd_robust_weights")
            .get("expected.weight")
            .unwrap(),
    );
    assert!(w.contains(&1.0) && w.iter().any(|&v| v < 1.0));
    assert_eq!(of_op("max_cosine_match").len(), 4);
    assert_eq!(of_op("gkd_robust_weights").len(), 2);
}

#[test]
fn parity_rejects_bad_metadata_and_inputs() {
    let mut inputs = fixture("soft_assign_tau_1");
    for (key, value, expected) in [
        (
            "temperature",
            "warm",
            "`temperature`: expected a positive float",
        ),
        ("temperature", "0", "`temperature`: must be finite and > 0"),
        (
            "output",
            "softmax",
            "`output`: expected probabilities or log_probabilities",
        ),
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
    inputs.tensors.remove("prototypes");
    let err = detkd::parity::run(&inputs, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("prototypes"), "{err}");

    let mut inputs = fixture("max_cosine_match");
    for (value, expected) in [
        ("many", "`num_classes`: expected a positive integer"),
        ("3", "`labels`: entry 3 is 3, outside [0, 3)"),
        ("0", "`num_classes`: must be at least 1"),
    ] {
        inputs.metadata.insert("num_classes".into(), value.into());
        let err = detkd::parity::run(&inputs, &Device::Cpu)
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "num_classes={value}: {err}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// CUDA vs CPU

fn labels(v: &[i64]) -> Tensor {
    Tensor::from_vec(v.to_vec(), &[v.len()]).unwrap()
}

/// An i64 `[n]` tensor of a value no kernel writes, on `device`.
fn poisoned_index(n: usize, device: &Device) -> Tensor {
    labels(&vec![i64::MIN + 7; n]).to_device(device).unwrap()
}

const OUTPUTS: [AssignmentOutput; 2] = [
    AssignmentOutput::Probabilities,
    AssignmentOutput::LogProbabilities,
];

#[test]
fn cuda_soft_assignment_matches_cpu_on_random_shapes() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_soft_assignment_matches_cpu_on_random_shapes")
    else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(1100);
    for case in 0..12 {
        // Extents straddle the warp (32 lanes), the GEMM tiles (64) and the column-sum chunk (512 rows).
        let n = [1, 7, 33, 200, 700][rng.below(5)] + rng.below(40);
        let k = 1 + rng.below(140);
        let d = [1, 3, 64, 255, 256, 257][rng.below(6)];
        // τ on the scale of the squared distances (≈ 2D for unit normals), as a useful assignment has.
        let tau = d as f64 * rng.uniform(0.5, 4.0);
        let (x, p) = (rng.normal_vec(n * d), rng.normal_vec(k * d));
        let g = rng.normal_vec(n * k);
        for output in OUTPUTS {
            let cfg = SoftAssignConfig {
                temperature: tau,
                output,
            };
            for (dtype, fwd_tol, bwd_tol) in TOLERANCES {
                let what = format!("case {case} {dtype} {output:?} n={n} k={k} d={d} tau={tau:.1}");
                let (xh, ph) = (host(&x, &[n, d], dtype), host(&p, &[k, d], dtype));
                let (xg, pg) = (xh.to_device(&gpu).unwrap(), ph.to_device(&gpu).unwrap());
                let mut out = poisoned(&[n, k], dtype, &gpu);
                soft_assignment_into(&xg, &pg, &cfg, &mut out).unwrap();
                let want = soft_assignment(&f64_of(&xh), &f64_of(&ph), &cfg).unwrap();
                assert_close(
                    &format!("forward {what}"),
                    &vals(&out),
                    &vals(&want),
                    fwd_tol,
                );
                let again = soft_assignment(&xg, &pg, &cfg).unwrap();
                assert_eq!(
                    vals(&again).iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    vals(&out).iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                    "{what}: bitwise reproducible"
                );

                // The backward reads the forward output: both sides get the same (GPU) one.
                let gh = host(&g, &[n, k], dtype);
                let (dx, dp) = soft_assignment_backward(
                    &xg,
                    &pg,
                    &out,
                    &gh.to_device(&gpu).unwrap(),
                    &cfg,
                    true,
                )
                .unwrap();
                let (wx, wp) = soft_assignment_backward(
                    &f64_of(&xh),
                    &f64_of(&ph),
                    &f64_of(&out),
                    &f64_of(&gh),
                    &cfg,
                    true,
                )
                .unwrap();
                let dp = dp.unwrap();
                assert_eq!((dx.dtype(), dp.dtype()), (dtype, dtype), "{what}");
                assert_close(&format!("dx {what}"), &vals(&dx), &vals(&wx), bwd_tol);
                assert_close(
                    &format!("dp {what}"),
                    &vals(&dp),
                    &vals(&wp.unwrap()),
                    bwd_tol,
                );
            }
        }
    }
}

#[test]
fn cuda_soft_assignment_at_the_design_width() {
    // 256-dimensional features against 800 prototypes (DESIGN.md's benchmark width), 3000 rows: long
    // enough rows for every lane, a split-K product in the prototypes' gradient.
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_soft_assignment_at_the_design_width") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(1200);
    let (n, k, d) = (3000, 800, 256);
    let (x, p, g) = (
        rng.normal_vec(n * d),
        rng.normal_vec(k * d),
        rng.normal_vec(n * k),
    );
    let cfg = SoftAssignConfig {
        temperature: 64.0,
        output: AssignmentOutput::Probabilities,
    };
    let (xh, ph, gh) = (
        host(&x, &[n, d], DType::F32),
        host(&p, &[k, d], DType::F32),
        host(&g, &[n, k], DType::F32),
    );
    let (xg, pg) = (xh.to_device(&gpu).unwrap(), ph.to_device(&gpu).unwrap());
    let mut out = poisoned(&[n, k], DType::F32, &gpu);
    soft_assignment_into(&xg, &pg, &cfg, &mut out).unwrap();
    let want = soft_assignment(&f64_of(&xh), &f64_of(&ph), &cfg).unwrap();
    assert_close("forward", &vals(&out), &vals(&want), 1e-5);
    let (dx, dp) =
        soft_assignment_backward(&xg, &pg, &out, &gh.to_device(&gpu).unwrap(), &cfg, true).unwrap();
    let (wx, wp) = soft_assignment_backward(
        &f64_of(&xh),
        &f64_of(&ph),
        &f64_of(&out),
        &f64_of(&gh),
        &cfg,
        true,
    )
    .unwrap();
    assert_close("dx", &vals(&dx), &vals(&wx), 1e-4);
    assert_close("dp", &vals(&dp.unwrap()), &vals(&wp.unwrap()), 1e-4);
}

/// Checks a GPU match against the f64 CPU one on the same (rounded) inputs: unmatched rows agree exactly
/// (NaN, −1); a matched row's index is the CPU's, or — when two cosines are closer than the GPU's
/// rounding — another prototype of the same class whose f64 cosine is within `tol` of the best.
#[allow(clippy::too_many_arguments)]
fn check_match(
    what: &str,
    got: &MaxCosineMatch,
    want: &MaxCosineMatch,
    cos: &[f64],
    k: usize,
    row_labels: &[i64],
    proto_labels: &[i64],
    tol: f64,
) {
    let (gs, gi) = (vals(&got.similarity), got.index.to_vec::<i64>().unwrap());
    let (ws, wi) = (vals(&want.similarity), want.index.to_vec::<i64>().unwrap());
    assert_close_nan(&format!("similarity {what}"), &gs, &ws, tol);
    for i in 0..wi.len() {
        if wi[i] < 0 {
            assert_eq!(gi[i], -1, "{what}: row {i}");
            continue;
        }
        let j = gi[i];
        assert!(j >= 0 && (j as usize) < k, "{what}: row {i} index {j}");
        assert_eq!(
            proto_labels[j as usize], row_labels[i],
            "{what}: row {i} matched another class"
        );
        assert!(
            j == wi[i] || cos[i * k + j as usize] >= ws[i] - tol,
            "{what}: row {i} chose {j} (cos {}), best is {} (cos {})",
            cos[i * k + j as usize],
            wi[i],
            ws[i]
        );
    }
}

#[test]
fn cuda_max_cosine_match_matches_cpu_on_random_shapes() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_max_cosine_match_matches_cpu_on_random_shapes")
    else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(1300);
    for case in 0..10 {
        let n = 1 + rng.below(300);
        let k = 1 + rng.below(120);
        let d = [1, 5, 31, 64, 256, 300][rng.below(6)];
        let classes = 1 + rng.below(12);
        // Prototypes of a random subset of classes, so some rows have none.
        let proto_labels: Vec<i64> = (0..k)
            .map(|_| rng.below(classes.div_ceil(2) + 1).min(classes - 1) as i64)
            .collect();
        let row_labels: Vec<i64> = (0..n).map(|_| rng.below(classes) as i64).collect();
        let cfg = MaxCosineConfig {
            num_classes: classes,
            ..Default::default()
        };
        let (x, p) = (rng.normal_vec(n * d), rng.normal_vec(k * d));
        for (dtype, tol, _) in TOLERANCES {
            let what = format!("case {case} {dtype} n={n} k={k} d={d} classes={classes}");
            let (xh, ph) = (host(&x, &[n, d], dtype), host(&p, &[k, d], dtype));
            let (x64, p64) = (f64_of(&xh), f64_of(&ph));
            let want = max_cosine_match(
                &x64,
                &labels(&row_labels),
                &p64,
                &labels(&proto_labels),
                &cfg,
            )
            .unwrap();
            let cos = vals(&cosine_cross(&x64, &p64, &CosineConfig::default()).unwrap());
            let (xg, pg) = (xh.to_device(&gpu).unwrap(), ph.to_device(&gpu).unwrap());
            // Labels on the host and on the device.
            for on_device in [false, true] {
                let place = |t: Tensor| {
                    if on_device {
                        t.to_device(&gpu).unwrap()
                    } else {
                        t
                    }
                };
                let (rl, pl) = (place(labels(&row_labels)), place(labels(&proto_labels)));
                let mut got = MaxCosineMatch {
                    similarity: poisoned(&[n], dtype, &gpu),
                    index: poisoned_index(n, &gpu),
                };
                max_cosine_match_into(&xg, &rl, &pg, &pl, &cfg, &mut got).unwrap();
                assert_eq!(got.similarity.dtype(), dtype);
                let what = format!("{what} labels on device={on_device}");
                check_match(&what, &got, &want, &cos, k, &row_labels, &proto_labels, tol);
            }
        }
    }
}

#[test]
fn cuda_robust_weights_match_cpu() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_robust_weights_match_cpu") else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(1400);
    for case in 0..8 {
        let n = 1 + rng.below(500);
        let k = 1 + rng.below(200);
        let (ds, dt) = ([8, 64, 256][rng.below(3)], [4, 256, 300][rng.below(3)]);
        let classes = 2 + rng.below(10);
        let proto_labels: Vec<i64> = (0..k).map(|_| rng.below(classes - 1) as i64).collect();
        let row_labels: Vec<i64> = (0..n).map(|_| rng.below(classes) as i64).collect();
        let cfg = MaxCosineConfig {
            num_classes: classes,
            ..Default::default()
        };
        let (s, t) = (rng.normal_vec(n * ds), rng.normal_vec(n * dt));
        let (ps, pt) = (rng.normal_vec(k * ds), rng.normal_vec(k * dt));
        let (rl, pl) = (labels(&row_labels), labels(&proto_labels));
        for (dtype, tol, _) in TOLERANCES {
            let what = format!("case {case} {dtype} n={n} k={k} ds={ds} dt={dt}");
            let hs = [
                host(&s, &[n, ds], dtype),
                host(&t, &[n, dt], dtype),
                host(&ps, &[k, ds], dtype),
                host(&pt, &[k, dt], dtype),
            ];
            let wide: Vec<Tensor> = hs.iter().map(f64_of).collect();
            let want = gkd_robust_weights(
                &RobustWeightInputs {
                    student: &wide[0],
                    teacher: &wide[1],
                    labels: &rl,
                    student_prototypes: &wide[2],
                    teacher_prototypes: &wide[3],
                    prototype_labels: &pl,
                },
                &cfg,
            )
            .unwrap();
            let dev: Vec<Tensor> = hs.iter().map(|t| t.to_device(&gpu).unwrap()).collect();
            let mut got = poisoned(&[n], dtype, &gpu);
            gkd_robust_weights_into(
                &RobustWeightInputs {
                    student: &dev[0],
                    teacher: &dev[1],
                    labels: &rl,
                    student_prototypes: &dev[2],
                    teacher_prototypes: &dev[3],
                    prototype_labels: &pl,
                },
                &cfg,
                &mut got,
            )
            .unwrap();
            assert_eq!(got.dtype(), dtype);
            // The weights are bounded by 1 and compared absolutely (a relative error to max ≈ 1).
            assert_close(
                &format!("weights {what}"),
                &vals(&got),
                &vals(&want),
                tol.max(1e-5),
            );
            let w = vals(&want);
            for (i, &c) in row_labels.iter().enumerate() {
                if c as usize == classes - 1 {
                    assert_eq!(w[i], 1.0, "{what}: class without prototypes");
                }
            }
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
        check_fixture(name, bytes, DType::F32, &gpu, 1e-5);
    }
}

#[test]
fn cuda_empty_inputs_non_finite_values_and_bad_inputs() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_empty_inputs_non_finite_values_and_bad_inputs")
    else {
        return;
    };
    let gpu = Device::Cuda(gpu);
    let mut rng = Rng::new(1500);
    let x = host(&rng.normal_vec(12), &[3, 4], DType::F32)
        .to_device(&gpu)
        .unwrap();
    let cfg = MaxCosineConfig::default();
    // K = 0: NaN / −1 over poisoned outputs, weights 1, without a launch.
    let none = host(&[], &[0, 4], DType::F32).to_device(&gpu).unwrap();
    let no_labels = labels(&[]);
    let mut out = MaxCosineMatch {
        similarity: host(&[5.0; 3], &[3], DType::F32).to_device(&gpu).unwrap(),
        index: poisoned_index(3, &gpu),
    };
    max_cosine_match_into(&x, &labels(&[0, 1, 2]), &none, &no_labels, &cfg, &mut out).unwrap();
    assert!(vals(&out.similarity).iter().all(|v| v.is_nan()));
    assert_eq!(out.index.to_vec::<i64>().unwrap(), vec![-1; 3]);
    let inputs = RobustWeightInputs {
        student: &x,
        teacher: &x,
        labels: &labels(&[0, 1, 2]),
        student_prototypes: &none,
        teacher_prototypes: &none,
        prototype_labels: &no_labels,
    };
    let mut w = poisoned(&[3], DType::F32, &gpu);
    gkd_robust_weights_into(&inputs, &cfg, &mut w).unwrap();
    assert_eq!(vals(&w), vec![1.0; 3]);
    // N = 0 and K = 0 for the soft assignment.
    let sa = SoftAssignConfig::default();
    assert_eq!(soft_assignment(&none, &x, &sa).unwrap().shape(), &[0, 3]);
    let out = soft_assignment(&x, &none, &sa).unwrap();
    assert_eq!(out.shape(), &[3, 0]);
    let (dx, dp) = soft_assignment_backward(&x, &none, &out, &out, &sa, true).unwrap();
    assert_eq!(
        (dx.shape(), dp.unwrap().shape()),
        (&[3, 4][..], &[0, 4][..])
    );
    assert!(vals(&dx).iter().all(|&v| v == 0.0));

    // A NaN feature poisons its row of the assignment and its similarity.
    let mut v = rng.normal_vec(12);
    v[5] = f64::NAN;
    let bad = host(&v, &[3, 4], DType::F32).to_device(&gpu).unwrap();
    let p = host(&rng.normal_vec(8), &[2, 4], DType::F32)
        .to_device(&gpu)
        .unwrap();
    let a = vals(&soft_assignment(&bad, &p, &sa).unwrap());
    assert!(
        a[2..4].iter().all(|v| v.is_nan()) && a[..2].iter().chain(&a[4..]).all(|v| v.is_finite())
    );
    let m = max_cosine_match(&bad, &labels(&[0, 0, 0]), &p, &labels(&[0, 0]), &cfg).unwrap();
    let s = vals(&m.similarity);
    assert!(
        s[1].is_nan() && s[0].is_finite() && s[2].is_finite(),
        "{s:?}"
    );

    // Device labels are validated like host ones; mixed devices are errors.
    let err = max_cosine_match(
        &x,
        &labels(&[0, 80, 1]).to_device(&gpu).unwrap(),
        &p,
        &labels(&[0, 1]),
        &cfg,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("`labels`: entry 1 is 80, outside [0, 80)"),
        "{err}"
    );
    let cpu_p = host(&[0.5; 8], &[2, 4], DType::F32);
    let err = soft_assignment(&x, &cpu_p, &sa).unwrap_err().to_string();
    assert!(err.contains("`prototypes`") && err.contains("cpu"), "{err}");
    let err = max_cosine_match(&x, &labels(&[0, 0, 0]), &cpu_p, &labels(&[0, 0]), &cfg)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`prototypes`"), "{err}");
    // Labels on the device for host features.
    let cpu_x = host(&[0.5; 12], &[3, 4], DType::F32);
    let err = max_cosine_match(
        &cpu_x,
        &labels(&[0, 0, 0]),
        &cpu_p,
        &labels(&[0, 0]).to_device(&gpu).unwrap(),
        &cfg,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("`prototype_labels`: expected a tensor on cpu, got one on cuda"),
        "{err}"
    );
}
