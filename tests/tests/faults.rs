//! Fault-injection scenarios (slow): filled in with the harness.
