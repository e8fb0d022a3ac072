//! Message sizes both sides configure, so that nothing the server accepts
//! is something an agent cannot receive, and no report is too large to
//! deliver.
//!
//! The catalog itself is bounded where it is made (`cms_roles`'
//! `MAX_CATALOG_BYTES`, 8 MiB, checked at validation); file contents over
//! `INLINE_CONTENT_MAX` travel apart, by `GetContent` in chunks of
//! [`CONTENT_CHUNK_BYTES`].

/// One `GetContent` chunk: 1 MiB.
pub const CONTENT_CHUNK_BYTES: usize = 1024 * 1024;

/// The largest message the server sends to an agent and an agent accepts
/// from it: a catalog of at most 8 MiB plus its envelope, with room to
/// spare.
pub const MAX_AGENT_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// The largest encoded `RunReport` the server stores. The agent trims its
/// reports to fit (diffs first, each with a note saying so).
pub const MAX_REPORT_BYTES: usize = 2 * 1024 * 1024;

/// The largest request the server decodes (a report of at most
/// [`MAX_REPORT_BYTES`], facts, a CSR). A larger one is refused by the
/// gRPC layer with OUT_OF_RANGE before it is read whole.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// The largest message the admin API sends and its CLI accepts: a page of
/// reports (10 by default, each at most [`MAX_REPORT_BYTES`]).
pub const MAX_ADMIN_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
