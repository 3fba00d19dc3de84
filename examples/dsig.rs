//! Dsig through its embedding entry on the CPU, as a trainer built on another framework would call it:
//! plain FPN tensors of a student and a teacher (here random, at TinyGFL's sizes), the GT boxes of each
//! image, and back the loss terms and the gradients with respect to the student's maps and to Dsig's own
//! adapters. A few plain gradient steps on the student maps and the adapters show the loss falling.
//!
//! `cargo run --release --example dsig`

use detkd::distill::dsig::{DsigConfig, DsigDistiller};
use detkd::distill::{DetectorShape, ImageTargets};
use detkd::nn::ParamStore;
use detkd::ops::elementwise::add_scaled;
use detkd::testing::Rng;
use detkd::Tensor;

fn fpn_shape(width: usize) -> DetectorShape {
    DetectorShape {
        stage_channels: vec![width / 2, width, 2 * width, 4 * width],
        fpn_channels: width,
        num_classes: 8,
        reg_max: 16,
    }
}

fn random_maps(rng: &mut Rng, batch: usize, channels: usize, shift: f64) -> Vec<Tensor> {
    [(16, 16), (8, 8), (4, 4)]
        .iter()
        .map(|&(h, w)| {
            let v: Vec<f32> = (0..batch * channels * h * w)
                .map(|_| (rng.normal() + shift) as f32)
                .collect();
            Tensor::from_vec(v, &[batch, channels, h, w]).unwrap()
        })
        .collect()
}

fn main() -> detkd::Result<()> {
    // The method's parameters (the 32 → 64 adapters) live in their own store here; a trainer that owns
    // the student's store would register them there instead.
    let mut store = ParamStore::new();
    let dsig = DsigDistiller::new(
        &mut store,
        &fpn_shape(32),
        &fpn_shape(64),
        3,
        DsigConfig::default(),
        0,
    )?;
    println!(
        "Dsig: {} adapter tensors, {} trainable values",
        store.len(),
        store.num_trainable_elements()
    );

    let mut rng = Rng::new(7);
    let mut student = random_maps(&mut rng, 2, 32, 0.0);
    let teacher = random_maps(&mut rng, 2, 64, 0.0);
    let teacher_cls = random_maps(&mut rng, 2, 8, -2.0);
    let targets = vec![
        ImageTargets {
            boxes: vec![[10.0, 12.0, 42.0, 50.0], [70.0, 20.0, 96.0, 36.0]],
            labels: vec![0, 3],
        },
        ImageTargets {
            boxes: vec![[30.5, 60.0, 94.0, 120.0]],
            labels: vec![5],
        },
    ];
    let strides = [8.0, 16.0, 32.0];
    let lr = 0.5;
    for step in 0..8 {
        // New background boxes every step, seeded by the step.
        let nodes = dsig.sample_nodes(&targets, (128, 128), step);
        let mined =
            dsig.mine_background(&teacher_cls.iter().collect::<Vec<_>>(), &strides, &nodes)?;
        let out = dsig.compute(
            &store,
            &student.iter().collect::<Vec<_>>(),
            &teacher.iter().collect::<Vec<_>>(),
            &teacher_cls.iter().collect::<Vec<_>>(),
            &strides,
            &nodes,
        )?;
        let terms: Vec<String> = out
            .terms
            .iter()
            .map(|(n, v)| format!("{n} {v:.4}"))
            .collect();
        println!(
            "step {step}: loss {:.4} ({}); bg nodes {:?}, mined {:?}",
            out.loss,
            terms.join(", "),
            nodes.iter().map(|n| n.background.len()).collect::<Vec<_>>(),
            mined.iter().map(Vec::len).collect::<Vec<_>>()
        );
        for (s, g) in student.iter_mut().zip(&out.student_grads) {
            add_scaled(s, g, -lr)?;
        }
        for (id, g) in &out.param_grads {
            add_scaled(store.value_mut(*id)?, g, -lr)?;
        }
    }
    Ok(())
}
