//! The five distillation methods (shared/spec/methods.md), GFL's own detection losses, and the vocabulary
//! they share.
//!
//! Every method is written once on the [`Tape`](crate::autograd::Tape) and used two ways:
//! - by the engine (`detkd distill`), which records student and teacher forwards on a tape and adds the
//!   methods' terms to the detection loss;
//! - by an embedding trainer, through each method's `compute` entry, which takes plain tensors (CPU or
//!   device), runs the method on a private tape and returns the loss and the gradients with respect to the
//!   student tensors (and to the method's own trainable parameters, e.g. adapters).
//!
//! Teacher tensors are always constants. Each method's config `Default` is its official setting; where the
//! official code and the paper differ, the default follows the code and the paper's variant is an option
//! (documented per method).

pub mod drkd;
pub mod dsig;
pub mod gfl;
pub mod gkd;
pub mod hgd;
pub mod ld;
#[cfg(test)]
mod test_support;

use crate::autograd::Var;

/// `[x1, y1, x2, y2]` in input-image pixels.
pub type Box4 = [f64; 4];

/// What a detector forward exposes to the methods (the student's on a tape with gradients, the teacher's as
/// constants). Levels are finest first.
#[derive(Clone, Debug)]
pub struct DetectorOutputs {
    /// Backbone stage outputs `[B, C_k, H_k, W_k]` (HGD imitates every stage).
    pub stages: Vec<Var>,
    /// Stride (pixels per cell) of every stage.
    pub stage_strides: Vec<f64>,
    /// FPN levels `[B, F, H_l, W_l]`.
    pub fpn: Vec<Var>,
    /// Stride of every FPN level.
    pub fpn_strides: Vec<f64>,
    /// Classification logits per level `[B, C, H_l, W_l]`.
    pub cls: Vec<Var>,
    /// Box-distribution logits per level `[B, 4·(reg_max + 1), H_l, W_l]` (sides l, t, r, b).
    pub reg: Vec<Var>,
}

/// The ground truth of one image, in input pixels.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImageTargets {
    /// Ground-truth boxes `[x1, y1, x2, y2]` in input pixels.
    pub boxes: Vec<Box4>,
    /// Contiguous class labels in `[0, C)`.
    pub labels: Vec<usize>,
}

/// The label assignment of a batch over the flattened anchors (index `b·A + offset_l + y·W_l + x`, levels
/// finest first), as a dense detector's assigner produces it. Plain data: computed on the host by the
/// engine (or the embedding trainer) and read by the GFL loss and LD.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DenseAssignment {
    /// Images in the batch.
    pub batch: usize,
    /// Anchors per image (`A`).
    pub anchors_per_image: usize,
    /// Per anchor of one image (`A` entries): its centre `(x, y)` in pixels.
    pub points: Vec<[f64; 2]>,
    /// Per anchor of one image: the stride of its level in pixels.
    pub strides: Vec<f64>,
    /// Per anchor of one image: its square anchor box (side `anchor_scale · stride`), for ATSS's IoUs.
    pub anchor_boxes: Vec<Box4>,
    /// Positive anchors, flattened over the batch (`b·A + a`), ascending.
    pub positives: Vec<usize>,
    /// The ground-truth box assigned to each positive, in pixels.
    pub positive_boxes: Vec<Box4>,
    /// The class label in `[0, C)` of each positive.
    pub positive_labels: Vec<usize>,
    /// Per image: its ground truth.
    pub images: Vec<ImageTargets>,
    /// Per image, per ground-truth box: the ATSS IoU threshold (mean + std of its candidates' IoUs); LD's
    /// valuable localisation region is defined relative to it.
    pub thresholds: Vec<Vec<f64>>,
}

/// One named, weighted loss term on the tape (shape `[]`), for the total and for logging.
#[derive(Clone, Copy, Debug)]
pub struct LossTerm {
    /// The term's name in logs and metrics (`loss_ld`, `loss_dsig_fg`, ...).
    pub name: &'static str,
    /// The weighted value, a shape-`[]` variable on the tape.
    pub value: Var,
}

/// Channel widths of a detector, for methods that size adapters to the student and teacher.
#[derive(Clone, Debug, PartialEq)]
pub struct DetectorShape {
    /// Channels of every backbone stage (finest first).
    pub stage_channels: Vec<usize>,
    /// FPN width.
    pub fpn_channels: usize,
    /// Classes of the head (`C`, background excluded).
    pub num_classes: usize,
    /// Largest bin of the box distributions (GFL's `reg_max`; `reg_max + 1` bins per side).
    pub reg_max: usize,
}

/// Per-step information a method may need besides the two forwards.
#[derive(Clone, Copy, Debug)]
pub struct StepContext<'a> {
    /// The student's label assignment of this batch (positives, ground truth, ATSS thresholds).
    pub assignment: &'a DenseAssignment,
    /// What the student's GFL loss computed at the positives (LD reuses `w_j` and the gathered logits).
    pub student_gfl: Option<&'a gfl::GflLossOutput>,
    /// Zero-based epoch (GKD attenuates its feature loss with `1 − epoch/E`).
    pub epoch: usize,
    /// The schedule's length in epochs (`E`).
    pub num_epochs: usize,
    /// A seed that differs every step (DRKD's random relation filter, background-box sampling).
    pub step_seed: u64,
    /// Padded input size `(H, W)` in pixels.
    pub image_size: (usize, usize),
}

/// A distillation method as the engine runs it: a set of weighted loss terms for one batch, from the
/// student forward (with gradients), the teacher forward (constants) and the step context. Methods with
/// trainable parts (adapters, relation modules) registered them in the student's [`ParamStore`] when they
/// were built, under `distill.<method>.`; `b` binds that store.
///
/// [`ParamStore`]: crate::nn::ParamStore
pub trait Distiller {
    /// Short name (`ld`, `dsig`, `gkd`, `drkd`, `hgd`), used in logs and reports.
    fn name(&self) -> &'static str;

    /// The method's weighted terms for this batch (each shape `[]`).
    fn loss(
        &self,
        b: &crate::nn::Bound,
        store: &crate::nn::ParamStore,
        student: &DetectorOutputs,
        teacher: &DetectorOutputs,
        ctx: &StepContext<'_>,
        updates: &mut crate::nn::BufferUpdates,
    ) -> crate::error::Result<Vec<LossTerm>>;

    /// Called at the start of every epoch with access to frozen student and teacher forwards over the
    /// training set (GKD rebuilds its prototypes here). The default does nothing.
    fn epoch_start(
        &mut self,
        _epoch: usize,
        _features: &mut dyn FeatureSource,
    ) -> crate::error::Result<()> {
        Ok(())
    }
}

/// One batch of frozen forwards for [`Distiller::epoch_start`]: the student's and the teacher's FPN levels
/// (finest first, `[B, C, H, W]`, on the training device) and the batch's ground truth in input pixels.
#[derive(Debug)]
pub struct SampledFeatures {
    /// The student's FPN levels, finest first, `[B, C_s, H_l, W_l]`.
    pub student_fpn: Vec<crate::Tensor>,
    /// The teacher's FPN levels, same sizes, `[B, C_t, H_l, W_l]`.
    pub teacher_fpn: Vec<crate::Tensor>,
    /// Stride of each level in input pixels.
    pub fpn_strides: Vec<f64>,
    /// The ground truth of each image of the batch.
    pub targets: Vec<ImageTargets>,
}

/// Frozen forwards over (a prefix of) the training set in a fixed order, provided by the engine.
pub trait FeatureSource {
    /// Calls `each` on consecutive batches until `max_images` images have been seen or the set ends.
    fn for_each_batch(
        &mut self,
        max_images: usize,
        each: &mut dyn FnMut(&SampledFeatures) -> crate::error::Result<()>,
    ) -> crate::error::Result<()>;
}

/// The result of a method's embedding entry (`compute`): loss values on the host, the gradients with
/// respect to every student tensor passed in (same order, same shapes, dtypes and devices) and with
/// respect to the method's own trainable parameters.
#[derive(Debug)]
pub struct MethodGradients {
    /// The total (sum of the weighted terms).
    pub loss: f64,
    /// Each weighted term by name, in the method's order.
    pub terms: Vec<(&'static str, f64)>,
    /// d loss / d student tensor, one per student input (same order, shape, dtype and device).
    pub student_grads: Vec<crate::Tensor>,
    /// d loss / d parameter for each of the method's trainable parameters (adapters, relation modules).
    pub param_grads: Vec<(crate::nn::ParamId, crate::Tensor)>,
}

/// Runs a method's terms on a private tape for the embedding entries: `student` tensors become leaves (they
/// are copied onto the tape), `teacher` tensors constants, `store` (the method's parameters, may be empty) is
/// bound for training; returns the summed loss, each term, and the gradients.
pub fn run_on_tape(
    store: &crate::nn::ParamStore,
    student: &[&crate::Tensor],
    teacher: &[&crate::Tensor],
    build: impl FnOnce(
        &crate::autograd::Tape,
        &crate::nn::Bound,
        &[Var],
        &[Var],
    ) -> crate::error::Result<Vec<LossTerm>>,
) -> crate::error::Result<MethodGradients> {
    use crate::error::Error;
    let tape = crate::autograd::Tape::new();
    let bound = store.bind(&tape);
    let s: Vec<Var> = student
        .iter()
        .map(|t| Ok(tape.leaf(t.try_clone()?)))
        .collect::<crate::error::Result<_>>()?;
    let t: Vec<Var> = teacher
        .iter()
        .map(|t| Ok(tape.constant(t.try_clone()?)))
        .collect::<crate::error::Result<_>>()?;
    let terms = build(&tape, &bound, &s, &t)?;
    let first = terms
        .first()
        .ok_or_else(|| Error::invalid("terms", "the method produced no loss term"))?;
    let mut total = first.value;
    for term in &terms[1..] {
        total = tape.add(total, term.value)?;
    }
    let mut values = Vec::with_capacity(terms.len());
    for term in &terms {
        values.push((term.name, ops_scalar(&tape, term.value)?));
    }
    let loss = ops_scalar(&tape, total)?;
    let mut grads = tape.backward(total)?;
    let student_grads = s
        .iter()
        .zip(student)
        .map(|(&v, t)| match grads.take(v) {
            Some(g) => Ok(g),
            None => crate::Tensor::zeros(t.shape(), t.dtype(), &t.device()),
        })
        .collect::<crate::error::Result<Vec<_>>>()?;
    let param_grads = bound
        .gradients(store, &mut grads)
        .into_iter()
        .filter_map(|(id, g)| g.map(|g| (id, g)))
        .collect();
    Ok(MethodGradients {
        loss,
        terms: values,
        student_grads,
        param_grads,
    })
}

fn ops_scalar(tape: &crate::autograd::Tape, v: Var) -> crate::error::Result<f64> {
    let t = tape.value(v)?;
    if t.numel() != 1 {
        return Err(crate::error::Error::shape(
            "loss term",
            "a scalar",
            t.shape(),
        ));
    }
    Ok(t.to_vec::<f64>()?[0])
}

/// Validates a student/teacher pair of FPN level lists on `tape` for a method built for `levels` levels of
/// `student_width` / `teacher_width` channels: matching counts (with `strides`, finite and > 0), student maps
/// `[B, C_s, H, W]` with `H, W ≥ 1`, teacher maps `[B, C_t, H, W]` of the same batch and size, one batch size
/// across levels. Returns the batch size.
pub(crate) fn check_fpn_pair(
    tape: &crate::autograd::Tape,
    student: &[Var],
    teacher: &[Var],
    strides: &[f64],
    levels: usize,
    (student_width, teacher_width): (usize, usize),
) -> crate::error::Result<usize> {
    use crate::error::Error;
    for (what, n) in [
        ("student_fpn", student.len()),
        ("teacher_fpn", teacher.len()),
        ("strides", strides.len()),
    ] {
        if n != levels {
            return Err(Error::invalid(
                what,
                format!(
                    "expected {levels} FPN levels (the method was built for {levels}), got {n}"
                ),
            ));
        }
    }
    if let Some(s) = strides.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
        return Err(Error::invalid(
            "strides",
            format!("must be finite and > 0, got {s}"),
        ));
    }
    let mut batch = None;
    for level in 0..levels {
        let s = tape.shape(student[level])?;
        let t = tape.shape(teacher[level])?;
        let [b, cs, h, w] = s[..] else {
            return Err(Error::shape(
                format!("student_fpn[{level}]"),
                "[B, C, H, W]",
                &s,
            ));
        };
        if cs != student_width || h == 0 || w == 0 {
            return Err(Error::shape(
                format!("student_fpn[{level}]"),
                format!("[B, {student_width}, H ≥ 1, W ≥ 1] (the student FPN width)"),
                &s,
            ));
        }
        if t != [b, teacher_width, h, w] {
            return Err(Error::shape(
                format!("teacher_fpn[{level}]"),
                format!(
                    "[{b}, {teacher_width}, {h}, {w}] (the student's batch and map size, the teacher width)"
                ),
                &t,
            ));
        }
        if *batch.get_or_insert(b) != b {
            return Err(Error::shape(
                format!("student_fpn[{level}]"),
                format!("batch {} like level 0", batch.unwrap_or(0)),
                &s,
            ));
        }
    }
    Ok(batch.unwrap_or(0))
}

/// A ground-truth box must be finite with `x1 ≤ x2` and `y1 ≤ y2`; `arg` names it in the error.
pub(crate) fn check_box(bx: &Box4, arg: &str) -> crate::error::Result<()> {
    if bx.iter().all(|v| v.is_finite()) && bx[2] >= bx[0] && bx[3] >= bx[1] {
        Ok(())
    } else {
        Err(crate::error::Error::invalid(
            arg,
            format!("expected a finite box with x1 ≤ x2 and y1 ≤ y2, got {bx:?}"),
        ))
    }
}
