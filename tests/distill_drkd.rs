//! DRKD against PyTorch (golden fixtures from scripts/make_fixtures_drkd.py, run through the `detkd parity`
//! runner) and on CUDA against the CPU reference at TinyGFL's sizes. GPU tests print `SKIP` without a
//! driver and fail under `DETKD_REQUIRE_GPU=1`.

use detkd::distill::drkd::{
    relation_filter, relation_filter_seed, DrkdConfig, DrkdDistiller, RelationSide,
};
use detkd::distill::{Box4, DetectorShape, MethodGradients};
use detkd::nn::{BufferUpdates, ParamStore};
use detkd::tensor::io;
use detkd::testing::{assert_close, Rng};
use detkd::{DType, Device, Tensor};

macro_rules! fixtures {
    ($($name:literal),* $(,)?) => {
        [$(($name, include_bytes!(concat!("fixtures/methods/", $name, ".safetensors")).as_slice())),*]
    };
}
const FIXTURES: [(&str, &[u8]); 3] =
    fixtures!["drkd_default", "drkd_rms_normalize", "drkd_instance_mse"];

/// Runs the fixture through the parity runner with `dtype` and compares every result with PyTorch's.
fn check_fixture(name: &str, bytes: &[u8], dtype: DType, tol: f64) {
    let mut inputs = io::from_bytes(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
    inputs.metadata.insert("dtype".into(), dtype.name().into());
    let results =
        detkd::parity::run(&inputs, &Device::Cpu).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut want_names: Vec<&str> = inputs
        .tensors
        .keys()
        .filter_map(|k| k.strip_prefix("expected."))
        .collect();
    want_names.sort();
    let mut got_names: Vec<&str> = results.tensors.keys().map(String::as_str).collect();
    got_names.sort();
    assert_eq!(got_names, want_names, "{name}: result names");
    for result_name in want_names {
        let got = results.get(result_name).unwrap();
        let want = inputs.get(&format!("expected.{result_name}")).unwrap();
        assert_eq!(got.shape(), want.shape(), "{name}/{result_name}");
        let (got, want) = (got.to_vec::<f64>().unwrap(), want.to_vec::<f64>().unwrap());
        let largest = |v: &[f64]| v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
        if largest(&want) < 1e-15 {
            // A gradient that is zero in exact arithmetic, which PyTorch returns as rounding noise: without
            // the relation filter, softmax(θφᵀ) does not depend on φ's bias (it shifts each row of the
            // logits by a constant). Compare it with zero, at the precision of the dtype.
            let zero_tol = if dtype == DType::F64 { 1e-15 } else { 1e-9 };
            assert!(
                largest(&got) < zero_tol,
                "{name}/{result_name} ({dtype}): {} is not zero",
                largest(&got)
            );
            continue;
        }
        assert_close(&format!("{name}/{result_name} ({dtype})"), &got, &want, tol);
    }
}

#[test]
fn cpu_matches_pytorch_fixtures() {
    for (name, bytes) in FIXTURES {
        check_fixture(name, bytes, DType::F64, 1e-10);
        check_fixture(name, bytes, DType::F32, 1e-4);
    }
}

#[test]
fn relation_filters_match_the_reference_generator() {
    let mut checked = 0;
    for (name, bytes) in FIXTURES {
        let file = io::from_bytes(bytes).unwrap();
        let step_seed: u64 = file.metadata["step_seed"].parse().unwrap();
        for key in file.tensors.keys() {
            let Some(rest) = key.strip_prefix("check.filter.") else {
                continue;
            };
            let Some(rest) = rest.strip_suffix(".weight") else {
                continue;
            };
            let parts: Vec<usize> = rest.split('.').map(|p| p.parse().unwrap()).collect();
            let side = [RelationSide::Student, RelationSide::Teacher][parts[2]];
            let weight = file.get(key).unwrap();
            let bias = file
                .get(&format!("check.filter.{rest}.bias"))
                .unwrap()
                .to_vec::<f64>()
                .unwrap();
            let (rows, dim) = (weight.shape()[0], weight.shape()[1]);
            let (q, q_bias) = relation_filter(
                relation_filter_seed(step_seed, parts[0], parts[1], side),
                rows,
                dim,
            );
            let as_f64 = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<_>>();
            assert_eq!(as_f64(q), weight.to_vec::<f64>().unwrap(), "{name}/{key}");
            assert_eq!(as_f64(q_bias), bias, "{name}/{key}");
            checked += 1;
        }
    }
    assert!(checked >= 8, "{checked}");
}

#[test]
fn fixtures_cover_the_configurations() {
    let get =
        |name: &str| io::from_bytes(FIXTURES.iter().find(|(n, _)| *n == name).unwrap().1).unwrap();
    let default = get("drkd_default");
    assert!(default
        .tensors
        .contains_key("expected.buffer.distill.drkd.teacher_non_local.2.blocker.running_var"));
    assert!(default
        .tensors
        .contains_key("expected.grad.param.distill.drkd.teacher_relation.1.W.weight"));
    let rms = get("drkd_rms_normalize");
    assert_eq!(rms.metadata["distance"], "rms");
    assert!(rms.metadata["step_seed"].parse::<u64>().unwrap() > 1 << 63);
    assert_eq!(rms.metadata["instance_source"], "first");
    assert_eq!(default.metadata["instance_source"], "own");
    let instance = get("drkd_instance_mse");
    assert!(!instance.tensors.keys().any(|k| k.contains("non_local")));
    assert_eq!(instance.metadata["relation_filter"], "disabled");
}

#[test]
fn parity_rejects_bad_metadata_and_parameters() {
    let (_, bytes) = FIXTURES[0];
    let run = |inputs: &io::NamedTensors| {
        detkd::parity::run(inputs, &Device::Cpu)
            .unwrap_err()
            .to_string()
    };
    let mut bad = io::from_bytes(bytes).unwrap();
    bad.metadata.insert("distance".into(), "l1".into());
    assert!(run(&bad).contains("`distance`"), "{}", run(&bad));
    let mut bad = io::from_bytes(bytes).unwrap();
    bad.metadata.insert("step_seed".into(), "-3".into());
    assert!(run(&bad).contains("`step_seed`"), "{}", run(&bad));
    let mut bad = io::from_bytes(bytes).unwrap();
    bad.metadata.insert("glore_mid_divisors".into(), "2".into());
    assert!(run(&bad).contains("glore_mid_divisors"), "{}", run(&bad));
    let mut bad = io::from_bytes(bytes).unwrap();
    bad.tensors
        .remove("param.distill.drkd.student_relation.0.theta.0.bias");
    assert!(run(&bad).contains("file does not"), "{}", run(&bad));
    let mut bad = io::from_bytes(bytes).unwrap();
    let w = bad
        .get("param.distill.drkd.for_adaptation.0.weight")
        .unwrap()
        .try_clone()
        .unwrap();
    bad.tensors
        .insert("param.distill.drkd.for_adaptation.0.bias".into(), w);
    assert!(run(&bad).contains("for_adaptation.0.bias"), "{}", run(&bad));
}

// ---------------------------------------------------------------------------------------------------------
// CUDA vs CPU

fn shape(width: usize) -> DetectorShape {
    DetectorShape {
        stage_channels: vec![width; 4],
        fpn_channels: width,
        num_classes: 8,
        reg_max: 16,
    }
}

/// TinyGFL's sizes: 4 images of 128×128, P3–P5 (16², 8², 4²), student FPN 32, teacher 64, 1–6 GT boxes of
/// 6–64 px per image.
struct Batch {
    student: Vec<Tensor>,
    teacher: Vec<Tensor>,
    boxes: Vec<Vec<Box4>>,
}

fn tiny_gfl_batch(seed: u64) -> Batch {
    let mut rng = Rng::new(seed);
    let maps = [(16, 16), (8, 8), (4, 4)];
    let mut make = |c: usize| -> Vec<Tensor> {
        maps.iter()
            .map(|&(h, w)| {
                let v: Vec<f32> = rng
                    .normal_vec(4 * c * h * w)
                    .into_iter()
                    .map(|x| x as f32)
                    .collect();
                Tensor::from_vec(v, &[4, c, h, w]).unwrap()
            })
            .collect()
    };
    let (student, teacher) = (make(32), make(64));
    let boxes = (0..4)
        .map(|_| {
            (0..1 + rng.below(6))
                .map(|_| {
                    let (w, h) = (rng.uniform(6.0, 64.0), rng.uniform(6.0, 64.0));
                    let (x, y) = (rng.uniform(0.0, 128.0 - w), rng.uniform(0.0, 128.0 - h));
                    [x, y, x + w, y + h]
                })
                .collect()
        })
        .collect();
    Batch {
        student,
        teacher,
        boxes,
    }
}

fn compute_on(
    d: &DrkdDistiller,
    store: &ParamStore,
    batch: &Batch,
    device: &Device,
    dtype: DType,
) -> (MethodGradients, BufferUpdates) {
    let move_all = |ts: &[Tensor]| -> Vec<Tensor> {
        ts.iter()
            .map(|t| t.to_dtype(dtype).unwrap().to_device(device).unwrap())
            .collect()
    };
    let (s, t) = (move_all(&batch.student), move_all(&batch.teacher));
    let mut updates = BufferUpdates::default();
    let out = d
        .compute(
            store,
            &s.iter().collect::<Vec<_>>(),
            &t.iter().collect::<Vec<_>>(),
            &[8.0, 16.0, 32.0],
            &batch.boxes,
            31,
            &mut updates,
        )
        .unwrap();
    (out, updates)
}

/// Runs DRKD at TinyGFL's sizes in f32 on `device` and compares it with the f64 CPU reference on the same
/// (f32-rounded) inputs: loss and terms within 1e-5, gradients and BatchNorm buffers within 1e-4.
fn check_against_f64_cpu(device: &Device) {
    let mut cpu_store = ParamStore::new();
    let cfg = DrkdConfig::default();
    let d = DrkdDistiller::new(&mut cpu_store, &shape(32), &shape(64), 3, cfg.clone(), 3).unwrap();
    let mut store = ParamStore::new();
    DrkdDistiller::new(&mut store, &shape(32), &shape(64), 3, cfg, 3).unwrap();
    store.to_device(device).unwrap();
    cpu_store.to_dtype(DType::F64).unwrap();
    let batch = tiny_gfl_batch(5);

    let (want, want_buffers) = compute_on(&d, &cpu_store, &batch, &Device::Cpu, DType::F64);
    let (got, got_buffers) = compute_on(&d, &store, &batch, device, DType::F32);
    let what = |s: &str| format!("on {device}: {s}");
    assert_close(&what("loss"), &[got.loss], &[want.loss], 1e-5);
    assert_eq!(got.terms.len(), 3);
    for ((name, g), (_, w)) in got.terms.iter().zip(&want.terms) {
        assert!(*w > 0.0, "{name}");
        assert_close(&what(name), &[*g], &[*w], 1e-5);
    }
    for (l, (g, w)) in got
        .student_grads
        .iter()
        .zip(&want.student_grads)
        .enumerate()
    {
        assert_eq!(g.device(), *device);
        assert_close(
            &what(&format!("grad fpn {l}")),
            &g.to_vec::<f64>().unwrap(),
            &w.to_vec::<f64>().unwrap(),
            1e-4,
        );
    }
    assert_eq!(got.param_grads.len(), cpu_store.trainable().count());
    for ((id, g), (_, w)) in got.param_grads.iter().zip(&want.param_grads) {
        assert_close(
            &what(cpu_store.name(*id)),
            &g.to_vec::<f64>().unwrap(),
            &w.to_vec::<f64>().unwrap(),
            1e-4,
        );
    }
    assert_eq!(got_buffers.updates.len(), 18);
    for ((id, g), (_, w)) in got_buffers.updates.iter().zip(&want_buffers.updates) {
        assert_close(
            &what(cpu_store.name(*id)),
            &g.to_vec::<f64>().unwrap(),
            &w.to_vec::<f64>().unwrap(),
            1e-4,
        );
    }
}

#[test]
fn cpu_f32_matches_f64_at_tiny_gfl_sizes() {
    check_against_f64_cpu(&Device::Cpu);
}

#[test]
fn cuda_matches_cpu_at_tiny_gfl_sizes() {
    let Some(gpu) = detkd::cuda::gpu_for_test("cuda_matches_cpu_at_tiny_gfl_sizes") else {
        return;
    };
    check_against_f64_cpu(&Device::Cuda(gpu));
}
