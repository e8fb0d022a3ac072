//! The gRPC contract between `cms-agent`, `cms-server` and the admin CLI,
//! generated from `proto/cms/v1/cms.proto` at build time.
//!
//! The catalog travels as its canonical JSON encoding (see `cms_roles::Catalog`)
//! inside [`v1::Catalog`], so that the agent can recompute its id and there is
//! one catalog schema, not two that could drift.

#![allow(clippy::large_enum_variant)]

/// Version 1 of the contract: package `cms.v1`.
pub mod v1 {
    tonic::include_proto!("cms.v1");
}
