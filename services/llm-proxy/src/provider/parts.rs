//! Content parts as providers send them. The contract carries the MCP content types (text,
//! image, audio, resource link, embedded resource) so a tool's result reaches the model
//! unchanged; models take text, images and (some) audio. Resources become text here —
//! a link as a line naming it, a text resource as its contents, an embedded image as an
//! image — once, for every provider.

use std::borrow::Cow;

use agentmesh_proto::agentmesh::common::v1::{
    AudioPart, ContentPart, ImagePart, content_part, embedded_resource, image_part,
};

use super::ProviderError;

/// A part as a model takes it.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelPart<'a> {
    /// Text (also resource links and text resources).
    Text(Cow<'a, str>),
    /// An image (also embedded resources whose type is an image).
    Image(Cow<'a, ImagePart>),
    /// Audio.
    Audio(&'a AudioPart),
}

/// `part` as a model takes it; `None` for an empty part. A binary resource that is not an
/// image cannot be shown to a model and is [`ProviderError::Unsupported`].
pub fn model_part(part: &ContentPart) -> Result<Option<ModelPart<'_>>, ProviderError> {
    let Some(part) = &part.part else { return Ok(None) };
    Ok(Some(match part {
        content_part::Part::Text(text) => ModelPart::Text(Cow::Borrowed(text)),
        content_part::Part::Image(image) => ModelPart::Image(Cow::Borrowed(image)),
        content_part::Part::Audio(audio) => ModelPart::Audio(audio),
        content_part::Part::ResourceLink(link) => {
            let name = link.title.as_deref().unwrap_or(&link.name);
            let mut text = format!("Resource {name}: {}", link.uri);
            if let Some(description) = &link.description {
                text.push_str(&format!(" ({description})"));
            }
            ModelPart::Text(Cow::Owned(text))
        }
        content_part::Part::Resource(resource) => match &resource.contents {
            Some(embedded_resource::Contents::Text(text)) => {
                ModelPart::Text(Cow::Owned(format!("Resource {}:\n{text}", resource.uri)))
            }
            Some(embedded_resource::Contents::Blob(bytes)) => {
                let mime_type = resource.mime_type.clone().unwrap_or_default();
                if !mime_type.starts_with("image/") {
                    return Err(ProviderError::Unsupported(format!(
                        "resource {} is binary ({}) and cannot be shown to a model",
                        resource.uri,
                        if mime_type.is_empty() { "no media type" } else { &mime_type }
                    )));
                }
                ModelPart::Image(Cow::Owned(ImagePart {
                    source: Some(image_part::Source::Data(bytes.clone())),
                    mime_type,
                    detail: String::new(),
                }))
            }
            None => return Ok(None),
        },
    }))
}

/// Every part of `parts` as a model takes it, in order.
pub fn model_parts(parts: &[ContentPart]) -> Result<Vec<ModelPart<'_>>, ProviderError> {
    parts.iter().filter_map(|part| model_part(part).transpose()).collect()
}

/// The `format` OpenAI's `input_audio` and similar APIs name an audio media type by.
pub fn audio_format(audio: &AudioPart) -> Result<&'static str, ProviderError> {
    match audio.mime_type.as_str() {
        "audio/wav" | "audio/x-wav" | "audio/wave" => Ok("wav"),
        "audio/mpeg" | "audio/mp3" => Ok("mp3"),
        other => Err(ProviderError::Unsupported(format!("audio of type {other:?} (wav and mp3 are accepted)"))),
    }
}

#[cfg(test)]
mod tests {
    use agentmesh_proto::agentmesh::common::v1::{EmbeddedResource, ResourceLink};

    use super::*;

    fn part(part: content_part::Part) -> ContentPart {
        ContentPart { part: Some(part) }
    }

    #[test]
    fn resources_become_text_or_images_and_other_binaries_are_refused() {
        let link = part(content_part::Part::ResourceLink(ResourceLink {
            uri: "file:///report.pdf".into(),
            name: "report".into(),
            title: Some("Q3 report".into()),
            description: Some("the figures".into()),
            mime_type: None,
        }));
        let text = part(content_part::Part::Resource(EmbeddedResource {
            uri: "memo://1".into(),
            mime_type: Some("text/plain".into()),
            contents: Some(embedded_resource::Contents::Text("hello".into())),
        }));
        let image = part(content_part::Part::Resource(EmbeddedResource {
            uri: "img://1".into(),
            mime_type: Some("image/png".into()),
            contents: Some(embedded_resource::Contents::Blob(vec![1, 2])),
        }));
        let given = [link, text, image];
        let parts = model_parts(&given).unwrap();
        assert_eq!(parts[0], ModelPart::Text(Cow::Borrowed("Resource Q3 report: file:///report.pdf (the figures)")));
        assert_eq!(parts[1], ModelPart::Text(Cow::Borrowed("Resource memo://1:\nhello")));
        let ModelPart::Image(image) = &parts[2] else { panic!("an image: {:?}", parts[2]) };
        assert_eq!(
            (image.mime_type.as_str(), &image.source),
            ("image/png", &Some(image_part::Source::Data(vec![1, 2])))
        );

        let pdf = part(content_part::Part::Resource(EmbeddedResource {
            uri: "file:///a.pdf".into(),
            mime_type: Some("application/pdf".into()),
            contents: Some(embedded_resource::Contents::Blob(vec![1])),
        }));
        assert!(matches!(model_part(&pdf), Err(ProviderError::Unsupported(m)) if m.contains("application/pdf")));
    }

    #[test]
    fn audio_formats_follow_the_media_type() {
        let audio = |mime: &str| AudioPart { data: vec![1], mime_type: mime.into() };
        assert_eq!(audio_format(&audio("audio/wav")).unwrap(), "wav");
        assert_eq!(audio_format(&audio("audio/mpeg")).unwrap(), "mp3");
        assert!(audio_format(&audio("audio/ogg")).is_err());
    }
}
