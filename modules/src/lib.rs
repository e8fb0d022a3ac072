//! Resource providers that run on an instance: each one checks what differs
//! from the catalog and applies only that.
//!
//! The providers arrive with the agent issue; this crate holds the boundary
//! they will sit behind so the workspace layout is settled from the start.
