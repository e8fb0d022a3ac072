//! A small IMDSv2 client: a session token from `PUT /latest/api/token`,
//! then GETs that carry it, over plain HTTP/1.1 to a link-local address
//! (`cms_modules::host::http`). Tag discovery (`tags`) reads the tags, the
//! instance id and the identity document with it; the AWS client (`aws`)
//! the instance id, the region and the instance role's credentials.
//!
//! Every client has a budget: its requests together give up when it is
//! spent, so a slow or absent service never holds boot (or a converge)
//! longer than that.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cms_modules::Host;
use cms_modules::host::http::HttpRequest;

/// The EC2 instance metadata service.
pub const EC2_METADATA_ENDPOINT: &str = cms_aws::credentials::INSTANCE_METADATA_ENDPOINT;

/// Answers longer than this are refused: metadata values are small.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// A client of the metadata service at `host:port`, with a budget.
#[derive(Debug)]
pub(crate) struct MetadataClient {
    endpoint: String,
    /// How long one request may take.
    timeout: Duration,
    /// When all requests give up.
    deadline: Instant,
    budget: Duration,
}

/// One answer of the metadata service.
#[derive(Debug)]
pub(crate) struct MetadataResponse {
    pub status: u16,
    pub body: String,
}

impl MetadataClient {
    /// A client whose requests each take at most `timeout`, and together
    /// at most `budget` from now.
    pub(crate) fn new(endpoint: String, timeout: Duration, budget: Duration) -> MetadataClient {
        MetadataClient {
            endpoint,
            timeout,
            deadline: crate::clock::instant() + budget,
            budget,
        }
    }

    /// `host:port` of the service.
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A session token for the GETs.
    pub(crate) fn token(&self) -> anyhow::Result<String> {
        let response = self.request(
            "PUT",
            "/latest/api/token",
            &[("X-aws-ec2-metadata-token-ttl-seconds", "300")],
        )?;
        if response.status != 200 || response.body.trim().is_empty() {
            bail!(
                "the instance metadata service refused a session token (status {})",
                response.status
            );
        }
        Ok(response.body.trim().to_string())
    }

    pub(crate) fn get(&self, token: &str, path: &str) -> anyhow::Result<MetadataResponse> {
        self.request("GET", path, &[("X-aws-ec2-metadata-token", token)])
    }

    /// The body of a 200 answer to `GET path`, trimmed; any other status,
    /// or an empty body, is an error naming the path.
    pub(crate) fn value(&self, token: &str, path: &str) -> anyhow::Result<String> {
        let response = self.get(token, path)?;
        let value = response.body.trim();
        if response.status != 200 || value.is_empty() {
            bail!(
                "the instance metadata service at {} answered {} for {path}",
                self.endpoint,
                response.status
            );
        }
        Ok(value.to_string())
    }

    /// One request, retried once: the service can be slow to answer right
    /// after boot, and one retry costs at most one more timeout.
    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<MetadataResponse> {
        match self.request_once(method, path, headers) {
            Ok(response) => Ok(response),
            Err(_) => self.request_once(method, path, headers).with_context(|| {
                format!(
                    "Failed to reach the instance metadata service at {} ({method} {path})",
                    self.endpoint
                )
            }),
        }
    }

    fn request_once(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<MetadataResponse> {
        let left = self
            .deadline
            .saturating_duration_since(crate::clock::instant());
        if left.is_zero() {
            bail!(
                "gave up on the instance metadata service after {} ms ({method} {path})",
                self.budget.as_millis()
            );
        }
        let url = format!("http://{}{path}", self.endpoint);
        let response = Host::system().http_request(&HttpRequest {
            method,
            url: &url,
            headers,
            body: &[],
            timeout: self.timeout.min(left),
            max_body_bytes: MAX_ANSWER_BYTES,
        })?;
        Ok(MetadataResponse {
            status: response.status,
            body: response.text(),
        })
    }
}
