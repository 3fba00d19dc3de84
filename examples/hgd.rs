//! The HGD engineering proposal (not the paper's method; see `detkd::distill::hgd`) through its
//! embedding API, on the CPU: a TinyGFL teacher and student (random weights) on random 128 px images,
//! every backbone stage and FPN level imitated; prints the loss, the per-stage losses with their macro
//! weights, and the gradient norms, with the micro and macro re-weighting on and off.
//!
//! `cargo run --release --example hgd`

use detkd::autograd::Tape;
use detkd::distill::hgd::{macro_weights, HgdConfig, HgdDistiller, HgdInputs};
use detkd::distill::{DetectorShape, ImageTargets};
use detkd::engine::model::{TinyGfl, TinyGflConfig};
use detkd::nn::ParamStore;
use detkd::testing::Rng;
use detkd::Tensor;

fn shape(cfg: &TinyGflConfig) -> DetectorShape {
    DetectorShape {
        stage_channels: cfg.stage_channels.to_vec(),
        fpn_channels: cfg.fpn_channels,
        num_classes: cfg.num_classes,
        reg_max: cfg.reg_max,
    }
}

/// A model's backbone stages and FPN levels as plain tensors (no gradient).
fn forward(
    model: &TinyGfl,
    store: &ParamStore,
    images: &Tensor,
) -> detkd::Result<(Vec<Tensor>, Vec<Tensor>)> {
    let tape = Tape::new();
    let b = store.bind_frozen(&tape);
    let out = model.forward(&b, tape.constant(images.try_clone()?))?;
    let values = |v: &[detkd::autograd::Var]| -> detkd::Result<Vec<Tensor>> {
        v.iter().map(|&x| tape.value(x)?.try_clone()).collect()
    };
    Ok((values(&out.stages)?, values(&out.fpn)?))
}

fn main() -> detkd::Result<()> {
    let mut rng = Rng::new(0);
    let (t_cfg, s_cfg) = (TinyGflConfig::teacher(4), TinyGflConfig::student(4));
    let (mut t_store, mut s_store) = (ParamStore::new(), ParamStore::new());
    let teacher = TinyGfl::new(&mut t_store, &t_cfg, 1)?;
    let student = TinyGfl::new(&mut s_store, &s_cfg, 2)?;
    let images = Tensor::from_vec(
        rng.normal_vec(2 * 3 * 128 * 128)
            .into_iter()
            .map(|v| v as f32)
            .collect::<Vec<_>>(),
        &[2, 3, 128, 128],
    )?;
    let targets = vec![
        ImageTargets {
            boxes: vec![[10.0, 12.0, 50.0, 70.0], [80.0, 90.0, 96.0, 104.0]],
            labels: vec![0, 2],
        },
        ImageTargets {
            boxes: vec![[30.0, 5.0, 94.0, 60.0]],
            labels: vec![1],
        },
    ];
    let (s_stages, s_fpn) = forward(&student, &s_store, &images)?;
    let (t_stages, t_fpn) = forward(&teacher, &t_store, &images)?;
    let student_in = HgdInputs {
        stages: s_stages.iter().collect(),
        stage_strides: TinyGflConfig::STAGE_STRIDES.to_vec(),
        fpn: s_fpn.iter().collect(),
        fpn_strides: TinyGflConfig::FPN_STRIDES.to_vec(),
    };
    let teacher_in = HgdInputs {
        stages: t_stages.iter().collect(),
        stage_strides: TinyGflConfig::STAGE_STRIDES.to_vec(),
        fpn: t_fpn.iter().collect(),
        fpn_strides: TinyGflConfig::FPN_STRIDES.to_vec(),
    };
    for (micro, macro_) in [(true, true), (false, true), (true, false), (false, false)] {
        let cfg = HgdConfig {
            micro_weighting: micro,
            macro_weighting: macro_,
            ..HgdConfig::default()
        };
        // Adapters distill.hgd.adapter.0..6 (C2–C5, P3–P5) in the student's store (a fresh copy per run
        // here, so the four settings start from the same adapters).
        let mut store = ParamStore::new();
        let hgd = HgdDistiller::new(&mut store, &shape(&s_cfg), &shape(&t_cfg), 3, cfg, 3)?;
        let (out, stats) = hgd.compute_with_stats(&store, &student_in, &teacher_in, &targets)?;
        println!(
            "micro {micro:5} macro {macro_:5}: loss_hgd_proposal {:.5}",
            out.loss
        );
        println!("  L_k (C2..C5, P3..P5): {:.3?}", stats.losses);
        println!("  λ_k:                  {:.3?}", stats.macro_weights);
        let norms: Vec<String> = out
            .student_grads
            .iter()
            .map(|g| {
                let n = g
                    .to_vec::<f64>()
                    .unwrap()
                    .iter()
                    .map(|v| v * v)
                    .sum::<f64>()
                    .sqrt();
                format!("{n:.2e}")
            })
            .collect();
        println!("  |grad| per stage (C2..C5, P3..P5): {}", norms.join(" "));
    }
    println!(
        "macro weights of losses [1, 2, 3]: {:?}",
        macro_weights(&[1.0, 2.0, 3.0], true)
    );
    Ok(())
}
