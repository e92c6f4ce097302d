//! EC2's dialect of the Query protocol: the form request is ELBv2's, signed for `ec2`,
//! but the answer has no `<{action}Result>` wrapper: the result's members sit directly
//! in `<{action}Response>` beside `<requestId>`, and lists are `<item>` elements.

use super::{xml_to_json, ClientError, EcsClient};

impl EcsClient {
    /// Calls the EC2 action `action` (`DescribeSecurityGroups`...) with form `members`
    /// as botocore's EC2 serializer names them (`GroupId.1`, `Filter.1.Name`,
    /// `IpPermissions.1.IpRanges.1.CidrIp`); returns the response's members as JSON,
    /// without the request id.
    pub async fn ec2_query(
        &self,
        action: &str,
        members: &[(String, String)],
    ) -> Result<serde_json::Value, ClientError> {
        self.query_document(
            crate::ec2::SIGNING_NAME,
            crate::ec2::VERSION,
            action,
            members,
            ec2_result,
        )
        .await
    }
}

/// The members of an EC2 response element, `requestId` left out.
fn ec2_result(response: roxmltree::Node<'_, '_>) -> serde_json::Value {
    let mut result = xml_to_json(response);
    match result.as_object_mut() {
        Some(members) => {
            members.remove("requestId");
            result
        }
        // An empty response element: no members at all.
        None => serde_json::json!({}),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::query::{ec2_response, XmlWriter};

    fn parse(action: &str, result: XmlWriter) -> serde_json::Value {
        let xml = ec2_response(action, "urn:ec2", result, "req-1");
        let document = roxmltree::Document::parse(&xml).unwrap();
        ec2_result(document.root_element())
    }

    #[test]
    fn results_are_the_response_members_without_the_request_id() {
        let mut w = XmlWriter::new();
        w.items("securityGroupInfo", ["sg-1"], |w, id| {
            w.text("groupId", id)
                .items("ipPermissions", [(); 0], |_, ()| {});
        });
        assert_eq!(
            parse("DescribeSecurityGroups", w),
            json!({"securityGroupInfo": [{"groupId": "sg-1", "ipPermissions": ""}]})
        );
        let mut w = XmlWriter::new();
        w.text("return", true);
        assert_eq!(parse("DeleteSecurityGroup", w), json!({"return": "true"}));
        assert_eq!(parse("DeleteSubnet", XmlWriter::new()), json!({}));
    }
}
