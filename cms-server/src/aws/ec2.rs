//! The two EC2 API calls attestation makes, `DescribeTags` (filtered by
//! resource id) and `DescribeInstances` (one instance id): the Query API
//! over HTTPS, each request signed with SigV4 (`aws-sigv4`) with the
//! server's credentials, a timeout per request and a few retries on
//! throttling, server errors and failed connections.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use cms_aws::retry::{ATTEMPTS, REQUEST_TIMEOUT};
use cms_aws::xml::walk;

use super::credentials::CredentialsSource;
use crate::clock::SharedClock;

/// The API version of the Query requests.
const API_VERSION: &str = "2016-11-15";

/// An EC2 API client for any region.
#[derive(Debug)]
pub struct Ec2Client {
    /// Base URL for every region, or `None` for `https://ec2.REGION.amazonaws.com`.
    endpoint: Option<String>,
    credentials: CredentialsSource,
    /// Made on first use, on a blocking thread: reqwest's blocking client
    /// may not be built inside the async runtime.
    http: OnceLock<reqwest::blocking::Client>,
    clock: SharedClock,
}

#[derive(Debug, thiserror::Error)]
pub enum Ec2Error {
    #[error("{0}")]
    Credentials(String),
    #[error("Failed to sign the request: {0}")]
    Sign(String),
    #[error("Failed to reach {url} after {ATTEMPTS} attempts: {message}")]
    Unreachable { url: String, message: String },
    #[error("{url} answered {status}: {code}: {message}")]
    Refused {
        url: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("Failed to read the answer of {url}: {message}")]
    Malformed { url: String, message: String },
    #[error("EC2 does not know instance {instance_id}")]
    UnknownInstance { instance_id: String },
}

impl Ec2Client {
    pub fn new(
        endpoint: Option<String>,
        credentials: CredentialsSource,
        clock: SharedClock,
    ) -> Ec2Client {
        Ec2Client {
            endpoint: endpoint.map(|e| e.trim_end_matches('/').to_string()),
            credentials,
            http: OnceLock::new(),
            clock,
        }
    }

    fn http(&self) -> Result<&reqwest::blocking::Client, Ec2Error> {
        if let Some(http) = self.http.get() {
            return Ok(http);
        }
        let http = reqwest::blocking::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| Ec2Error::Unreachable {
                url: "the EC2 API".into(),
                message: format!("Failed to make an HTTP client: {e}"),
            })?;
        let _ = self.http.set(http);
        Ok(self.http.get().expect("set just now"))
    }

    /// Every tag of the instance, as EC2 holds them.
    pub fn instance_tags(
        &self,
        region: &str,
        instance_id: &str,
    ) -> Result<BTreeMap<String, String>, Ec2Error> {
        let mut tags = BTreeMap::new();
        let mut next_token: Option<String> = None;
        loop {
            let mut parameters = vec![
                ("Filter.1.Name", "resource-id"),
                ("Filter.1.Value.1", instance_id),
            ];
            if let Some(token) = &next_token {
                parameters.push(("NextToken", token.as_str()));
            }
            let (url, body) = self.call(region, "DescribeTags", &parameters)?;
            let page = parse_tags(&body, instance_id).map_err(|message| Ec2Error::Malformed {
                url: url.clone(),
                message,
            })?;
            tags.extend(page.tags);
            match page.next_token {
                Some(token) if !token.is_empty() => next_token = Some(token),
                _ => return Ok(tags),
            }
        }
    }

    /// The instance's state name (`running`, `stopped`, …).
    pub fn instance_state(&self, region: &str, instance_id: &str) -> Result<String, Ec2Error> {
        let (url, body) = self.call(
            region,
            "DescribeInstances",
            &[("InstanceId.1", instance_id)],
        )?;
        parse_state(&body)
            .map_err(|message| Ec2Error::Malformed { url, message })?
            .ok_or_else(|| Ec2Error::UnknownInstance {
                instance_id: instance_id.to_string(),
            })
    }

    /// One signed POST, retried; the URL and the body of a 200 answer.
    fn call(
        &self,
        region: &str,
        action: &str,
        parameters: &[(&str, &str)],
    ) -> Result<(String, String), Ec2Error> {
        let url = match &self.endpoint {
            Some(endpoint) => format!("{endpoint}/"),
            None => format!("https://ec2.{region}.amazonaws.com/"),
        };
        let body = cms_aws::query::form_body(action, API_VERSION, parameters);
        let mut last_error = String::new();
        for attempt in 0..ATTEMPTS {
            std::thread::sleep(cms_aws::retry::backoff(attempt));
            let request = self.signed(&url, region, &body)?;
            match request.send() {
                Ok(response) => {
                    let status = response.status().as_u16();
                    let text = response.text().unwrap_or_default();
                    if status == 200 {
                        return Ok((url, text));
                    }
                    let (code, message) = cms_aws::xml::error_of(&text);
                    if !cms_aws::retry::is_retryable(status, &code) {
                        return Err(Ec2Error::Refused {
                            url,
                            status,
                            code,
                            message,
                        });
                    }
                    last_error = format!("{status}: {code}: {message}");
                }
                Err(error) => last_error = error.to_string(),
            }
        }
        Err(Ec2Error::Unreachable {
            url,
            message: last_error,
        })
    }

    fn signed(
        &self,
        url: &str,
        region: &str,
        body: &str,
    ) -> Result<reqwest::blocking::RequestBuilder, Ec2Error> {
        let credentials = self
            .credentials
            .credentials(self.http()?, &self.clock)
            .map_err(|e| Ec2Error::Credentials(format!("{e:#}")))?;
        let content_type = cms_aws::query::CONTENT_TYPE;
        let signature = cms_aws::signing::signature_headers(
            &credentials,
            cms_aws::signing::Scope {
                region,
                service: "ec2",
                time_unix_ms: self.clock.now_unix_ms(),
            },
            cms_aws::signing::Request {
                method: "POST",
                url,
                headers: &[("content-type", content_type)],
                body: body.as_bytes(),
            },
        )
        .map_err(Ec2Error::Sign)?;
        let mut request = self
            .http()?
            .post(url)
            .header("content-type", content_type)
            .body(body.to_string());
        for (name, value) in signature {
            request = request.header(name, value);
        }
        Ok(request)
    }
}

struct TagsPage {
    tags: BTreeMap<String, String>,
    next_token: Option<String>,
}

fn parse_tags(xml: &str, instance_id: &str) -> Result<TagsPage, String> {
    let mut tags = BTreeMap::new();
    let mut next_token = None;
    let (mut resource, mut key, mut value) = (String::new(), None::<String>, String::new());
    walk(xml, |path, text| {
        let names: Vec<&str> = path.iter().map(String::as_str).collect();
        match names.as_slice() {
            [_, "tagSet", "item", "resourceId"] => resource = text.to_string(),
            [_, "tagSet", "item", "key"] => key = Some(text.to_string()),
            [_, "tagSet", "item", "value"] => value = text.to_string(),
            [_, "tagSet", "item"] => {
                if let Some(key) = key.take()
                    && resource == instance_id
                {
                    tags.insert(key, std::mem::take(&mut value));
                }
                resource.clear();
                value.clear();
            }
            [_, "nextToken"] => next_token = Some(text.to_string()),
            _ => {}
        }
    })?;
    Ok(TagsPage { tags, next_token })
}

fn parse_state(xml: &str) -> Result<Option<String>, String> {
    let mut state = None;
    walk(xml, |path, text| {
        if path.len() >= 2
            && path[path.len() - 2] == "instanceState"
            && path[path.len() - 1] == "name"
        {
            state = Some(text.to_string());
        }
    })?;
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_read_from_a_describe_tags_answer_with_escapes_and_empty_values() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeTagsResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>7a62c49f</requestId>
  <tagSet>
    <item><resourceId>i-1</resourceId><resourceType>instance</resourceType><key>role</key><value>web</value></item>
    <item><resourceId>i-1</resourceId><resourceType>instance</resourceType><key>team</key><value>a &amp; b</value></item>
    <item><resourceId>i-1</resourceId><resourceType>instance</resourceType><key>empty</key><value/></item>
    <item><resourceId>i-2</resourceId><resourceType>instance</resourceType><key>env</key><value>prod</value></item>
  </tagSet>
</DescribeTagsResponse>"#;
        let page = parse_tags(xml, "i-1").unwrap();
        let expected: BTreeMap<String, String> =
            [("empty", ""), ("role", "web"), ("team", "a & b")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        assert_eq!(page.tags, expected);
        assert_eq!(page.next_token, None);
    }

    #[test]
    fn the_state_is_read_from_a_describe_instances_answer() {
        let xml = "<DescribeInstancesResponse><reservationSet><item><instancesSet><item><instanceId>i-1</instanceId><instanceState><code>16</code><name>running</name></instanceState></item></instancesSet></item></reservationSet></DescribeInstancesResponse>";
        assert_eq!(parse_state(xml).unwrap().as_deref(), Some("running"));
    }
}
