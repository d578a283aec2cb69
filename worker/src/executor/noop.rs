//! The `noop` executor: reports success without running anything. For measuring shoal's own
//! overhead (benchmarks); `auto` never picks it.

use super::{StepOutcome, StepRun};

pub fn run(_step: &StepRun<'_>) -> StepOutcome {
    StepOutcome::default()
}
