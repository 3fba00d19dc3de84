//! Box ops at GFL / ATSS / LD shapes (f32): the GIoU loss (forward, backward, fused) and distance2bbox over
//! 8 images × 20 000 anchors = 160 000 pairs (every anchor of a batch, an upper bound on GFL's positives),
//! and the pairwise IoU / DIoU of ATSS and LD's VLR: per image 20 000 anchors × 30 GT boxes, 8 images (8
//! calls per iteration). CPU always; CUDA too when built with `--features cuda` and a device is present.
//!
//! `cargo bench --bench boxes -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use detkd::ops::boxes::{
    box_diou, box_iou, distance2bbox, giou_loss, giou_loss_backward, giou_loss_fused,
    GiouLossConfig, LossWeighting, OverlapConfig,
};
use detkd::testing::Rng;
use detkd::{Device, Tensor};

const IMAGES: usize = 8;
const ANCHORS: usize = 20_000;
const GT_PER_IMAGE: usize = 30;
const PAIRS: usize = IMAGES * ANCHORS;

/// `n` boxes with centres in an 800 × 1344 image and sides of 8 … 256 px.
fn boxes(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .flat_map(|_| {
            let (cx, cy) = (rng.uniform(0.0, 1344.0), rng.uniform(0.0, 800.0));
            let (w, h) = (rng.uniform(8.0, 256.0), rng.uniform(8.0, 256.0));
            [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0].map(|v| v as f32)
        })
        .collect()
}

struct Inputs {
    pred: Tensor,
    target: Tensor,
    weight: Tensor,
    upstream: Tensor,
    points: Tensor,
    distances: Tensor,
    anchors: Vec<Tensor>,
    gt: Vec<Tensor>,
}

fn inputs(device: &Device) -> Inputs {
    let mut rng = Rng::new(1);
    let put = |v: Vec<f32>, shape: &[usize]| {
        Tensor::from_vec(v, shape)
            .unwrap()
            .to_device(device)
            .unwrap()
    };
    let pred = boxes(&mut rng, PAIRS);
    // Targets near the predictions, as for assigned positives.
    let target: Vec<f32> = pred
        .iter()
        .map(|&v| v + rng.uniform(-12.0, 12.0) as f32)
        .collect();
    let weight = (0..PAIRS).map(|_| rng.uniform(0.05, 1.0) as f32).collect();
    let points = (0..2 * PAIRS)
        .map(|_| rng.uniform(0.0, 1344.0) as f32)
        .collect();
    let distances = (0..4 * PAIRS)
        .map(|_| rng.uniform(0.0, 128.0) as f32)
        .collect();
    let anchors = (0..IMAGES)
        .map(|_| put(boxes(&mut rng, ANCHORS), &[ANCHORS, 4]))
        .collect();
    let gt = (0..IMAGES)
        .map(|_| put(boxes(&mut rng, GT_PER_IMAGE), &[GT_PER_IMAGE, 4]))
        .collect();
    Inputs {
        pred: put(pred, &[PAIRS, 4]),
        target: put(target, &[PAIRS, 4]),
        weight: put(weight, &[PAIRS]),
        upstream: put(vec![1.0], &[]),
        points: put(points, &[PAIRS, 2]),
        distances: put(distances, &[PAIRS, 4]),
        anchors,
        gt,
    }
}

fn devices() -> Vec<Device> {
    let mut out = vec![Device::Cpu];
    match detkd::cuda::probe() {
        Ok(dev) => out.push(Device::Cuda(dev)),
        Err(e) => eprintln!("boxes bench: CUDA skipped: {e}"),
    }
    out
}

fn bench_boxes(c: &mut Criterion) {
    for device in devices() {
        let name = if device.is_cpu() { "cpu" } else { "cuda" };
        let x = inputs(&device);
        let sync = || device.synchronize().unwrap();
        let cfg = GiouLossConfig::gfl();
        let weighting = LossWeighting::new(Some(&x.weight), Some(PAIRS as f64 / 4.0));

        let mut group = c.benchmark_group(format!("giou_loss_8x20000/{name}"));
        group.sample_size(10);
        group.throughput(Throughput::Elements(PAIRS as u64));
        group.bench_function("forward", |b| {
            b.iter(|| {
                giou_loss(&x.pred, &x.target, weighting, &cfg).unwrap();
                sync();
            })
        });
        group.bench_function("backward", |b| {
            b.iter(|| {
                giou_loss_backward(&x.upstream, &x.pred, &x.target, weighting, &cfg).unwrap();
                sync();
            })
        });
        group.bench_function("fused", |b| {
            b.iter(|| {
                giou_loss_fused(&x.pred, &x.target, weighting, &cfg, 1.0).unwrap();
                sync();
            })
        });
        group.bench_function("distance2bbox", |b| {
            b.iter(|| {
                distance2bbox(&x.points, &x.distances, Some((800.0, 1344.0))).unwrap();
                sync();
            })
        });
        group.finish();

        let mut group = c.benchmark_group(format!("box_overlaps_8x20000x30/{name}"));
        group.sample_size(10);
        group.throughput(Throughput::Elements(
            (IMAGES * ANCHORS * GT_PER_IMAGE) as u64,
        ));
        let ocfg = OverlapConfig::default();
        for (kind, f) in [
            (
                "iou",
                box_iou as fn(&Tensor, &Tensor, &OverlapConfig) -> detkd::Result<Tensor>,
            ),
            ("diou", box_diou),
        ] {
            group.bench_function(BenchmarkId::new("pairwise", kind), |b| {
                b.iter(|| {
                    for (anchors, gt) in x.anchors.iter().zip(&x.gt) {
                        f(anchors, gt, &ocfg).unwrap();
                    }
                    sync();
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench_boxes);
criterion_main!(benches);
