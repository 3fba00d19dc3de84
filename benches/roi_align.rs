//! RoIAlign at the shapes of shared/DESIGN.md: 2 images, 256 channels, FPN P2–P5 of an 800×1344 input,
//! 1024 RoIs, 7×7, sampling 2 and adaptive, aligned; DRKD's 3×3 on ~40 GT boxes at P2; and a small shape for
//! latency. CPU always; CUDA too when built with `--features cuda` and a device is present.
//!
//! `cargo bench --bench roi_align -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use detkd::ops::roi_align::{
    roi_align, roi_align_backward, roi_align_multilevel, roi_align_multilevel_backward, FpnLevels,
    LevelRule, RoiAlignConfig,
};
use detkd::testing::Rng;
use detkd::{DType, Device, Tensor};

const IMAGE: (f64, f64) = (800.0, 1344.0);
const BATCH: usize = 2;
const CHANNELS: usize = 256;

/// Boxes with log-uniform sizes from 16 to 800 px inside the image, spread over the batch.
fn random_rois(count: usize, seed: u64) -> Tensor {
    let mut rng = Rng::new(seed);
    let mut rois = Vec::with_capacity(count * 5);
    for _ in 0..count {
        let size = (rng.uniform(16f64.ln(), 800f64.ln())).exp();
        let aspect = rng.uniform(0.5, 2.0);
        let (w, h) = (
            (size * aspect.sqrt()).min(IMAGE.1),
            (size / aspect.sqrt()).min(IMAGE.0),
        );
        let x1 = rng.uniform(0.0, IMAGE.1 - w);
        let y1 = rng.uniform(0.0, IMAGE.0 - h);
        rois.extend([rng.below(BATCH) as f64, x1, y1, x1 + w, y1 + h]);
    }
    Tensor::from_vec(rois, &[count, 5])
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}

fn fpn_levels(device: &Device) -> Vec<Tensor> {
    let mut rng = Rng::new(1);
    [(200, 336), (100, 168), (50, 84), (25, 42)]
        .iter()
        .map(|&(h, w)| {
            let n = BATCH * CHANNELS * h * w;
            let data: Vec<f32> = (0..n).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
            Tensor::from_vec(data, &[BATCH, CHANNELS, h, w])
                .unwrap()
                .to_device(device)
                .unwrap()
        })
        .collect()
}

fn devices() -> Vec<Device> {
    let mut out = vec![Device::Cpu];
    match detkd::cuda::probe() {
        Ok(dev) => out.push(Device::Cuda(dev)),
        Err(e) => eprintln!("roi_align bench: CUDA skipped: {e}"),
    }
    out
}

fn multilevel(c: &mut Criterion) {
    let rois = random_rois(1024, 7);
    let levels = FpnLevels::p2_p5(LevelRule::Detectron2);
    for device in devices() {
        let name = if device.is_cpu() { "cpu" } else { "cuda" };
        let features = fpn_levels(&device);
        let refs: Vec<&Tensor> = features.iter().collect();
        let shapes: Vec<&[usize]> = features.iter().map(|f| f.shape()).collect();
        let mut group = c.benchmark_group(format!("roi_align_fpn_1024x256x7x7/{name}"));
        group.sample_size(10);
        for (label, sampling_ratio) in [("sampling2", 2), ("adaptive", 0)] {
            let cfg = RoiAlignConfig {
                sampling_ratio,
                ..RoiAlignConfig::default()
            };
            group.bench_function(BenchmarkId::new("forward", label), |b| {
                b.iter(|| {
                    let out = roi_align_multilevel(&refs, &rois, &levels, &cfg).unwrap();
                    device.synchronize().unwrap();
                    out
                })
            });
            let grad_out = roi_align_multilevel(&refs, &rois, &levels, &cfg).unwrap();
            for deterministic in [false, true] {
                if deterministic && device.is_cpu() {
                    continue; // the CPU path is always deterministic
                }
                let cfg = RoiAlignConfig {
                    deterministic,
                    ..cfg.clone()
                };
                let id = if deterministic {
                    "backward_deterministic"
                } else {
                    "backward"
                };
                group.bench_function(BenchmarkId::new(id, label), |b| {
                    b.iter(|| {
                        let grads =
                            roi_align_multilevel_backward(&grad_out, &rois, &shapes, &levels, &cfg)
                                .unwrap();
                        device.synchronize().unwrap();
                        grads
                    })
                });
            }
        }
        group.finish();
    }
}

fn single_level(c: &mut Criterion) {
    // DRKD's instance relation: 3x3, adaptive, unaligned, on GT boxes at P2; plus a latency-sized call.
    let cases = [
        (
            "drkd_p2_gt40x256x3x3",
            random_rois(40, 11),
            RoiAlignConfig::torchvision((3, 3)),
            0.25,
            [BATCH, CHANNELS, 200, 336],
        ),
        (
            "small_16x64x7x7",
            random_rois(16, 12),
            RoiAlignConfig::default(),
            0.0625,
            [BATCH, 64, 50, 84],
        ),
    ];
    for device in devices() {
        let name = if device.is_cpu() { "cpu" } else { "cuda" };
        let mut group = c.benchmark_group(format!("roi_align_single/{name}"));
        group.sample_size(20);
        for (label, rois, cfg, scale, shape) in &cases {
            let n: usize = shape.iter().product();
            let mut rng = Rng::new(3);
            let data: Vec<f32> = (0..n).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
            let features = Tensor::from_vec(data, shape)
                .unwrap()
                .to_device(&device)
                .unwrap();
            group.bench_function(BenchmarkId::new("forward", label), |b| {
                b.iter(|| {
                    let out = roi_align(&features, rois, *scale, cfg).unwrap();
                    device.synchronize().unwrap();
                    out
                })
            });
            let grad_out = roi_align(&features, rois, *scale, cfg).unwrap();
            group.bench_function(BenchmarkId::new("backward", label), |b| {
                b.iter(|| {
                    let g = roi_align_backward(&grad_out, rois, shape, *scale, cfg).unwrap();
                    device.synchronize().unwrap();
                    g
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, single_level, multilevel);
criterion_main!(benches);
