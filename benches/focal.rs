//! Criterion bench for the `focal` op family at the shapes of shared/DESIGN.md.

fn main() {}
