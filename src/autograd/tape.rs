//! A small reverse-mode tape: every op appends a node holding its output and a closure that maps the
//! output's gradient to its inputs' gradients; [`Tape::backward`] walks the nodes in reverse and accumulates.
//!
//! Design choices, and why:
//!
//! - **Explicit tape, `Copy` handles.** A [`Var`] is an index into one [`Tape`]; ops are methods on the tape
//!   (`tape.matmul(a, b, ..)`), so no reference counting leaks into user code and a `Var` from another tape is
//!   an error, not a silent mix-up.
//! - **Nodes are appended in topological order** (an op's inputs exist before it runs), so backward is a
//!   single reverse sweep; no graph search, no recursion.
//! - **Values are `Rc<Tensor>`.** Backward closures keep what they need by cloning the `Rc` (no copies), and a
//!   parameter store can hand its `Rc` to [`Tape::leaf`] every step and get exclusive access back
//!   (`Rc::get_mut`) for the optimizer update once the tape is dropped.
//! - **Constants carry no gradient.** Teacher tensors, targets and masks enter through [`Tape::constant`];
//!   an op whose inputs are all constants records no backward at all (so a teacher forward on a tape keeps
//!   no saved state beyond its outputs).
//! - **Backward is re-runnable.** Closures are `Fn`; calling [`Tape::backward_with`] several times (as the
//!   gradcheck does) gives the same gradients.
//!
//! The ops themselves live next to this file, one file per group ([`super::ops`]).

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Maps the gradient of a node's output to the gradients of its inputs, in input order (`None` for an input
/// that gets none: a constant, or a non-differentiable argument such as boxes).
pub type BackwardFn = dyn Fn(&Tensor) -> Result<Vec<Option<Tensor>>>;

/// A value recorded on a [`Tape`]. Cheap to copy; valid only with the tape that made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Var {
    index: usize,
    tape: u64,
}

impl Var {
    /// Position on the tape (nodes are numbered in creation order).
    pub fn index(self) -> usize {
        self.index
    }
}

struct Node {
    op: &'static str,
    value: Rc<Tensor>,
    requires_grad: bool,
    parents: Vec<usize>,
    backward: Option<Box<BackwardFn>>,
}

/// The tape. Not `Send`: one tape belongs to one training step on one thread (ops themselves may use
/// threads or a CUDA stream internally).
pub struct Tape {
    id: u64,
    nodes: RefCell<Vec<Node>>,
}

impl Default for Tape {
    fn default() -> Self {
        Tape::new()
    }
}

impl std::fmt::Debug for Tape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tape")
            .field("id", &self.id)
            .field("nodes", &self.nodes.borrow().len())
            .finish()
    }
}

impl Tape {
    /// An empty tape with a fresh identity, so [`Var`]s from any other tape are rejected by its ops.
    pub fn new() -> Tape {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Tape {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            nodes: RefCell::new(Vec::new()),
        }
    }

    /// Number of recorded values.
    pub fn len(&self) -> usize {
        self.nodes.borrow().len()
    }

    /// Whether nothing has been recorded yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A differentiable input: a parameter or a student tensor whose gradient is wanted.
    pub fn leaf(&self, value: impl Into<Rc<Tensor>>) -> Var {
        self.push("leaf", value.into(), true, Vec::new(), None)
    }

    /// A constant: no gradient flows into it (teacher features, targets, masks, weights).
    pub fn constant(&self, value: impl Into<Rc<Tensor>>) -> Var {
        self.push("constant", value.into(), false, Vec::new(), None)
    }

    /// The same value as `v`, cut off from the graph (PyTorch's `detach`); shares the tensor, no copy.
    pub fn detach(&self, v: Var) -> Result<Var> {
        let value = self.value(v)?;
        Ok(self.push("detach", value, false, Vec::new(), None))
    }

    /// The tensor behind `v` (shared, not copied).
    pub fn value(&self, v: Var) -> Result<Rc<Tensor>> {
        self.check(v, "var")?;
        Ok(self.nodes.borrow()[v.index].value.clone())
    }

    /// The shape of `v`'s value.
    pub fn shape(&self, v: Var) -> Result<Vec<usize>> {
        Ok(self.value(v)?.shape().to_vec())
    }

    /// Whether a gradient can flow into `v` (it is a leaf or depends on one).
    pub fn requires_grad(&self, v: Var) -> Result<bool> {
        self.check(v, "var")?;
        Ok(self.nodes.borrow()[v.index].requires_grad)
    }

    /// Whether any of `inputs` requires a gradient: ops use it to skip saving state for a backward that
    /// will never run.
    pub fn any_requires_grad(&self, inputs: &[Var]) -> Result<bool> {
        let nodes = self.nodes.borrow();
        for (i, v) in inputs.iter().enumerate() {
            self.check_in(&nodes, *v, &format!("input {i}"))?;
        }
        Ok(inputs.iter().any(|v| nodes[v.index].requires_grad))
    }

    /// Records a custom op: `output` was computed from `inputs`, and `backward` maps the gradient of
    /// `output` to one optional gradient per input (each shaped like that input). If no input requires a
    /// gradient the closure is dropped and the output is a constant. This is how every op in
    /// [`super::ops`] is written, and how an embedding trainer adds its own.
    pub fn record(
        &self,
        op: &'static str,
        inputs: &[Var],
        output: impl Into<Rc<Tensor>>,
        backward: impl Fn(&Tensor) -> Result<Vec<Option<Tensor>>> + 'static,
    ) -> Result<Var> {
        let requires_grad = self.any_requires_grad(inputs)?;
        let parents = inputs.iter().map(|v| v.index).collect();
        let backward: Option<Box<BackwardFn>> = if requires_grad {
            Some(Box::new(backward))
        } else {
            None
        };
        Ok(self.push(op, output.into(), requires_grad, parents, backward))
    }

    /// Records an op whose output needs no gradient (indices, masks, assigner results computed from
    /// recorded values). Equivalent to [`Tape::constant`], named for readability at call sites.
    pub fn record_constant(&self, op: &'static str, output: Tensor) -> Var {
        self.push(op, Rc::new(output), false, Vec::new(), None)
    }

    /// Gradients of the one-element `loss` (shape `[]`, `[1]`, ...) with respect to every value that requires one.
    pub fn backward(&self, loss: Var) -> Result<Gradients> {
        let value = self.value(loss)?;
        if value.numel() != 1 {
            return Err(Error::shape(
                "loss",
                "a single element ([], [1], [1, 1], ...); use backward_with for other outputs",
                value.shape(),
            ));
        }
        let seed =
            crate::ops::elementwise::full(value.shape(), 1.0, value.dtype(), &value.device())?;
        self.backward_with(loss, seed)
    }

    /// Vector-Jacobian product: gradients of `⟨output, grad⟩` with respect to every value that requires one.
    /// `grad` must have `output`'s shape, dtype and device.
    pub fn backward_with(&self, output: Var, grad: Tensor) -> Result<Gradients> {
        self.check(output, "output")?;
        let nodes = self.nodes.borrow();
        let out = &nodes[output.index];
        check_grad(out, &grad, "grad", output.index)?;
        let mut grads: Vec<Option<Tensor>> = (0..nodes.len()).map(|_| None).collect();
        if !out.requires_grad {
            return Ok(Gradients {
                tape: self.id,
                grads,
            });
        }
        grads[output.index] = Some(grad);
        for index in (0..=output.index).rev() {
            let node = &nodes[index];
            let Some(backward) = &node.backward else {
                continue;
            };
            let Some(grad) = grads[index].take() else {
                continue;
            };
            let parent_grads = backward(&grad).map_err(|e| in_backward(node.op, index, e))?;
            if parent_grads.len() != node.parents.len() {
                return Err(Error::invalid(
                    node.op,
                    format!(
                        "backward of node {index} returned {} gradients for {} inputs",
                        parent_grads.len(),
                        node.parents.len()
                    ),
                ));
            }
            for (&parent, g) in node.parents.iter().zip(parent_grads) {
                let (Some(g), true) = (g, nodes[parent].requires_grad) else {
                    continue;
                };
                check_grad(&nodes[parent], &g, node.op, parent)?;
                match &mut grads[parent] {
                    Some(acc) => crate::ops::elementwise::add_scaled(acc, &g, 1.0)?,
                    slot @ None => *slot = Some(g),
                }
            }
        }
        Ok(Gradients {
            tape: self.id,
            grads,
        })
    }

    fn push(
        &self,
        op: &'static str,
        value: Rc<Tensor>,
        requires_grad: bool,
        parents: Vec<usize>,
        backward: Option<Box<BackwardFn>>,
    ) -> Var {
        let mut nodes = self.nodes.borrow_mut();
        nodes.push(Node {
            op,
            value,
            requires_grad,
            parents,
            backward,
        });
        Var {
            index: nodes.len() - 1,
            tape: self.id,
        }
    }

    fn check(&self, v: Var, arg: &str) -> Result<()> {
        self.check_in(&self.nodes.borrow(), v, arg)
    }

    fn check_in(&self, nodes: &[Node], v: Var, arg: &str) -> Result<()> {
        if v.tape != self.id {
            return Err(Error::invalid(
                arg,
                format!(
                    "belongs to tape {} but was used on tape {}",
                    v.tape, self.id
                ),
            ));
        }
        if v.index >= nodes.len() {
            return Err(Error::invalid(
                arg,
                format!("node {} does not exist on this tape", v.index),
            ));
        }
        Ok(())
    }
}

fn in_backward(op: &str, index: usize, e: Error) -> Error {
    Error::invalid(op, format!("backward of node {index} failed: {e}"))
}

/// A gradient must match its value's shape, dtype and device: a mismatch is a bug in an op's backward and
/// must not be accumulated into a wrong-sized buffer.
fn check_grad(node: &Node, grad: &Tensor, op: &str, index: usize) -> Result<()> {
    let v = &node.value;
    if grad.shape() != v.shape() {
        return Err(Error::shape(
            op,
            format!("a gradient shaped {:?} like node {index}", v.shape()),
            grad.shape(),
        ));
    }
    if grad.dtype() != v.dtype() {
        return Err(Error::DType {
            arg: op.into(),
            expected: format!("{} (the dtype of node {index})", v.dtype()),
            got: grad.dtype().to_string(),
        });
    }
    if grad.device() != v.device() {
        return Err(Error::Device {
            arg: op.into(),
            expected: v.device().to_string(),
            got: grad.device().to_string(),
        });
    }
    Ok(())
}

/// The result of a backward pass: one optional gradient per value on the tape.
#[derive(Debug)]
pub struct Gradients {
    tape: u64,
    grads: Vec<Option<Tensor>>,
}

impl Gradients {
    /// The gradient of leaf `v`, or `None` when no gradient reached it (it does not influence the output,
    /// or it is a constant). Interior values' gradients are freed during the sweep.
    pub fn get(&self, v: Var) -> Option<&Tensor> {
        if v.tape != self.tape {
            return None;
        }
        self.grads.get(v.index).and_then(Option::as_ref)
    }

    /// Takes the gradient of `v` out (no copy).
    pub fn take(&mut self, v: Var) -> Option<Tensor> {
        if v.tape != self.tape {
            return None;
        }
        self.grads.get_mut(v.index).and_then(Option::take)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::autograd::{tape_gradcheck, GradcheckOptions};

    fn t(v: Vec<f64>, shape: &[usize]) -> Tensor {
        Tensor::from_vec(v, shape).unwrap()
    }

    #[test]
    fn gradients_accumulate_over_every_use() {
        // y = sum(x·xᵀ) uses x twice; dy/dx = 2·(column sums broadcast) = (1ᵀx + ...) — checked numerically.
        let x = t(vec![0.3, -1.2, 0.7, 2.0, 0.1, -0.4], &[2, 3]);
        let report = tape_gradcheck(
            |tape, leaves, _| tape.matmul(leaves[0], leaves[0], false, true),
            &[x],
            &[],
            &GradcheckOptions::default(),
        )
        .unwrap();
        assert_eq!(report.inputs, 6);
        assert!(report.nonzero_entries > 0);
    }

    #[test]
    fn constants_and_detached_values_get_no_gradient() {
        let tape = Tape::new();
        let a = tape.leaf(t(vec![1.0, 2.0], &[1, 2]));
        let b = tape.constant(t(vec![3.0, 4.0], &[2, 1]));
        let a_detached = tape.detach(a).unwrap();
        let y = tape.matmul(a, b, false, false).unwrap();
        let z = tape.matmul(a_detached, b, false, false).unwrap();
        assert!(tape.requires_grad(y).unwrap());
        assert!(!tape.requires_grad(z).unwrap());
        let grads = tape.backward(y).unwrap();
        assert_eq!(
            grads.get(a).unwrap().to_vec::<f64>().unwrap(),
            vec![3.0, 4.0]
        );
        assert!(grads.get(b).is_none());
        assert!(grads.get(a_detached).is_none());
        // Backward from a value that needs no gradient is not an error: there is nothing to compute.
        let none = tape.backward(z).unwrap();
        assert!(none.get(a).is_none());
    }

    #[test]
    fn backward_is_repeatable_and_shares_parameters() {
        let param = Rc::new(t(vec![0.5, -0.25], &[2, 1]));
        let tape = Tape::new();
        let w = tape.leaf(param.clone());
        let x = tape.constant(t(vec![1.0, 2.0, 3.0, 4.0], &[2, 2]));
        let y = tape.matmul(x, w, false, false).unwrap();
        let g = || t(vec![1.0, -1.0], &[2, 1]);
        let first = tape.backward_with(y, g()).unwrap();
        let second = tape.backward_with(y, g()).unwrap();
        let (g1, g2) = (first.get(w).unwrap(), second.get(w).unwrap());
        assert_eq!(g1.to_vec::<f64>().unwrap(), vec![-2.0, -2.0]);
        assert_eq!(g1.to_vec::<f64>().unwrap(), g2.to_vec::<f64>().unwrap());
        // The tape holds the only other reference; once it is gone the optimizer can update in place.
        let mut param = param;
        assert!(Rc::get_mut(&mut param).is_none());
        drop((first, second, tape));
        assert!(Rc::get_mut(&mut param).is_some());
    }

    #[test]
    fn misuse_is_an_error() {
        let tape = Tape::new();
        let other = Tape::new();
        let a = tape.leaf(t(vec![1.0, 2.0], &[1, 2]));
        let foreign = other.leaf(t(vec![1.0], &[1, 1]));
        let e = tape
            .matmul(a, foreign, false, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("belongs to tape"), "{e}");
        // Non-scalar loss.
        let e = tape.backward(a).unwrap_err().to_string();
        assert!(e.contains("a single element"), "{e}");
        // Upstream gradient of the wrong shape or dtype.
        let e = tape
            .backward_with(a, t(vec![1.0], &[1]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("[1, 2]"), "{e}");
        let e = tape
            .backward_with(a, Tensor::from_vec(vec![1.0f32, 1.0], &[1, 2]).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("dtype"), "{e}");
    }

    #[test]
    fn a_wrong_backward_is_caught_not_accumulated() {
        let tape = Tape::new();
        let a = tape.leaf(t(vec![1.0, 2.0], &[2]));
        let bad_shape = tape
            .record("bad_shape", &[a], t(vec![3.0], &[]), |_| {
                Ok(vec![Some(t(vec![1.0, 2.0, 3.0], &[3]))])
            })
            .unwrap();
        let e = tape.backward(bad_shape).unwrap_err().to_string();
        assert!(e.contains("bad_shape") && e.contains("[2]"), "{e}");
        let bad_count = tape
            .record("bad_count", &[a], t(vec![3.0], &[]), |_| Ok(vec![]))
            .unwrap();
        let e = tape.backward(bad_count).unwrap_err().to_string();
        assert!(e.contains("returned 0 gradients for 1 inputs"), "{e}");
        let failing = tape
            .record("failing", &[a], t(vec![3.0], &[]), |_| {
                Err(Error::invalid("x", "boom"))
            })
            .unwrap();
        let e = tape.backward(failing).unwrap_err().to_string();
        assert!(e.contains("failing") && e.contains("boom"), "{e}");
    }
}
