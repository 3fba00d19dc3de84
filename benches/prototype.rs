//! Prototype ops at the shapes of shared/DESIGN.md: the soft assignment of 100 000 vectors × 256 dims to
//! 800 prototypes (forward, and backward to both inputs) on CUDA, and on the CPU the same widths with
//! 10 000 vectors, so a CPU run finishes in seconds; GKD's hard max-cosine match and robustness weights at
//! a batch's worth of KD boxes (16 images × 128 positive proposals = 2048 × 256) against 10 prototypes per
//! class × 80 classes. CPU always; CUDA too when built with `--features cuda` and a device is present.
//!
//! `cargo bench --bench prototype -- --warm-up-time 1 --measurement-time 3`
//!
//! Each soft-assignment product is 2·N·K·D flops: 41 GFLOP per product at the CUDA shape, 4.1 at the CPU's.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use detkd::ops::prototype::{
    gkd_robust_weights, max_cosine_match, soft_assignment, soft_assignment_backward,
    MaxCosineConfig, RobustWeightInputs, SoftAssignConfig,
};
use detkd::testing::Rng;
use detkd::{Device, Tensor};

/// (label, vectors, dims, prototypes)
const CUDA_ASSIGN: (&str, usize, usize, usize) = ("100000x256x800", 100_000, 256, 800);
const CPU_ASSIGN: (&str, usize, usize, usize) = ("10000x256x800", 10_000, 256, 800);
/// (label, boxes, dims, prototypes per class, classes)
const GKD_MATCH: (&str, usize, usize, usize, usize) = ("2048x256_80x10", 2048, 256, 10, 80);

fn devices() -> Vec<Device> {
    let mut out = vec![Device::Cpu];
    match detkd::cuda::probe() {
        Ok(dev) => out.push(Device::Cuda(dev)),
        Err(e) => eprintln!("prototype bench: CUDA skipped: {e}"),
    }
    out
}

fn features(rows: usize, d: usize, seed: u64, device: &Device) -> Tensor {
    let mut rng = Rng::new(seed);
    // Non-negative like post-ReLU pooled features.
    let data: Vec<f32> = (0..rows * d)
        .map(|_| rng.uniform(0.0, 1.0) as f32)
        .collect();
    Tensor::from_vec(data, &[rows, d])
        .unwrap()
        .to_device(device)
        .unwrap()
}

fn class_labels(rows: usize, classes: usize, seed: u64, device: &Device) -> Tensor {
    let mut rng = Rng::new(seed);
    let data: Vec<i64> = (0..rows).map(|_| rng.below(classes) as i64).collect();
    Tensor::from_vec(data, &[rows])
        .unwrap()
        .to_device(device)
        .unwrap()
}

fn prototype(c: &mut Criterion) {
    for device in devices() {
        let name = if device.is_cpu() { "cpu" } else { "cuda" };
        let mut group = c.benchmark_group(format!("prototype/{name}"));
        group.sample_size(10);

        let (label, n, d, k) = if device.is_cpu() {
            CPU_ASSIGN
        } else {
            CUDA_ASSIGN
        };
        let x = features(n, d, 1, &device);
        let p = features(k, d, 2, &device);
        // Squared distances between such features are ≈ D/6 ≈ 43: a temperature on that scale.
        let cfg = SoftAssignConfig {
            temperature: 32.0,
            ..Default::default()
        };
        group.bench_function(BenchmarkId::new("soft_assignment_forward", label), |b| {
            b.iter(|| {
                let a = soft_assignment(&x, &p, &cfg).unwrap();
                device.synchronize().unwrap();
                a
            })
        });
        let a = soft_assignment(&x, &p, &cfg).unwrap();
        let grad = features(n, k, 3, &device);
        group.bench_function(BenchmarkId::new("soft_assignment_backward", label), |b| {
            b.iter(|| {
                let g = soft_assignment_backward(&x, &p, &a, &grad, &cfg, true).unwrap();
                device.synchronize().unwrap();
                g
            })
        });
        drop((x, a, grad));

        let (label, boxes, d, per_class, classes) = GKD_MATCH;
        let match_cfg = MaxCosineConfig {
            num_classes: classes,
            ..Default::default()
        };
        let student = features(boxes, d, 4, &device);
        let teacher = features(boxes, d, 5, &device);
        let labels = class_labels(boxes, classes, 6, &device);
        let ps = features(per_class * classes, d, 7, &device);
        let pt = features(per_class * classes, d, 8, &device);
        let proto_labels: Vec<i64> = (0..per_class * classes)
            .map(|i| (i % classes) as i64)
            .collect();
        let proto_labels = Tensor::from_vec(proto_labels, &[per_class * classes])
            .unwrap()
            .to_device(&device)
            .unwrap();
        group.bench_function(BenchmarkId::new("max_cosine_match", label), |b| {
            b.iter(|| {
                let m =
                    max_cosine_match(&student, &labels, &ps, &proto_labels, &match_cfg).unwrap();
                device.synchronize().unwrap();
                m
            })
        });
        let inputs = RobustWeightInputs {
            student: &student,
            teacher: &teacher,
            labels: &labels,
            student_prototypes: &ps,
            teacher_prototypes: &pt,
            prototype_labels: &proto_labels,
        };
        group.bench_function(BenchmarkId::new("gkd_robust_weights", label), |b| {
            b.iter(|| {
                let w = gkd_robust_weights(&inputs, &match_cfg).unwrap();
                device.synchronize().unwrap();
                w
            })
        });
        group.finish();
    }
}

criterion_group!(benches, prototype);
criterion_main!(benches);
