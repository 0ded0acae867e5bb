//! Automated canary analysis: judge each canary stage's traffic per interval, step its weight
//! up while it stays within bounds, roll it back to 0 when it does not.
//!
//! ```text
//!  proxies ──stats reports──► Sessions inbox ──► totals ──► Lease per replica (peers.rs)
//!                                   │                              │
//!                                   ▼                              ▼ (leader: growth of others)
//!  local metrics (standalone) ──► Analyzer (a machine per stage, injectable clock) ◄── sync ── snapshot
//!                                   │
//!                                   ▼
//!          decisions ──► status.stages[].canary + Events (leader) ──► compile reads the weight
//! ```
//! The spec is never written: the effective weight lives in `status.stages[].canary` (or, in
//! standalone mode, in the process), and compile turns it into the snapshot's weight.

pub mod analyzer;
pub mod clock;
pub mod evidence;
pub mod leader;
pub mod machine;
pub mod peers;

pub use analyzer::{Analyzer, StageId};
pub use clock::{Clock, ManualClock, SystemClock};
pub use machine::{CanaryState, Decision, Window};
