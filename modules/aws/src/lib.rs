//! What the cms server and the cms agent both need to call AWS, without a
//! transport (each brings its own HTTP client: the server reqwest, the
//! agent `cms_modules::host::http`):
//!
//! - [`signing`]: SigV4 signatures of a request (`aws-sigv4`), and their
//!   verification, for the test doubles that stand in for AWS;
//! - [`credentials`]: one set of credentials, from the environment or from
//!   the instance role's JSON as the metadata service serves it;
//! - [`query`]: the form body of a Query-protocol call (EC2, AutoScaling,
//!   ELBv2);
//! - [`xml`]: reading AWS XML answers (an element's text, an error's
//!   `Code` and `Message`);
//! - [`retry`]: which answers are worth another attempt, and how long to
//!   wait before it.

#![forbid(unsafe_code)]

pub mod credentials;
pub mod query;
pub mod retry;
pub mod signing;
pub mod xml;

pub use credentials::Credentials;
