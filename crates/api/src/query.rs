//! The AWS Query protocol, generic over the services that speak it (ELBv2 now, EC2 next).
//!
//! A request is `POST /` with `Content-Type: application/x-www-form-urlencoded` and a
//! form body: `Action=<Operation>&Version=<api version>&<members>`. Members are flattened
//! into dotted names the way botocore serializes them:
//!
//! ```text
//! Name=web                                   a scalar
//! Subnets.member.1=subnet-a                  a list (EC2 leaves out `member`: Subnet.1=)
//! Targets.member.1.Id=10.0.0.5               a list of structures
//! Targets.member.1.Port=8080
//! Tags.entry.1.key=k  Tags.entry.1.value=v   a map
//! HealthCheck.Path=/health                   a nested structure
//! ```
//!
//! [`QueryRequest`] decodes the form and [`Params`] reads members from it (a `Params` of
//! a list element or nested structure is a view with a longer prefix). The answer is XML:
//! [`XmlWriter`] builds it and an [`Envelope`] wraps it the way the service's botocore
//! parser reads it:
//!
//! ```text
//! Wrapped (ELBv2)  <ActionResponse><ActionResult>…</ActionResult><ResponseMetadata>
//!                  <ErrorResponse><Error><Type><Code><Message></Error><RequestId>
//! Ec2              <ActionResponse><requestId>…</requestId>…</ActionResponse>
//!                  <Response><Errors><Error><Code><Message></Error></Errors><RequestID>
//! ```
//!
//! Lists are `<member>` elements ([`XmlWriter::list`]), EC2's `<item>` elements
//! ([`XmlWriter::items`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{Display, Write};
use std::str::FromStr;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// The content type of Query requests.
pub const FORM_CONTENT_TYPE: &str = "application/x-www-form-urlencoded";

/// A decoded Query request.
#[derive(Debug, Clone)]
pub struct QueryRequest {
    pub action: String,
    pub version: String,
    members: BTreeMap<String, String>,
}

impl QueryRequest {
    /// Decodes a form body; `Action` and `Version` are required.
    pub fn parse(body: &[u8]) -> Result<Self, QueryError> {
        let mut members = BTreeMap::new();
        for (name, value) in form_urlencoded::parse(body) {
            members.insert(name.into_owned(), value.into_owned());
        }
        let action = members.remove("Action").ok_or(QueryError::MissingAction)?;
        let version = members
            .remove("Version")
            .ok_or(QueryError::MissingVersion)?;
        Ok(QueryRequest {
            action,
            version,
            members,
        })
    }

    /// The request's top-level members.
    pub fn params(&self) -> Params<'_> {
        Params {
            members: &self.members,
            prefix: String::new(),
        }
    }
}

/// A view of the members under one prefix (the request, a list element, a structure).
#[derive(Debug, Clone)]
pub struct Params<'a> {
    members: &'a BTreeMap<String, String>,
    prefix: String,
}

impl<'a> Params<'a> {
    fn full(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// A scalar member.
    pub fn get(&self, name: &str) -> Option<&'a str> {
        self.members.get(&self.full(name)).map(String::as_str)
    }

    /// A scalar member that must be present and non-empty.
    pub fn required(&self, name: &str) -> Result<&'a str, QueryError> {
        self.get(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| QueryError::MissingParameter {
                name: self.full(name),
            })
    }

    /// A scalar member parsed as `T` (numbers, booleans).
    pub fn parsed<T: FromStr>(
        &self,
        name: &str,
        expected: &'static str,
    ) -> Result<Option<T>, QueryError> {
        self.get(name)
            .map(|value| {
                value.parse().map_err(|_| QueryError::InvalidParameter {
                    name: self.full(name),
                    value: value.to_owned(),
                    expected,
                })
            })
            .transpose()
    }

    /// A nested structure's members.
    pub fn nested(&self, name: &str) -> Params<'a> {
        Params {
            members: self.members,
            prefix: format!("{}.", self.full(name)),
        }
    }

    /// Whether any member of this view's nested structure `name` is present.
    pub fn has(&self, name: &str) -> bool {
        let exact = self.full(name);
        let nested = format!("{exact}.");
        self.members
            .range(exact.clone()..)
            .take_while(|(k, _)| k.starts_with(&exact))
            .any(|(k, _)| *k == exact || k.starts_with(&nested))
    }

    /// A list of scalars: `name.member.N` (or EC2's `name.N`), in index order.
    pub fn strings(&self, name: &str) -> Vec<String> {
        self.element_prefixes(name)
            .into_iter()
            .filter_map(|element| self.members.get(&element).cloned())
            .collect()
    }

    /// A list of structures: `name.member.N.<member>` (or `name.N.<member>`).
    pub fn structs(&self, name: &str) -> Vec<Params<'a>> {
        self.element_prefixes(name)
            .into_iter()
            .map(|element| Params {
                members: self.members,
                prefix: format!("{element}."),
            })
            .collect()
    }

    /// A map: `name.entry.N.key` / `name.entry.N.value`, in index order.
    pub fn map(&self, name: &str) -> Vec<(&'a str, &'a str)> {
        let entries = format!("{}.entry", self.full(name));
        indices(self.members, &format!("{entries}."))
            .into_iter()
            .filter_map(|n| {
                let key = self.members.get(&format!("{entries}.{n}.key"))?;
                let value = self.members.get(&format!("{entries}.{n}.value"))?;
                Some((key.as_str(), value.as_str()))
            })
            .collect()
    }

    /// `<prefix>name.member.N` for each index present (else `<prefix>name.N`).
    fn element_prefixes(&self, name: &str) -> Vec<String> {
        let base = self.full(name);
        for list in [format!("{base}.member"), base] {
            let found = indices(self.members, &format!("{list}."));
            if !found.is_empty() {
                return found.into_iter().map(|n| format!("{list}.{n}")).collect();
            }
        }
        Vec::new()
    }
}

/// The list indices (the `N` right after `prefix`) present in `members`, sorted.
fn indices(members: &BTreeMap<String, String>, prefix: &str) -> BTreeSet<u32> {
    members
        .range(prefix.to_owned()..)
        .take_while(|(k, _)| k.starts_with(prefix))
        .filter_map(|(k, _)| {
            let rest = &k[prefix.len()..];
            rest.split('.').next()?.parse().ok()
        })
        .collect()
}

/// A request the Query layer refuses before any service sees it.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("the request has no Action parameter: send Action=<Operation> in the form body")]
    MissingAction,

    #[error("the request has no Version parameter: send the API version (e.g. Version=2015-12-01) in the form body")]
    MissingVersion,

    #[error("{name} is required: give it a value")]
    MissingParameter { name: String },

    #[error("{value:?} is not a valid value for {name}: expected {expected}")]
    InvalidParameter {
        name: String,
        value: String,
        expected: &'static str,
    },
}

impl QueryError {
    pub fn code(&self) -> &'static str {
        match self {
            QueryError::MissingAction => "MissingAction",
            QueryError::MissingVersion | QueryError::MissingParameter { .. } => "MissingParameter",
            QueryError::InvalidParameter { .. } => "ValidationError",
        }
    }
}

/// An error on the Query wire: HTTP status, AWS error code, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryFault {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl QueryFault {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        QueryFault {
            status,
            code,
            message: message.into(),
        }
    }

    /// A 400 `ValidationError`, the generic refusal of a Query service.
    pub fn validation(message: impl Into<String>) -> Self {
        QueryFault::new(400, "ValidationError", message)
    }

    /// Renders the fault as an XML error response in `envelope`, carrying `request_id`.
    pub fn into_response(self, envelope: Envelope, request_id: &str) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        xml_response(
            status,
            envelope.error(self.code, &self.message, self.status < 500, request_id),
            request_id,
        )
    }
}

impl From<QueryError> for QueryFault {
    fn from(error: QueryError) -> Self {
        QueryFault::new(400, error.code(), error.to_string())
    }
}

/// An XML document built element by element; text is escaped.
#[derive(Debug, Default)]
pub struct XmlWriter {
    out: String,
}

impl XmlWriter {
    pub fn new() -> Self {
        XmlWriter::default()
    }

    pub fn open(&mut self, name: &str) -> &mut Self {
        let _ = write!(self.out, "<{name}>");
        self
    }

    pub fn close(&mut self, name: &str) -> &mut Self {
        let _ = write!(self.out, "</{name}>");
        self
    }

    /// `<name>text</name>`.
    pub fn text(&mut self, name: &str, text: impl Display) -> &mut Self {
        self.open(name);
        escape_into(&mut self.out, &text.to_string());
        self.close(name)
    }

    /// `<name>text</name>` when there is a value, nothing otherwise.
    pub fn optional(&mut self, name: &str, text: Option<impl Display>) -> &mut Self {
        if let Some(text) = text {
            self.text(name, text);
        }
        self
    }

    /// `<name>…</name>` around what `body` writes.
    pub fn structure(&mut self, name: &str, body: impl FnOnce(&mut XmlWriter)) -> &mut Self {
        self.open(name);
        body(self);
        self.close(name)
    }

    /// `<name><member>…</member>…</name>`: one `member` per item, written by `body`.
    pub fn list<T>(
        &mut self,
        name: &str,
        items: impl IntoIterator<Item = T>,
        body: impl FnMut(&mut XmlWriter, T),
    ) -> &mut Self {
        self.elements(name, "member", items, body)
    }

    /// `<name><item>…</item>…</name>`: EC2's lists.
    pub fn items<T>(
        &mut self,
        name: &str,
        items: impl IntoIterator<Item = T>,
        body: impl FnMut(&mut XmlWriter, T),
    ) -> &mut Self {
        self.elements(name, "item", items, body)
    }

    fn elements<T>(
        &mut self,
        name: &str,
        element: &str,
        items: impl IntoIterator<Item = T>,
        mut body: impl FnMut(&mut XmlWriter, T),
    ) -> &mut Self {
        self.open(name);
        for item in items {
            self.open(element);
            body(self, item);
            self.close(element);
        }
        self.close(name)
    }

    /// A list of scalars.
    pub fn text_list<T: Display>(
        &mut self,
        name: &str,
        items: impl IntoIterator<Item = T>,
    ) -> &mut Self {
        self.open(name);
        for item in items {
            self.text("member", item);
        }
        self.close(name)
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\r' => out.push_str("&#xD;"),
            _ => out.push(c),
        }
    }
}

/// How a Query service wraps results and errors (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Envelope {
    Wrapped,
    Ec2,
}

impl Envelope {
    /// The success document for `action`.
    pub fn response(
        self,
        action: &str,
        namespace: &str,
        result: XmlWriter,
        request_id: &str,
    ) -> String {
        match self {
            Envelope::Wrapped => response(action, namespace, result, request_id),
            Envelope::Ec2 => ec2_response(action, namespace, result, request_id),
        }
    }

    /// The error document; `sender` says the client is at fault.
    pub fn error(self, code: &str, message: &str, sender: bool, request_id: &str) -> String {
        match self {
            Envelope::Wrapped => error_response(code, message, sender, request_id),
            Envelope::Ec2 => ec2_error_response(code, message, request_id),
        }
    }
}

/// EC2's success envelope: `<{action}Response xmlns=…><requestId>…</requestId>result
/// </{action}Response>`.
pub fn ec2_response(action: &str, namespace: &str, result: XmlWriter, request_id: &str) -> String {
    let mut out = String::with_capacity(result.out.len() + 256);
    out.push_str(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = write!(out, r#"<{action}Response xmlns="{namespace}"><requestId>"#);
    escape_into(&mut out, request_id);
    let _ = write!(out, "</requestId>{}</{action}Response>", result.out);
    out
}

/// EC2's error envelope: `<Response><Errors><Error><Code><Message>…</Errors>
/// <RequestID>`.
pub fn ec2_error_response(code: &str, message: &str, request_id: &str) -> String {
    let mut body = XmlWriter::new();
    body.structure("Errors", |w| {
        w.structure("Error", |w| {
            w.text("Code", code).text("Message", message);
        });
    })
    .text("RequestID", request_id);
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><Response>{}</Response>"#,
        body.finish()
    )
}

/// The success envelope: `<{action}Response xmlns=…><{action}Result>result</…>
/// <ResponseMetadata><RequestId>…</RequestId></ResponseMetadata></{action}Response>`.
pub fn response(action: &str, namespace: &str, result: XmlWriter, request_id: &str) -> String {
    let mut out = String::with_capacity(result.out.len() + 256);
    out.push_str(r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = write!(out, r#"<{action}Response xmlns="{namespace}">"#);
    let _ = write!(out, "<{action}Result>{}</{action}Result>", result.out);
    out.push_str("<ResponseMetadata><RequestId>");
    escape_into(&mut out, request_id);
    let _ = write!(out, "</RequestId></ResponseMetadata></{action}Response>");
    out
}

/// The error envelope botocore's query parser reads: `Type` is `Sender` for the
/// client's mistakes, `Receiver` for the server's.
pub fn error_response(code: &str, message: &str, sender: bool, request_id: &str) -> String {
    let mut body = XmlWriter::new();
    body.structure("Error", |w| {
        w.text("Type", if sender { "Sender" } else { "Receiver" })
            .text("Code", code)
            .text("Message", message);
    })
    .text("RequestId", request_id);
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><ErrorResponse>{}</ErrorResponse>"#,
        body.finish()
    )
}

/// An XML HTTP response with the request id header.
pub fn xml_response(status: StatusCode, body: String, request_id: &str) -> Response {
    let mut response = (status, [("content-type", "text/xml")], body).into_response();
    if let Ok(value) = axum::http::HeaderValue::from_str(request_id) {
        response.headers_mut().insert("x-amzn-requestid", value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: &str) -> QueryRequest {
        QueryRequest::parse(body.as_bytes()).unwrap()
    }

    #[test]
    fn decodes_scalars_lists_structures_and_maps() {
        let r = request(
            "Action=CreateListener&Version=2015-12-01&Port=80&Name=a%2Bb%20c\
             &Subnets.member.2=s-b&Subnets.member.1=s-a&Subnets.member.10=s-j\
             &DefaultActions.member.1.Type=forward\
             &DefaultActions.member.1.ForwardConfig.TargetGroups.member.1.TargetGroupArn=tg\
             &Tags.entry.1.key=k&Tags.entry.1.value=v&Ec2.1=x&Ec2.2=y",
        );
        assert_eq!(
            (r.action.as_str(), r.version.as_str()),
            ("CreateListener", "2015-12-01")
        );
        let p = r.params();
        assert_eq!(p.get("Name"), Some("a+b c"));
        assert_eq!(p.parsed::<u16>("Port", "a port").unwrap(), Some(80));
        assert!(p.parsed::<u16>("Name", "a port").is_err());
        assert_eq!(p.strings("Subnets"), ["s-a", "s-b", "s-j"]);
        assert_eq!(p.strings("Ec2"), ["x", "y"]);
        assert!(p.strings("Missing").is_empty());
        let actions = p.structs("DefaultActions");
        assert_eq!(actions.len(), 1);
        assert_eq!(actions[0].get("Type"), Some("forward"));
        let groups = actions[0].nested("ForwardConfig").structs("TargetGroups");
        assert_eq!(groups[0].get("TargetGroupArn"), Some("tg"));
        assert!(actions[0].has("ForwardConfig") && !actions[0].has("Forward"));
        assert_eq!(p.map("Tags"), [("k", "v")]);
        assert!(matches!(
            p.required("Absent"),
            Err(QueryError::MissingParameter { name }) if name == "Absent"
        ));
    }

    #[test]
    fn action_and_version_are_required() {
        assert!(matches!(
            QueryRequest::parse(b"Version=1"),
            Err(QueryError::MissingAction)
        ));
        assert!(matches!(
            QueryRequest::parse(b"Action=X"),
            Err(QueryError::MissingVersion)
        ));
    }

    #[test]
    fn writes_escaped_envelopes() {
        let mut w = XmlWriter::new();
        w.list("Groups", ["a<b", "c&d"], |w, g| {
            w.text("Name", g);
        })
        .optional("Absent", None::<&str>)
        .text_list("Arns", [1, 2]);
        let xml = response("Describe", "urn:ns", w, "req-1");
        assert_eq!(
            xml,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><DescribeResponse xmlns=\"urn:ns\"><DescribeResult>\
             <Groups><member><Name>a&lt;b</Name></member><member><Name>c&amp;d</Name></member></Groups>\
             <Arns><member>1</member><member>2</member></Arns></DescribeResult>\
             <ResponseMetadata><RequestId>req-1</RequestId></ResponseMetadata></DescribeResponse>"
        );
        let error = error_response("TargetGroupNotFound", "no \"tg\"", true, "req-2");
        assert!(error.contains("<Error><Type>Sender</Type><Code>TargetGroupNotFound</Code><Message>no &quot;tg&quot;</Message></Error><RequestId>req-2</RequestId>"), "{error}");
    }

    #[test]
    fn writes_ec2_envelopes_and_item_lists() {
        let mut w = XmlWriter::new();
        w.items("vpcSet", ["vpc-1"], |w, id| {
            w.text("vpcId", id);
        });
        assert_eq!(
            Envelope::Ec2.response("DescribeVpcs", "urn:ec2", w, "req-1"),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><DescribeVpcsResponse xmlns=\"urn:ec2\">\
             <requestId>req-1</requestId><vpcSet><item><vpcId>vpc-1</vpcId></item></vpcSet>\
             </DescribeVpcsResponse>"
        );
        assert_eq!(
            Envelope::Ec2.error("InvalidVpcID.NotFound", "no <vpc>", true, "req-2"),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response><Errors><Error>\
             <Code>InvalidVpcID.NotFound</Code><Message>no &lt;vpc&gt;</Message></Error></Errors>\
             <RequestID>req-2</RequestID></Response>"
        );
        let wrapped = Envelope::Wrapped.error("X", "m", false, "r");
        assert!(wrapped.contains("<Type>Receiver</Type>"), "{wrapped}");
    }
}
