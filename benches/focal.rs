//! Focal losses at the shape of shared/DESIGN.md: 8 images × 20 000 anchors × 80 classes (12.8 M logits,
//! f32), ~1/8 of the anchors positive. Forward (`mean`), backward (scalar upstream) and the fused
//! loss+gradient entry of the torchvision form (float targets), the mmcv form (labels) and QFL (labels +
//! IoU scores). CPU always; CUDA too when built with `--features cuda` and a device is present.
//!
//! `cargo bench --bench focal -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use detkd::ops::focal::{
    quality_focal_loss, quality_focal_loss_backward, quality_focal_loss_fused, sigmoid_focal_loss,
    sigmoid_focal_loss_backward, sigmoid_focal_loss_fused, sigmoid_focal_loss_mmcv,
    sigmoid_focal_loss_mmcv_backward, sigmoid_focal_loss_mmcv_fused, MmcvFocalConfig,
    QualityFocalConfig, Reduction, SigmoidFocalConfig,
};
use detkd::testing::Rng;
use detkd::{Device, Tensor};

const ANCHORS: usize = 8 * 20_000;
const CLASSES: usize = 80;

struct Inputs {
    logits: Tensor,
    targets: Tensor,
    labels: Tensor,
    scores: Tensor,
    upstream: Tensor,
}

fn inputs(device: &Device) -> Inputs {
    let mut rng = Rng::new(1);
    let n = ANCHORS * CLASSES;
    // Mostly confident negatives, as a trained detector's logits are.
    let logits: Vec<f32> = (0..n).map(|_| (2.0 * rng.normal() - 4.0) as f32).collect();
    let labels: Vec<i64> = (0..ANCHORS)
        .map(|_| {
            if rng.below(8) == 0 {
                rng.below(CLASSES) as i64
            } else {
                CLASSES as i64
            }
        })
        .collect();
    let scores: Vec<f32> = labels
        .iter()
        .map(|&l| {
            if (l as usize) < CLASSES {
                rng.uniform(0.1, 0.95) as f32
            } else {
                0.0
            }
        })
        .collect();
    let mut targets = vec![0.0f32; n];
    for (row, &l) in labels.iter().enumerate() {
        if (l as usize) < CLASSES {
            targets[row * CLASSES + l as usize] = 1.0;
        }
    }
    let put = |t: Tensor| t.to_device(device).unwrap();
    Inputs {
        logits: put(Tensor::from_vec(logits, &[ANCHORS, CLASSES]).unwrap()),
        targets: put(Tensor::from_vec(targets, &[ANCHORS, CLASSES]).unwrap()),
        labels: put(Tensor::from_vec(labels, &[ANCHORS]).unwrap()),
        scores: put(Tensor::from_vec(scores, &[ANCHORS]).unwrap()),
        upstream: put(Tensor::from_vec(vec![1.0f32], &[]).unwrap()),
    }
}

fn devices() -> Vec<Device> {
    let mut out = vec![Device::Cpu];
    match detkd::cuda::probe() {
        Ok(dev) => out.push(Device::Cuda(dev)),
        Err(e) => eprintln!("focal bench: CUDA skipped: {e}"),
    }
    out
}

fn focal(c: &mut Criterion) {
    for device in devices() {
        let name = if device.is_cpu() { "cpu" } else { "cuda" };
        let x = inputs(&device);
        let mut group = c.benchmark_group(format!("focal_8x20000x80/{name}"));
        group.sample_size(10);
        group.throughput(Throughput::Elements((ANCHORS * CLASSES) as u64));
        let sync = || device.synchronize().unwrap();
        let mut bench = |form: &str, job: &str, f: &mut dyn FnMut()| {
            group.bench_function(BenchmarkId::new(job, form), |b| {
                b.iter(|| {
                    f();
                    sync();
                })
            });
        };

        let tv = SigmoidFocalConfig {
            reduction: Reduction::Mean,
            ..Default::default()
        };
        bench("torchvision", "forward", &mut || {
            sigmoid_focal_loss(&x.logits, &x.targets, &tv).unwrap();
        });
        bench("torchvision", "backward", &mut || {
            sigmoid_focal_loss_backward(&x.upstream, &x.logits, &x.targets, &tv).unwrap();
        });
        bench("torchvision", "fused", &mut || {
            sigmoid_focal_loss_fused(&x.logits, &x.targets, &tv, 1.0).unwrap();
        });

        let mm = MmcvFocalConfig::default();
        bench("mmcv", "forward", &mut || {
            sigmoid_focal_loss_mmcv(&x.logits, &x.labels, None, &mm).unwrap();
        });
        bench("mmcv", "backward", &mut || {
            sigmoid_focal_loss_mmcv_backward(&x.upstream, &x.logits, &x.labels, None, &mm).unwrap();
        });
        bench("mmcv", "fused", &mut || {
            sigmoid_focal_loss_mmcv_fused(&x.logits, &x.labels, None, &mm, 1.0).unwrap();
        });

        let q = QualityFocalConfig::default();
        bench("qfl", "forward", &mut || {
            quality_focal_loss(&x.logits, &x.labels, &x.scores, None, &q).unwrap();
        });
        bench("qfl", "backward", &mut || {
            quality_focal_loss_backward(&x.upstream, &x.logits, &x.labels, &x.scores, None, &q)
                .unwrap();
        });
        bench("qfl", "fused", &mut || {
            quality_focal_loss_fused(&x.logits, &x.labels, &x.scores, None, &q, 1.0).unwrap();
        });
        group.finish();
    }
}

criterion_group!(benches, focal);
criterion_main!(benches);
