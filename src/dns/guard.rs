//! The last line of defence on the DNS path: a panic while answering one query becomes a
//! SERVFAIL for that query, one log line naming the query, and a count in
//! `meridian_panics_total`; the worker goes on with the next query.
//!
//! `check` rejects every shape the answer path relies on, so this should never fire; it is
//! here because "should" is not enough for a server on the open Internet. On the normal path
//! it costs two thread-local writes and no allocation (`catch_unwind` is free until a panic).
//! A UDP worker guards a whole batch at once ([`batch`]) and, after a panic, answers the
//! query in hand with [`servfail`] and guards the rest of the batch again: the same outcome
//! per query, without a guard's call boundary on every query.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::net::IpAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;

use super::handler::{Local, Response};
use super::response::{self, rcode};
use super::rrl::Class;
use super::wire;
use crate::model::rtype;

thread_local! {
    /// Set while this thread answers a query under [`guarded`]: the panic hook then leaves
    /// its message here for the query's one log line instead of printing its own.
    static GUARDED: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Install (once per process) the panic hook that keeps guarded panics to one log line;
/// every other panic goes to the hook that was there before.
pub fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !GUARDED.with(Cell::get) {
                return previous(info);
            }
            let at = info
                .location()
                .map(|l| format!(" at {}:{}:{}", l.file(), l.line(), l.column()))
                .unwrap_or_default();
            let text = format!("{}{at}", payload_text(info.payload()));
            LAST_PANIC.with(|p| *p.borrow_mut() = Some(text));
        }));
    });
}

/// Run `answer` (which writes a reply to `packet` into `out`); if it panics, answer SERVFAIL
/// instead. Returns what `out` holds, `None` when nothing is to be sent.
#[inline]
pub fn guarded(
    packet: &[u8],
    src: &IpAddr,
    out: &mut Vec<u8>,
    local: &mut Local,
    answer: impl FnOnce(&mut Vec<u8>, &mut Local) -> Option<Response>,
) -> Option<Response> {
    let mut sent = None;
    match batch(|| sent = answer(&mut *out, &mut *local)) {
        Ok(()) => sent,
        Err(payload) => servfail(packet, src, out, local, payload.as_ref()),
    }
}

/// Run `work` (one query, or a batch's queries one after the other) under the guard; on a
/// panic, the payload, for the caller to answer the query in hand with [`servfail`].
#[inline]
pub fn batch(work: impl FnOnce()) -> Result<(), Box<dyn Any + Send>> {
    GUARDED.with(|g| g.set(true));
    let result = catch_unwind(AssertUnwindSafe(work));
    GUARDED.with(|g| g.set(false));
    result
}

/// After a panic: count it, log it with the query, and SERVFAIL the query when it parses.
pub fn servfail(
    packet: &[u8],
    src: &IpAddr,
    out: &mut Vec<u8>,
    local: &mut Local,
    payload: &(dyn Any + Send),
) -> Option<Response> {
    let detail = LAST_PANIC
        .with(|p| p.borrow_mut().take())
        .unwrap_or_else(|| payload_text(payload));
    local.stats.panic();
    // The parser is what the fuzzer hammers hardest, but it too is kept from unwinding.
    let written = catch_unwind(AssertUnwindSafe(|| {
        let q = wire::parse(packet, &mut local.qname).ok()?;
        let what = (crate::model::wire::to_text(q.qname), rtype::name(q.qtype));
        response::error(out, &q, u16::from(rcode::SERVFAIL));
        Some((what, Response::to(&q, Class::Error(None))))
    }));
    match written {
        Ok(Some(((qname, qtype), reply))) => {
            tracing::error!(client = %src, %qname, %qtype, "panic while answering, sent SERVFAIL: {detail}");
            Some(reply)
        }
        _ => {
            tracing::error!(client = %src, "panic while answering, nothing sent: {detail}");
            None
        }
    }
}

fn payload_text(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}
