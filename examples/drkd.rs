//! DRKD through its embedding entry on the CPU: plain FPN tensors of a student and a teacher (random, at
//! TinyGFL's sizes) and the GT boxes of each image in; the loss terms, the gradients with respect to the
//! student's maps and to DRKD's own modules (GloRe units, relation modules, adapters — the teacher-side
//! ones too) and the BatchNorm running-statistics updates out. A few plain gradient steps show the loss
//! falling; the step seed redraws the random relation filters every step, as in the official code.
//!
//! `cargo run --release --example drkd`

use detkd::distill::drkd::{DrkdConfig, DrkdDistiller};
use detkd::distill::DetectorShape;
use detkd::nn::{BufferUpdates, ParamStore};
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

fn random_maps(rng: &mut Rng, batch: usize, channels: usize) -> Vec<Tensor> {
    [(16, 16), (8, 8), (4, 4)]
        .iter()
        .map(|&(h, w)| {
            let v: Vec<f32> = (0..batch * channels * h * w)
                .map(|_| rng.normal() as f32)
                .collect();
            Tensor::from_vec(v, &[batch, channels, h, w]).unwrap()
        })
        .collect()
}

fn main() -> detkd::Result<()> {
    let mut store = ParamStore::new();
    let drkd = DrkdDistiller::new(
        &mut store,
        &fpn_shape(32),
        &fpn_shape(64),
        3,
        DrkdConfig::default(),
        0,
    )?;
    println!(
        "DRKD: {} tensors, {} trainable values; GloRe mids (student, teacher) per level {:?}",
        store.len(),
        store.num_trainable_elements(),
        drkd.glore_sizes()
    );

    let mut rng = Rng::new(7);
    let mut student = random_maps(&mut rng, 2, 32);
    let teacher = random_maps(&mut rng, 2, 64);
    let boxes = vec![
        vec![[10.0, 12.0, 42.0, 50.0], [70.0, 20.0, 96.0, 36.0]],
        vec![[30.5, 60.0, 94.0, 120.0]],
    ];
    let strides = [8.0, 16.0, 32.0];
    let lr = 2.0;
    for step in 0..8 {
        let mut updates = BufferUpdates::default();
        let out = drkd.compute(
            &store,
            &student.iter().collect::<Vec<_>>(),
            &teacher.iter().collect::<Vec<_>>(),
            &strides,
            &boxes,
            step,
            &mut updates,
        )?;
        let terms: Vec<String> = out
            .terms
            .iter()
            .map(|(n, v)| format!("{n} {v:.5}"))
            .collect();
        println!("step {step}: loss {:.5} ({})", out.loss, terms.join(", "));
        for (s, g) in student.iter_mut().zip(&out.student_grads) {
            add_scaled(s, g, -lr)?;
        }
        for (id, g) in &out.param_grads {
            add_scaled(store.value_mut(*id)?, g, -lr)?;
        }
        store.apply(updates)?;
    }
    Ok(())
}
