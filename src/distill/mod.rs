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

pub mod gfl;

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
    /// Per anchor of one image: its centre in pixels, its stride and its (square) anchor box.
    pub points: Vec<[f64; 2]>,
    pub strides: Vec<f64>,
    pub anchor_boxes: Vec<Box4>,
    /// Positive anchors (flattened over the batch), ascending, and for each its box and label.
    pub positives: Vec<usize>,
    pub positive_boxes: Vec<Box4>,
    pub positive_labels: Vec<usize>,
    /// Per image: the ground truth and each box's ATSS IoU threshold (LD's VLR is relative to it).
    pub images: Vec<ImageTargets>,
    pub thresholds: Vec<Vec<f64>>,
}

/// One named, weighted loss term on the tape (shape `[]`), for the total and for logging.
#[derive(Clone, Copy, Debug)]
pub struct LossTerm {
    pub name: &'static str,
    pub value: Var,
}
