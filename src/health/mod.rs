//! Health: the pure view read by the DNS path (view.rs), the rise/fall machine (state.rs),
//! one probe (probe.rs), the scheduler (prober.rs) and persisted overrides (overrides.rs).

pub mod view;

pub use view::{Health, Override, ProbeStatus, View};
