//! Element types. Float storage may be f32, f16 or bf16 on either device, and f64 on the CPU (for
//! gradchecks); arithmetic on half storage always happens in f32. i64 holds labels and indices.

use half::{bf16, f16};
use std::fmt;

/// The storage type of a tensor's elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    /// 32-bit IEEE float (PyTorch's `float32`); the usual storage type, and the compute type of halves.
    F32,
    /// 64-bit IEEE float (PyTorch's `float64`); host only, for gradchecks and references.
    F64,
    /// 16-bit IEEE half (PyTorch's `float16`); storage only, computed in f32.
    F16,
    /// bfloat16 (PyTorch's `bfloat16`); storage only, computed in f32.
    BF16,
    /// Integer labels and indices (PyTorch's `long`).
    I64,
}

impl DType {
    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
        }
    }

    /// The lower-case name used in errors and in the `detkd parity` metadata.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I64 => "i64",
        }
    }

    /// Parses the names printed by [`DType::name`].
    pub fn from_name(name: &str) -> Option<DType> {
        match name {
            "f32" => Some(DType::F32),
            "f64" => Some(DType::F64),
            "f16" => Some(DType::F16),
            "bf16" => Some(DType::BF16),
            "i64" => Some(DType::I64),
            _ => None,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl DType {
    /// f32, f64, f16 or bf16.
    pub fn is_float(self) -> bool {
        self != DType::I64
    }
}

/// A Rust type that can be a tensor element.
pub trait Element: bytemuck::Pod + Copy + Send + Sync + fmt::Debug + PartialEq + 'static {
    /// The [`DType`] tag of this type.
    const DTYPE: DType;
    /// Widens to f64 (exact for every supported type except i64 beyond ±2⁵³).
    fn to_f64(self) -> f64;
    /// Converts from f64: rounds to nearest for floats, truncates toward zero (saturating) for i64.
    fn from_f64(v: f64) -> Self;
    /// Converts to f32, the compute type of half storage (rounds f64 and large i64 to nearest).
    fn to_f32(self) -> f32;
    /// Converts from f32: exact for f32/f64, rounds to nearest for halves, truncates toward zero for i64.
    fn from_f32(v: f32) -> Self;
}

impl Element for f32 {
    const DTYPE: DType = DType::F32;
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn from_f32(v: f32) -> Self {
        v
    }
}

impl Element for f64 {
    const DTYPE: DType = DType::F64;
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> Self {
        v
    }
    fn to_f32(self) -> f32 {
        self as f32
    }
    fn from_f32(v: f32) -> Self {
        v as f64
    }
}

impl Element for i64 {
    const DTYPE: DType = DType::I64;
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as i64
    }
    fn to_f32(self) -> f32 {
        self as f32
    }
    fn from_f32(v: f32) -> Self {
        v as i64
    }
}

impl Element for f16 {
    const DTYPE: DType = DType::F16;
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
    fn from_f64(v: f64) -> Self {
        f16::from_f64(v)
    }
    fn to_f32(self) -> f32 {
        self.to_f32()
    }
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
}

impl Element for bf16 {
    const DTYPE: DType = DType::BF16;
    fn to_f64(self) -> f64 {
        self.to_f64()
    }
    fn from_f64(v: f64) -> Self {
        bf16::from_f64(v)
    }
    fn to_f32(self) -> f32 {
        self.to_f32()
    }
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
}

/// A type the CPU reference kernels compute in: f32 (also for half storage) or f64 (for gradchecks).
pub trait Real: Element + num_traits::Float + std::iter::Sum + Default {}
impl Real for f32 {}
impl Real for f64 {}
