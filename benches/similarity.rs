//! Criterion bench for the `similarity` op family at the shapes of shared/DESIGN.md.

fn main() {}
