//! End-to-end checks of the training engine: a detector overfits one batch; one full training step agrees
//! between CUDA and the CPU; checkpoints round-trip.

use detkd::engine::data::{Dataset, SyntheticConfig, SyntheticShapes};
use detkd::engine::model::TinyGflConfig;
use detkd::engine::optim::OptimizerConfig;
use detkd::engine::train::{evaluate, train, Detector, EvalConfig, TrainConfig};
use detkd::ops::optim::AdamWConfig;
use detkd::testing::assert_close;
use detkd::Device;

fn tiny_model(num_classes: usize) -> TinyGflConfig {
    TinyGflConfig {
        num_classes,
        stem_channels: 8,
        stage_channels: [8, 16, 16, 16],
        stage_depths: [0, 1, 0, 0],
        fpn_channels: 16,
        head_convs: 1,
        head_channels: 16,
        reg_max: 16,
        channels_per_group: 8,
    }
}

fn tiny_data(len: usize) -> SyntheticShapes {
    let cfg = SyntheticConfig {
        height: 64,
        width: 64,
        objects_per_image: (1, 3),
        min_object_size: 12.0,
        ..SyntheticConfig::default()
    };
    SyntheticShapes::new(cfg, 7, len).unwrap()
}

fn overfit_config(steps: usize, batch: usize) -> TrainConfig {
    TrainConfig {
        epochs: steps,
        batch_size: batch,
        optimizer: OptimizerConfig::AdamW(AdamWConfig {
            lr: 4e-3,
            weight_decay: 0.0,
            ..Default::default()
        }),
        warmup_iters: 5,
        grad_clip: Some(10.0),
        flip_probability: 0.0,
        ..TrainConfig::default()
    }
}

/// One batch of 4 images, seen 150 times. GFL's total loss has a floor: DFL is a cross-entropy against a
/// target spread over two bins, so it cannot go below the entropy of the interpolation weights (≈ 0.1 here).
/// The ≥ 10× criterion is therefore applied to the GIoU term, which can reach 0, and the fit is confirmed by
/// the detections: AP50 on the memorised images.
#[test]
fn overfits_one_batch() {
    let data = tiny_data(4);
    let mut detector = Detector::new(&tiny_model(data.num_classes()), 1).unwrap();
    let mut totals = Vec::new();
    let mut giou = Vec::new();
    train(
        &mut detector,
        &data,
        &overfit_config(150, 4),
        &Device::Cpu,
        None,
        &mut |r| {
            totals.push(r.loss);
            let g = r.terms.iter().find(|(n, _)| n == "loss_bbox").map(|t| t.1);
            giou.push(g.unwrap_or(f64::NAN));
            Ok(())
        },
    )
    .unwrap();
    let tail = |v: &[f64]| v[v.len() - 5..].iter().sum::<f64>() / 5.0;
    let (g0, g1) = (giou[0], tail(&giou));
    assert!(
        g1 * 10.0 <= g0,
        "GIoU loss fell from {g0:.4} to {g1:.4}, less than 10×"
    );
    let (t0, t1) = (totals[0], tail(&totals));
    assert!(
        t1 * 4.0 <= t0,
        "total loss fell from {t0:.4} to {t1:.4}, less than 4×"
    );
    let (stats, _) = evaluate(&detector, &data, &EvalConfig::default(), &Device::Cpu).unwrap();
    assert!(
        stats.ap50 > 0.6,
        "AP50 on the memorised batch is only {:.3}",
        stats.ap50
    );
}

#[test]
fn a_training_step_on_cuda_matches_the_cpu() {
    let Some(dev) = detkd::cuda::gpu_for_test("a_training_step_on_cuda_matches_the_cpu") else {
        return;
    };
    let data = tiny_data(4);
    let cfg = overfit_config(1, 4);
    let run = |device: &Device| {
        let mut d = Detector::new(&tiny_model(data.num_classes()), 3).unwrap();
        let mut loss = 0.0;
        train(&mut d, &data, &cfg, device, None, &mut |r| {
            loss = r.loss;
            Ok(())
        })
        .unwrap();
        d.to_device(&Device::Cpu).unwrap();
        let params: Vec<Vec<f64>> = d
            .store
            .ids()
            .map(|id| d.store.value(id).to_vec::<f64>().unwrap())
            .collect();
        (loss, params)
    };
    let (cpu_loss, cpu_params) = run(&Device::Cpu);
    let (gpu_loss, gpu_params) = run(&Device::Cuda(dev));
    assert_close("loss", &[gpu_loss], &[cpu_loss], 1e-4);
    for (k, (g, c)) in gpu_params.iter().zip(&cpu_params).enumerate() {
        assert_close(&format!("parameter {k} after one step"), g, c, 1e-4);
    }
}

#[test]
fn checkpoints_round_trip_with_their_architecture() {
    let data = tiny_data(2);
    let d = Detector::new(&tiny_model(data.num_classes()), 5).unwrap();
    let dir = std::env::temp_dir().join(format!("detkd-engine-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ckpt.safetensors");
    let meta = detkd::engine::jobs::checkpoint_metadata(&d.model.cfg, data.class_names()).unwrap();
    d.save(&path, &meta).unwrap();
    let back = detkd::engine::jobs::load_checkpoint(&path).unwrap();
    assert_eq!(back.model.cfg, d.model.cfg);
    for id in d.store.ids() {
        assert_eq!(
            back.store.value(id).to_vec::<f32>().unwrap(),
            d.store.value(id).to_vec::<f32>().unwrap(),
            "{}",
            d.store.name(id)
        );
    }
    // A file without the architecture is rejected with a clear message.
    let bare = dir.join("bare.safetensors");
    d.store.save(&bare, &Default::default()).unwrap();
    let e = detkd::engine::jobs::load_checkpoint(&bare)
        .unwrap_err()
        .to_string();
    assert!(e.contains("detkd.model"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn cached_teacher_outputs_match_a_direct_forward() {
    use detkd::autograd::Tape;
    use detkd::engine::data::{DataLoader, LoaderConfig, Transform};
    use detkd::engine::teacher_cache::TeacherCache;
    let data = tiny_data(6);
    let teacher = Detector::new(&tiny_model(data.num_classes()), 11).unwrap();
    let loader = DataLoader::new(
        &data,
        LoaderConfig {
            batch_size: 3,
            shuffle: true,
            drop_last: true,
            seed: 4,
        },
        Transform {
            flip_probability: 0.5,
            ..Transform::default()
        },
    )
    .unwrap();
    let mut cache = TeacherCache::new(1 << 30);
    for epoch in 0..3 {
        for batch in loader.epoch(epoch) {
            let batch = batch.unwrap();
            let tape = Tape::new();
            let x = tape.constant(batch.images.try_clone().unwrap());
            let direct = teacher
                .model
                .forward(&teacher.store.bind_frozen(&tape), x)
                .unwrap();
            let cached = cache
                .outputs(&teacher, &batch, &batch.images, &tape)
                .unwrap();
            for (a, b) in [
                (&direct.stages, &cached.stages),
                (&direct.fpn, &cached.fpn),
                (&direct.cls, &cached.cls),
                (&direct.reg, &cached.reg),
            ] {
                assert_eq!(a.len(), b.len());
                for (&va, &vb) in a.iter().zip(b) {
                    let (ta, tb) = (tape.value(va).unwrap(), tape.value(vb).unwrap());
                    assert_eq!(ta.shape(), tb.shape());
                    assert_close(
                        "cached teacher output",
                        &tb.to_vec::<f64>().unwrap(),
                        &ta.to_vec::<f64>().unwrap(),
                        1e-5,
                    );
                }
            }
        }
    }
    // 3 epochs × 6 images, at most 12 distinct (image, flip) pairs computed.
    assert!(
        cache.misses <= 12 && cache.hits + cache.misses == 18,
        "{} {}",
        cache.hits,
        cache.misses
    );
}
