//! The body of a call to an AWS Query-protocol API (EC2, AutoScaling,
//! ELBv2): `Action`, `Version` and the parameters, form-encoded, POSTed
//! with [`CONTENT_TYPE`].

/// The content type of a Query-protocol request (and a signed header).
pub const CONTENT_TYPE: &str = "application/x-www-form-urlencoded; charset=utf-8";

/// `Action=…&Version=…&` then `parameters`, form-encoded in that order.
pub fn form_body(action: &str, version: &str, parameters: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("Action", action)
        .append_pair("Version", version)
        .extend_pairs(parameters.iter().copied())
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_form_encoded_after_the_action_and_version() {
        assert_eq!(
            form_body(
                "RegisterTargets",
                "2015-12-01",
                &[(
                    "TargetGroupArn",
                    "arn:aws:elasticloadbalancing:eu-west-1:1:targetgroup/web/ab"
                )]
            ),
            "Action=RegisterTargets&Version=2015-12-01&TargetGroupArn=arn%3Aaws%3Aelasticloadbalancing%3Aeu-west-1%3A1%3Atargetgroup%2Fweb%2Fab"
        );
    }
}
