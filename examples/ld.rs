//! LD's embedding entry on the CPU: a trainer with its own GFL detector hands detkd the per-level head
//! outputs of its student and teacher and the student's ATSS assignment, and gets LD's loss terms and the
//! gradients with respect to the student's class and box logits back.
//!
//! `cargo run --example ld`

use detkd::distill::ld::{valuable_region, HeadTensors, LdConfig, LdDistiller};
use detkd::distill::{Box4, DenseAssignment, ImageTargets};
use detkd::engine::assign::{assign_batch, AnchorLevel, AtssConfig, GFL_ANCHOR_SCALE};
use detkd::testing::Rng;
use detkd::Tensor;

const CLASSES: usize = 8;
const BINS: usize = 17;

fn main() -> detkd::Result<()> {
    // TinyGFL's head on 128×128 images: P3–P5.
    let levels = [(16, 16, 8.0), (8, 8, 16.0), (4, 4, 32.0)];
    let images: Vec<(Vec<Box4>, Vec<usize>)> = vec![
        (
            vec![[10.0, 12.0, 58.0, 70.0], [70.0, 30.0, 122.0, 90.0]],
            vec![3, 5],
        ),
        (vec![[20.0, 40.0, 44.0, 60.0]], vec![1]),
    ];
    let assign = assign(&levels, &images)?;

    // Stand-ins for the two detectors' head outputs: `[B, C, H, W]` class logits and `[B, 4·17, H, W]`
    // box-distribution logits per level, finest first.
    let mut rng = Rng::new(3);
    let mut head = |channels: usize| -> detkd::Result<Vec<Tensor>> {
        levels
            .iter()
            .map(|&(h, w, _)| {
                let v: Vec<f32> = (0..2 * channels * h * w)
                    .map(|_| (2.0 * rng.normal()) as f32)
                    .collect();
                Tensor::from_vec(v, &[2, channels, h, w])
            })
            .collect()
    };
    let (s_cls, s_reg, t_cls, t_reg) = (
        head(CLASSES)?,
        head(4 * BINS)?,
        head(CLASSES)?,
        head(4 * BINS)?,
    );
    fn refs(v: &[Tensor]) -> Vec<&Tensor> {
        v.iter().collect()
    }
    let (s_cls, s_reg, t_cls, t_reg) = (refs(&s_cls), refs(&s_reg), refs(&t_cls), refs(&t_reg));
    let student = HeadTensors {
        cls: &s_cls,
        reg: &s_reg,
    };
    let teacher = HeadTensors {
        cls: &t_cls,
        reg: &t_reg,
    };

    let region = valuable_region(&assign, &LdConfig::default())?;
    println!(
        "{} anchors per image, {} positives, {} anchors in the valuable localisation region",
        assign.anchors_per_image,
        assign.positives.len(),
        region.anchors.len()
    );
    for (name, cfg) in [
        (
            "LD repository (main KD + main LD + VLR LD)",
            LdConfig::default(),
        ),
        ("mmdetection (main LD)", LdConfig::mmdet()),
    ] {
        let out = LdDistiller::new(cfg)?.compute(&student, &teacher, &assign)?;
        println!("{name}: loss {:.5}", out.loss);
        for (term, value) in &out.terms {
            println!("  {term:12} {value:.5}");
        }
        // Gradients: cls levels, then reg levels, shaped like the inputs.
        for (i, g) in out.student_grads.iter().enumerate() {
            let norm = g.to_vec::<f64>()?.iter().map(|v| v * v).sum::<f64>().sqrt();
            let what = if i < levels.len() { "cls" } else { "reg" };
            println!(
                "  ‖∂loss/∂{what}[{}]‖ = {norm:.3e}  {:?}",
                i % levels.len(),
                g.shape()
            );
        }
    }
    Ok(())
}

/// The student's ATSS assignment in the form LD reads, from the engine's assigner (a trainer with its own
/// assigner fills [`DenseAssignment`] itself).
fn assign(
    levels: &[(usize, usize, f64)],
    images: &[(Vec<Box4>, Vec<usize>)],
) -> detkd::Result<DenseAssignment> {
    let levels: Vec<AnchorLevel> = levels
        .iter()
        .map(|&(height, width, stride)| AnchorLevel {
            height,
            width,
            stride,
        })
        .collect();
    let targets: Vec<ImageTargets> = images
        .iter()
        .map(|(boxes, labels)| ImageTargets {
            boxes: boxes.clone(),
            labels: labels.clone(),
        })
        .collect();
    assign_batch(&targets, &levels, GFL_ANCHOR_SCALE, &AtssConfig::default())
}
