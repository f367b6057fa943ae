//! A zone's static names while they are compiled: the records file's and the `[records]`
//! tables' owners go into one [`NodesBuilder`] (names interned, RDATA in one arena), with
//! where each was written beside it for messages; then the zone's names are laid out.

use super::compile::PolicyName;
use super::diag::{Diagnostic, FileCx};
use super::zonefile::FilePos;
use crate::model::{MAX_MESSAGE, Nodes, NodesBuilder, TooBig, wire};

/// Where a static name was written.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Written {
    /// Not as an owner (an empty non-terminal, a policy, or the apex so far).
    No,
    /// A `[records]` key, at this byte offset of the zone file.
    Toml(u32),
    /// The records file.
    File(FilePos),
    /// Both (an error): the TOML key, and the file.
    Both(u32, FilePos),
}

/// The zone's names under construction.
pub(crate) struct Statics {
    pub(crate) nodes: NodesBuilder,
    /// By node id.
    pub(crate) written: Vec<Written>,
    /// The zone outgrew the arenas (reported once).
    pub(crate) too_big: bool,
}

impl Statics {
    /// Room for about `names` names (of the length of `apex` plus a short label); the apex
    /// is node 0.
    pub(crate) fn new(apex: &[u8], names: usize) -> Statics {
        let mut s = Statics {
            nodes: NodesBuilder::with_capacity(names, apex.len() + 8),
            written: Vec::with_capacity(names),
            too_big: false,
        };
        s.insert(apex);
        s
    }

    /// Room for `names` more names of about `name_len` bytes.
    pub(crate) fn reserve(&mut self, names: usize, name_len: usize) {
        self.nodes.reserve(names, name_len);
        self.written.reserve(names);
    }

    /// The id of a name, added when new; `None` once the zone is too big.
    pub(crate) fn insert(&mut self, name: &[u8]) -> Option<u32> {
        match self.nodes.insert(name) {
            Ok((id, new)) => {
                if new {
                    self.written.push(Written::No);
                }
                Some(id)
            }
            Err(TooBig) => {
                self.too_big = true;
                None
            }
        }
    }

    /// One record of a node.
    pub(crate) fn add(&mut self, id: u32, rtype: u16, ttl: u32, rdata: &[u8]) {
        if self.nodes.add(id, rtype, ttl, rdata).is_err() {
            self.too_big = true;
        }
    }

    /// Where a static name was written, if it was: `line N` of the zone file, or
    /// `file:N` of the records file.
    pub(crate) fn written_at(
        &self,
        name: &[u8],
        cx: &FileCx<'_>,
        files: &[std::path::PathBuf],
    ) -> Option<String> {
        let id = self.nodes.find(name)?;
        match self.written[id as usize] {
            Written::No => None,
            Written::Toml(at) | Written::Both(at, _) => {
                Some(format!("line {}", cx.position(at as usize).0))
            }
            Written::File(at) => Some(describe(files, at)),
        }
    }

    /// Names written as owners (TOML or records file).
    pub(crate) fn owner_count(&self) -> usize {
        self.written
            .iter()
            .filter(|w| !matches!(w, Written::No))
            .count()
    }

    /// Add the published policies and the empty non-terminals between every name and the
    /// apex (RFC 4592 §2.2.2 needs those to tell NODATA from NXDOMAIN), then freeze.
    pub(crate) fn lay_out(
        &mut self,
        apex: &[u8],
        policies: &[PolicyName],
        cx: &mut FileCx<'_>,
    ) -> Nodes {
        for p in policies.iter().filter(|p| p.publish) {
            if let Some(owner) = &p.owner
                && let Some(id) = self.insert(owner)
            {
                self.nodes.set_policy(id, p.id);
            }
        }
        let named = self.nodes.len();
        let mut parent = Vec::with_capacity(256);
        for id in 0..named as u32 {
            parent.clear();
            parent.extend_from_slice(self.nodes.name(id));
            self.add_parents(&mut parent, apex);
        }
        if self.too_big {
            cx.err(&(0..0), TooBig.to_string());
        }
        std::mem::take(&mut self.nodes)
            .finish(apex)
            .unwrap_or_else(|e| {
                cx.err(&(0..0), e.to_string());
                Nodes::default()
            })
    }

    /// The empty non-terminals above `name` (in `buf`), up to the apex. A parent already
    /// present has its own parents too, so the walk stops there.
    fn add_parents(&mut self, buf: &mut Vec<u8>, apex: &[u8]) {
        loop {
            let Some(parent) = wire::parent(buf) else {
                return;
            };
            // Names are at or below the apex, so a parent as long as it is the apex.
            if parent.len() <= apex.len() || self.nodes.find(parent).is_some() {
                return;
            }
            let skip = buf.len() - parent.len();
            buf.drain(..skip);
            if self.insert(buf).is_none() {
                return;
            }
        }
    }
}

/// RFC 1035 §4.2.2: the RRset of type `k` at `owner` cannot go into any message.
pub(crate) fn rrset_too_big(k: &str, owner: &str, size: usize) -> String {
    format!(
        "{k} records of {owner}: the smallest answer with them is {size} bytes; a DNS message holds at most {MAX_MESSAGE} (RFC 1035 §4.2.2)"
    )
}

/// SPEC §2: a CNAME is never at the apex and never beside other data (`others`, the
/// owner's other types); the problem, if any.
pub(crate) fn cname_problem(owner: &str, at_apex: bool, others: &[String]) -> Option<String> {
    if at_apex {
        Some(format!(
            "name {owner} has a CNAME at the apex, beside the SOA"
        ))
    } else if !others.is_empty() {
        Some(format!(
            "name {owner} has a CNAME beside other data ({})",
            others.join(", ")
        ))
    } else {
        None
    }
}

/// `file:line` of a records-file position.
pub(crate) fn describe(files: &[std::path::PathBuf], at: FilePos) -> String {
    match files.get(at.file as usize) {
        Some(f) => format!("{}:{}", f.display(), at.line),
        None => format!("line {}", at.line),
    }
}

/// A problem at a records-file position.
pub(crate) fn file_err(files: &[std::path::PathBuf], at: FilePos, message: String) -> Diagnostic {
    Diagnostic {
        file: files.get(at.file as usize).cloned().unwrap_or_default(),
        line: at.line as usize,
        col: at.col as usize,
        message,
    }
}
