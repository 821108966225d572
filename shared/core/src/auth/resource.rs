//! The resource a denied request named, read from the request message with
//! its descriptor, to word the denial. Never used to decide.

use prost_reflect::{DynamicMessage, MessageDescriptor, ReflectMessage, Value};
use tonic::body::Body;

/// The largest request body read to word a denial.
const MAX_BODY: usize = 64 * 1024;

/// The resource a denied request to `path` named: the `organizations/…`
/// string in field 1 of its message (`name`, `parent`, or the full name of
/// the resource it acts on), or in field 1 of the message in field 1 (the
/// resource of an Update request).
pub async fn requested_resource(path: &str, body: Body) -> Option<String> {
    use http_body_util::BodyExt;
    let input = crate::methods::method(path)?.input();
    let bytes = http_body_util::Limited::new(body, MAX_BODY)
        .collect()
        .await
        .ok()?
        .to_bytes();
    // A gRPC frame: compression flag, 4-byte length, message.
    let (&flag, rest) = bytes.split_first()?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    if flag != 0 {
        return None;
    }
    resource_in(input, rest.get(4..4 + len)?)
}

/// The resource named in an encoded message of type `input`.
fn resource_in(input: MessageDescriptor, message: &[u8]) -> Option<String> {
    let message = DynamicMessage::decode(input, message).ok()?;
    resource_name(&message, 2)
}

fn resource_name(message: &DynamicMessage, depth: u8) -> Option<String> {
    let field = message.descriptor().get_field(1)?;
    match message.get_field(&field).as_ref() {
        Value::String(s) if s.starts_with("organizations/") => Some(crate::names::truncate(s)),
        Value::Message(inner) if depth > 1 => resource_name(inner, depth - 1),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::identity::v1::{
        CreateSessionTokenRequest, DeleteProjectRequest, ListOrganizationsRequest, Project,
        UpdateProjectRequest,
    };
    use prost::Message;

    fn input(path: &str) -> MessageDescriptor {
        crate::methods::method(path).expect("method").input()
    }

    #[test]
    fn resource_names_are_read_from_field_one() {
        let delete = DeleteProjectRequest {
            name: "organizations/acme/projects/web".into(),
        }
        .encode_to_vec();
        let delete_input = input("/paddock.identity.v1.IdentityService/DeleteProject");
        assert_eq!(
            resource_in(delete_input.clone(), &delete).as_deref(),
            Some("organizations/acme/projects/web")
        );
        let update = UpdateProjectRequest {
            project: Some(Project {
                name: "organizations/acme/projects/web".into(),
                display_name: "x".into(),
                ..Default::default()
            }),
            update_mask: None,
        }
        .encode_to_vec();
        assert_eq!(
            resource_in(
                input("/paddock.identity.v1.IdentityService/UpdateProject"),
                &update
            )
            .as_deref(),
            Some("organizations/acme/projects/web")
        );
        // Field 1 under another name: the full name of what it acts on.
        let session = CreateSessionTokenRequest {
            agent: "organizations/acme/agents/bot".into(),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(
            resource_in(
                input("/paddock.identity.v1.IdentityService/CreateSessionToken"),
                &session
            )
            .as_deref(),
            Some("organizations/acme/agents/bot")
        );
        let list = ListOrganizationsRequest {
            page_size: 10,
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(
            resource_in(
                input("/paddock.identity.v1.IdentityService/ListOrganizations"),
                &list
            ),
            None
        );
        let not_a_name = DeleteProjectRequest {
            name: "hello".into(),
        }
        .encode_to_vec();
        assert_eq!(resource_in(delete_input.clone(), &not_a_name), None);
        assert_eq!(resource_in(delete_input.clone(), &[0x0a, 0xff]), None);
        assert_eq!(resource_in(delete_input, &[]), None);
    }

    #[tokio::test]
    async fn the_resource_is_read_from_a_grpc_frame() {
        let message = DeleteProjectRequest {
            name: "organizations/acme/projects/web".into(),
        }
        .encode_to_vec();
        let mut frame = vec![0u8];
        frame.extend_from_slice(&u32::try_from(message.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(&message);
        let path = "/paddock.identity.v1.IdentityService/DeleteProject";
        assert_eq!(
            requested_resource(path, Body::new(http_body_util::Full::from(frame.clone())))
                .await
                .as_deref(),
            Some("organizations/acme/projects/web")
        );
        let unknown = "/paddock.identity.v1.IdentityService/Nope";
        assert_eq!(
            requested_resource(unknown, Body::new(http_body_util::Full::from(frame))).await,
            None
        );
    }
}
