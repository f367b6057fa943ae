//! The decision trace behind `meridian explain` and `/v1/explain`. On the DNS path the
//! walker is given [`NoTrace`], whose `ON = false` lets the compiler drop every trace call
//! and the formatting behind it.

use std::time::SystemTime;

/// Receives the steps of a decision.
pub trait Trace {
    /// False for the DNS path: no step is even formatted.
    const ON: bool;
    fn step(&mut self, depth: usize, kind: &'static str, text: String);
    /// The time against which "4s ago" is written.
    fn now(&self) -> SystemTime;
}

/// The DNS path's trace: nothing.
pub struct NoTrace;

impl Trace for NoTrace {
    const ON: bool = false;
    fn step(&mut self, _: usize, _: &'static str, _: String) {}
    fn now(&self) -> SystemTime {
        SystemTime::UNIX_EPOCH
    }
}

/// One line of the trace; `depth` indents nested policies.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Step {
    pub depth: usize,
    pub kind: &'static str,
    pub text: String,
}

/// Records every step, for explain.
pub struct Recorder {
    pub steps: Vec<Step>,
    pub now: SystemTime,
}

impl Recorder {
    pub fn new(now: SystemTime) -> Self {
        Recorder {
            steps: Vec::new(),
            now,
        }
    }
}

impl Trace for Recorder {
    const ON: bool = true;
    fn step(&mut self, depth: usize, kind: &'static str, text: String) {
        self.steps.push(Step { depth, kind, text });
    }
    fn now(&self) -> SystemTime {
        self.now
    }
}
