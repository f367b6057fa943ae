//! Health: the pure view read by the DNS path (view.rs), the rise/fall machine (state.rs),
//! one probe (probe.rs, its HTTP/1.1 exchange in http.rs), the scheduler (prober.rs) and persisted overrides (overrides.rs).

mod http;
pub mod overrides;
pub mod probe;
pub mod prober;
pub mod state;
pub mod view;

pub use overrides::{OverrideError, OverrideStore};
pub use probe::{Clients, ProbeResult, install_crypto_provider};
pub use prober::{CheckStats, Histogram, ProbeStats, Prober, Sink};
pub use view::{Health, Override, ProbeStatus, View};
