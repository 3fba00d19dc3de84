// Kernels for the `focal` op family (see src/ops/focal/).
#include "common.cuh"
