//! SigV4 (`aws-sigv4`): the headers that sign a request with a set of
//! credentials ([`signature_headers`]), and the check a test double makes
//! of a request it received ([`verify`]): it signs the request again with
//! the secret it issued for the access key the request names, at the time
//! the request names, and compares.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;

use crate::credentials::Credentials;

/// Who signs, for which service and region, when.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub region: &'a str,
    /// The signing name: `ec2`, `autoscaling`, `elasticloadbalancing`, …
    pub service: &'a str,
    pub time_unix_ms: u64,
}

/// The parts of a request a signature covers.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The full URL, `https://host[:port]/path?query`.
    pub url: &'a str,
    /// The headers to sign besides `host` and `x-amz-date` (which the
    /// signature adds), e.g. `content-type`.
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

/// The headers that sign `request` (`authorization`, `x-amz-date`, and
/// `x-amz-security-token` with a session token), to add to its own.
pub fn signature_headers(
    credentials: &Credentials,
    scope: Scope<'_>,
    request: Request<'_>,
) -> Result<Vec<(String, String)>, String> {
    let identity = aws_credential_types::Credentials::new(
        credentials.access_key_id.clone(),
        credentials.secret_access_key.clone(),
        credentials.session_token.clone(),
        None,
        "cms",
    )
    .into();
    let time = UNIX_EPOCH + Duration::from_millis(scope.time_unix_ms);
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(scope.region)
        .name(scope.service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let signable = SignableRequest::new(
        request.method,
        request.url,
        request.headers.iter().copied(),
        SignableBody::Bytes(request.body),
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

/// Why a received request's signature is refused, with the code AWS
/// answers for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("the request is not signed (no SigV4 Authorization or X-Amz-Date header)")]
    Missing,
    #[error("the Authorization header is not a SigV4 one: {0}")]
    Malformed(String),
    #[error("the access key {0} is not one this service issued")]
    UnknownAccessKey(String),
    #[error(
        "the request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method."
    )]
    Mismatch,
}

impl VerifyError {
    /// The error code AWS answers (with HTTP 403).
    pub fn code(&self) -> &'static str {
        match self {
            VerifyError::Missing => "MissingAuthenticationToken",
            VerifyError::Malformed(_) => "IncompleteSignature",
            VerifyError::UnknownAccessKey(_) => "InvalidClientTokenId",
            VerifyError::Mismatch => "SignatureDoesNotMatch",
        }
    }
}

/// What a verified signature names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub access_key_id: String,
    pub region: String,
    pub service: String,
}

/// Checks the SigV4 signature of a received request: `url` as the client
/// addressed it (`http://` + its `Host` header + the request target),
/// `headers` all of the request's, names in any case; `secret_of` gives
/// the credentials issued for an access key id.
pub fn verify(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: &[u8],
    secret_of: impl Fn(&str) -> Option<Credentials>,
) -> Result<Verified, VerifyError> {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    };
    let (Some(authorization), Some(date)) = (header("authorization"), header("x-amz-date")) else {
        return Err(VerifyError::Missing);
    };
    let malformed = || VerifyError::Malformed(authorization.to_string());
    let rest = authorization
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(malformed)?;
    let field = |name: &str| {
        rest.split(',')
            .map(str::trim)
            .find_map(|part| part.strip_prefix(name)?.strip_prefix('='))
    };
    let credential = field("Credential").ok_or_else(malformed)?;
    let signed_headers = field("SignedHeaders").ok_or_else(malformed)?;
    // KEY/DATE/REGION/SERVICE/aws4_request
    let scope: Vec<&str> = credential.split('/').collect();
    let [access_key_id, _, region, service, "aws4_request"] = scope.as_slice() else {
        return Err(malformed());
    };
    let time = parse_amz_date(date).ok_or_else(malformed)?;
    let credentials = secret_of(access_key_id)
        .ok_or_else(|| VerifyError::UnknownAccessKey(access_key_id.to_string()))?;
    // The signer adds these itself, from the time and the credentials.
    let added_by_signer = ["x-amz-date", "x-amz-security-token", "x-amz-content-sha256"];
    let signed: Vec<(&str, &str)> = signed_headers
        .split(';')
        .filter(|name| !added_by_signer.contains(name))
        .filter_map(|name| Some((name, header(name)?)))
        .collect();
    let time_unix_ms = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64);
    let expected = signature_headers(
        &Credentials {
            access_key_id: access_key_id.to_string(),
            ..credentials
        },
        Scope {
            region,
            service,
            time_unix_ms,
        },
        Request {
            method,
            url,
            headers: &signed,
            body,
        },
    )
    .map_err(|_| malformed())?;
    let matches = expected
        .iter()
        .any(|(name, value)| name.eq_ignore_ascii_case("authorization") && value == authorization);
    if !matches {
        return Err(VerifyError::Mismatch);
    }
    Ok(Verified {
        access_key_id: access_key_id.to_string(),
        region: region.to_string(),
        service: service.to_string(),
    })
}

/// The time of an `X-Amz-Date` (`20261202T183400Z`).
pub fn parse_amz_date(text: &str) -> Option<SystemTime> {
    if text.len() != 16 || text.as_bytes()[8] != b'T' || !text.ends_with('Z') {
        return None;
    }
    let number = |range: std::ops::Range<usize>| text.get(range)?.parse::<i64>().ok();
    let (year, month, day) = (number(0..4)?, number(4..6)?, number(6..8)?);
    let (hour, minute, second) = (number(9..11)?, number(11..13)?, number(13..15)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(seconds).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials(secret: &str, token: Option<&str>) -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: secret.into(),
            session_token: token.map(str::to_string),
        }
    }

    /// Signs a Query call as a client would and returns the request's
    /// headers as a server would receive them.
    fn signed_request(credentials: &Credentials, body: &str) -> Vec<(String, String)> {
        let content_type = crate::query::CONTENT_TYPE;
        let mut headers = vec![
            ("Host".to_string(), "127.0.0.1:8080".to_string()),
            ("Content-Type".to_string(), content_type.to_string()),
        ];
        headers.extend(
            signature_headers(
                credentials,
                Scope {
                    region: "eu-west-1",
                    service: "autoscaling",
                    time_unix_ms: 1_796_236_440_000,
                },
                Request {
                    method: "POST",
                    url: "http://127.0.0.1:8080/",
                    headers: &[("content-type", content_type)],
                    body: body.as_bytes(),
                },
            )
            .expect("signs"),
        );
        headers
    }

    #[test]
    fn a_signature_is_the_one_aws_documents_for_its_example_request() {
        // The GET example of the SigV4 documentation ("Examples of the
        // complete Signature Version 4 signing process"), whose signature
        // AWS publishes.
        let headers = signature_headers(
            &Credentials {
                access_key_id: "AKIDEXAMPLE".into(),
                secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
                session_token: None,
            },
            Scope {
                region: "us-east-1",
                service: "iam",
                time_unix_ms: 1_440_938_160_000,
            },
            Request {
                method: "GET",
                url: "https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08",
                headers: &[(
                    "content-type",
                    "application/x-www-form-urlencoded; charset=utf-8",
                )],
                body: b"",
            },
        )
        .expect("signs");
        let authorization = headers
            .iter()
            .find(|(name, _)| name == "authorization")
            .map(|(_, value)| value.as_str())
            .expect("an authorization header");
        assert_eq!(
            authorization,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
        assert!(
            headers
                .iter()
                .any(|(name, value)| name == "x-amz-date" && value == "20150830T123600Z")
        );
    }

    #[test]
    fn a_request_signed_with_the_issued_secret_verifies() {
        let issued = credentials("issued-secret", Some("issued-token"));
        let body = "Action=DescribeAutoScalingInstances&Version=2011-01-01";
        let headers = signed_request(&issued, body);
        let verified = verify(
            "POST",
            "http://127.0.0.1:8080/",
            &headers,
            body.as_bytes(),
            |key| (key == "AKIDEXAMPLE").then(|| issued.clone()),
        )
        .expect("verifies");
        assert_eq!(
            verified,
            Verified {
                access_key_id: "AKIDEXAMPLE".into(),
                region: "eu-west-1".into(),
                service: "autoscaling".into(),
            }
        );
    }

    #[test]
    fn a_wrong_secret_a_changed_body_or_an_unknown_key_is_refused() {
        let issued = credentials("issued-secret", None);
        let body = "Action=CompleteLifecycleAction&Version=2011-01-01";
        let check = |headers: &[(String, String)], body: &str| {
            verify(
                "POST",
                "http://127.0.0.1:8080/",
                headers,
                body.as_bytes(),
                |key| (key == "AKIDEXAMPLE").then(|| issued.clone()),
            )
        };
        let wrong = signed_request(&credentials("guessed-secret", None), body);
        assert_eq!(check(&wrong, body), Err(VerifyError::Mismatch));
        assert_eq!(VerifyError::Mismatch.code(), "SignatureDoesNotMatch");
        let good = signed_request(&issued, body);
        assert_eq!(
            check(&good, "Action=CompleteLifecycleAction&Version=2011-01-02"),
            Err(VerifyError::Mismatch)
        );
        let unknown: Vec<(String, String)> = good
            .iter()
            .map(|(name, value)| (name.clone(), value.replace("AKIDEXAMPLE", "AKIDOTHER")))
            .collect();
        assert_eq!(
            check(&unknown, body),
            Err(VerifyError::UnknownAccessKey("AKIDOTHER".into()))
        );
        assert_eq!(check(&[], body), Err(VerifyError::Missing));
    }

    #[test]
    fn amz_dates_are_read_as_utc_times() {
        assert_eq!(
            parse_amz_date("20150830T123600Z"),
            Some(UNIX_EPOCH + Duration::from_secs(1_440_938_160))
        );
        assert_eq!(parse_amz_date("2015-08-30T12:36:00Z"), None);
    }
}
