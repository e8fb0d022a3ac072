//! SigV4 signing of one AWS request with the server's credentials
//! (`aws-sigv4`): shared by the EC2 client (`ec2`) and the secrets client
//! (`secrets`).

use std::time::{Duration, UNIX_EPOCH};

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;

use super::credentials::Credentials;

/// The headers that sign a POST of `body` to `url` for `service` in
/// `region` at `time_unix_ms`, to add to the request's own `headers`.
pub(crate) fn signature_headers(
    credentials: Credentials,
    time_unix_ms: u64,
    region: &str,
    service: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Vec<(String, String)>, String> {
    let identity = aws_credential_types::Credentials::new(
        credentials.access_key_id,
        credentials.secret_access_key,
        credentials.session_token,
        None,
        "cms-server",
    )
    .into();
    let time = UNIX_EPOCH + Duration::from_millis(time_unix_ms);
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let signable = SignableRequest::new(
        "POST",
        url,
        headers.iter().copied(),
        SignableBody::Bytes(body),
    )
    .map_err(|e| e.to_string())?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    Ok(instructions
        .headers()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect())
}
