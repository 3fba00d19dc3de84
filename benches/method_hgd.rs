//! The HGD engineering proposal's loss, forward and backward through `HgdDistiller::compute` (micro
//! weights, resize + 1×1 adapters on every stage, macro weights, all gradients), in f32:
//!
//! - paper size (CUDA only, when built with `--features cuda` and a device is present): ResNet-50/101
//!   stages C2–C5 of an 800×1344 input (256@200×336, 512@100×168, 1024@50×84, 2048@25×42) and the FPN's
//!   P2–P6 at 256 channels, batch 2, equal student and teacher widths (R50 ← R101), 7 boxes per image;
//! - TinyGFL size (CPU, and CUDA too): 128 px images, student stages 16–128 / FPN 32, teacher twice as
//!   wide, batch 4.
//!
//! `cargo bench --bench method_hgd -- --warm-up-time 1 --measurement-time 3`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use detkd::distill::hgd::{HgdConfig, HgdDistiller, HgdInputs};
use detkd::distill::{DetectorShape, ImageTargets};
use detkd::nn::ParamStore;
use detkd::testing::Rng;
use detkd::{Device, Tensor};

struct Shape {
    label: &'static str,
    batch: usize,
    side: (usize, usize),
    /// (stride, student width, teacher width) of every backbone stage.
    stages: Vec<(usize, usize, usize)>,
    fpn_strides: Vec<usize>,
    fpn_widths: (usize, usize),
}

fn paper() -> Shape {
    Shape {
        label: "paper_b2_r50_r101_c2c5_p2p6_800x1344",
        batch: 2,
        side: (800, 1344),
        stages: vec![
            (4, 256, 256),
            (8, 512, 512),
            (16, 1024, 1024),
            (32, 2048, 2048),
        ],
        fpn_strides: vec![4, 8, 16, 32, 64],
        fpn_widths: (256, 256),
    }
}

fn tiny(batch: usize) -> Shape {
    Shape {
        label: if batch == 4 {
            "tiny_gfl_b4_128px"
        } else {
            "tiny_gfl_b8_128px"
        },
        batch,
        side: (128, 128),
        stages: vec![(4, 16, 32), (8, 32, 64), (16, 64, 128), (32, 128, 256)],
        fpn_strides: vec![8, 16, 32],
        fpn_widths: (32, 64),
    }
}

fn uniform(rng: &mut Rng, shape: &[usize], device: &Device) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.uniform(-1.0, 1.0) as f32).collect();
    Tensor::from_vec(v, shape)
        .unwrap()
        .to_device(device)
        .unwrap()
}

fn bench(c: &mut Criterion) {
    let mut runs: Vec<(Device, Shape)> = vec![(Device::Cpu, tiny(4))];
    match detkd::cuda::probe() {
        Ok(dev) => {
            runs.push((Device::Cuda(dev.clone()), tiny(8)));
            runs.push((Device::Cuda(dev), paper()));
        }
        Err(e) => eprintln!("method_hgd bench: CUDA skipped: {e}"),
    }
    for (device, s) in runs {
        let name = if device.is_cpu() { "cpu" } else { "cuda" };
        let mut group = c.benchmark_group(format!("hgd/{name}"));
        group.sample_size(10);
        let mut rng = Rng::new(1);
        let size = |stride: usize| (s.side.0.div_ceil(stride), s.side.1.div_ceil(stride));
        let (mut student, mut teacher) = (Vec::new(), Vec::new());
        let maps = s.stages.iter().copied().chain(
            s.fpn_strides
                .iter()
                .map(|&st| (st, s.fpn_widths.0, s.fpn_widths.1)),
        );
        for (stride, cs, ct) in maps {
            let (h, w) = size(stride);
            student.push(uniform(&mut rng, &[s.batch, cs, h, w], &device));
            teacher.push(uniform(&mut rng, &[s.batch, ct, h, w], &device));
        }
        let (hh, ww) = (s.side.0 as f64, s.side.1 as f64);
        let images: Vec<ImageTargets> = (0..s.batch)
            .map(|_| {
                let mut t = ImageTargets::default();
                for _ in 0..7 {
                    let (bw, bh) = (rng.uniform(0.05, 0.5) * ww, rng.uniform(0.05, 0.5) * hh);
                    let (x, y) = (rng.uniform(0.0, ww - bw), rng.uniform(0.0, hh - bh));
                    t.boxes.push([x, y, x + bw, y + bh]);
                    t.labels.push(0);
                }
                t
            })
            .collect();
        let shape = |teacher: bool| DetectorShape {
            stage_channels: s
                .stages
                .iter()
                .map(|&(_, cs, ct)| if teacher { ct } else { cs })
                .collect(),
            fpn_channels: if teacher {
                s.fpn_widths.1
            } else {
                s.fpn_widths.0
            },
            num_classes: 80,
            reg_max: 16,
        };
        let mut store = ParamStore::new();
        let hgd = HgdDistiller::new(
            &mut store,
            &shape(false),
            &shape(true),
            s.fpn_strides.len(),
            HgdConfig::default(),
            2,
        )
        .unwrap();
        store.to_device(&device).unwrap();
        let k = s.stages.len();
        let stage_strides: Vec<f64> = s.stages.iter().map(|st| st.0 as f64).collect();
        let fpn_strides: Vec<f64> = s.fpn_strides.iter().map(|&st| st as f64).collect();
        let s_in = HgdInputs {
            stages: student[..k].iter().collect(),
            stage_strides: stage_strides.clone(),
            fpn: student[k..].iter().collect(),
            fpn_strides: fpn_strides.clone(),
        };
        let t_in = HgdInputs {
            stages: teacher[..k].iter().collect(),
            stage_strides,
            fpn: teacher[k..].iter().collect(),
            fpn_strides,
        };
        group.bench_function(BenchmarkId::new("loss_forward_backward", s.label), |b| {
            b.iter(|| {
                let out = hgd.compute(&store, &s_in, &t_in, &images).unwrap();
                device.synchronize().unwrap();
                out.loss
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
