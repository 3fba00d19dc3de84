//! The `focal` op family (work in progress).
