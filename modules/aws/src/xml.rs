//! Reading AWS XML answers (the Query-protocol APIs: EC2, AutoScaling,
//! ELBv2) with quick-xml: every element's text by its path of names, an
//! element's text by its name, and the `Code` and `Message` of an error
//! answer (`<Response><Errors><Error>` for EC2,
//! `<ErrorResponse><Error>` for the others).

use quick_xml::events::Event;

/// Calls `visit` with the path of local names from the root and the text
/// of each element, as each element ends (an empty element has `""`).
/// Entities and character references are resolved.
pub fn walk(xml: &str, mut visit: impl FnMut(&[String], &str)) -> Result<(), String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut path: Vec<String> = Vec::new();
    let mut text = String::new();
    loop {
        match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(start) => {
                path.push(start.local_name().as_ref().to_string());
                text.clear();
            }
            Event::Empty(empty) => {
                path.push(empty.local_name().as_ref().to_string());
                visit(&path, "");
                path.pop();
            }
            Event::Text(t) => text.push_str(&t.xml10_content()),
            Event::GeneralRef(reference) => {
                let name = reference.as_ref().to_string();
                match reference.resolve_char_ref().map_err(|e| e.to_string())? {
                    Some(character) => text.push(character),
                    None => text.push_str(
                        quick_xml::escape::resolve_predefined_entity(&name)
                            .ok_or_else(|| format!("unknown entity &{name};"))?,
                    ),
                }
            }
            Event::CData(data) => text.push_str(data.as_ref()),
            Event::End(_) => {
                visit(&path, &text);
                text.clear();
                path.pop();
            }
            Event::Eof => return Ok(()),
            _ => {}
        }
    }
}

/// The text of the first element named `name` (its local name), if any.
pub fn first_text(xml: &str, name: &str) -> Result<Option<String>, String> {
    let mut found = None;
    walk(xml, |path, text| {
        if found.is_none() && path.last().is_some_and(|last| last == name) {
            found = Some(text.to_string());
        }
    })?;
    Ok(found)
}

/// The code and message of an AWS error answer; for an answer that is not
/// one (a proxy's HTML page), `UnknownError` and its first 200 characters.
pub fn error_of(xml: &str) -> (String, String) {
    let (mut code, mut message) = (String::new(), String::new());
    let _ = walk(xml, |path, text| match path.last().map(String::as_str) {
        Some("Code") => code = text.to_string(),
        Some("Message") => message = text.to_string(),
        _ => {}
    });
    if code.is_empty() {
        code = "UnknownError".into();
        message = xml.chars().take(200).collect();
    }
    (code, message)
}

/// `text` escaped for an XML element's content or an attribute.
pub fn escape(text: &str) -> String {
    quick_xml::escape::escape(text).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_read_from_ec2_and_query_api_answers() {
        let ec2 = "<Response><Errors><Error><Code>AuthFailure</Code><Message>bad signature</Message></Error></Errors></Response>";
        assert_eq!(
            error_of(ec2),
            ("AuthFailure".to_string(), "bad signature".to_string())
        );
        let autoscaling = r#"<ErrorResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/"><Error><Type>Sender</Type><Code>ValidationError</Code><Message>No active Lifecycle Action found with instance ID i-1 &amp; more</Message></Error><RequestId>r</RequestId></ErrorResponse>"#;
        assert_eq!(
            error_of(autoscaling),
            (
                "ValidationError".to_string(),
                "No active Lifecycle Action found with instance ID i-1 & more".to_string()
            )
        );
        assert_eq!(error_of("<html>gateway</html>").0, "UnknownError");
    }

    #[test]
    fn the_first_element_of_a_name_is_found_in_a_namespaced_answer() {
        let xml = r#"<DescribeAutoScalingInstancesResponse xmlns="http://autoscaling.amazonaws.com/doc/2011-01-01/"><DescribeAutoScalingInstancesResult><AutoScalingInstances><member><InstanceId>i-1</InstanceId><AutoScalingGroupName>web&#45;asg</AutoScalingGroupName></member></AutoScalingInstances></DescribeAutoScalingInstancesResult></DescribeAutoScalingInstancesResponse>"#;
        assert_eq!(
            first_text(xml, "AutoScalingGroupName").expect("parses"),
            Some("web-asg".to_string())
        );
        assert_eq!(first_text(xml, "NextToken").expect("parses"), None);
        assert!(first_text("<a><b></a>", "b").is_err());
        assert_eq!(escape("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }
}
