//! Resource tags, with ECS's limits.

use serde::{Deserialize, Serialize};

use crate::EcsError;

pub const MAX_TAGS: usize = 50;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tag {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

/// Checks one tag set against ECS's rules (at most 50 tags, keys 1-128 characters,
/// values up to 256, no `aws:` prefix).
pub fn validate_tags(tags: &[Tag]) -> Result<(), EcsError> {
    if tags.len() > MAX_TAGS {
        return Err(EcsError::InvalidParameter(format!(
            "A resource can have at most {MAX_TAGS} tags; {} were given.",
            tags.len()
        )));
    }
    for tag in tags {
        if tag.key.is_empty() || tag.key.chars().count() > 128 {
            return Err(EcsError::InvalidParameter(
                "Tag keys must be 1 to 128 characters long.".into(),
            ));
        }
        if tag.value.chars().count() > 256 {
            return Err(EcsError::InvalidParameter(format!(
                "The value of tag '{}' is longer than 256 characters.",
                tag.key
            )));
        }
        if tag.key.to_ascii_lowercase().starts_with("aws:") {
            return Err(EcsError::InvalidParameter(format!(
                "Tag key '{}' uses the reserved prefix 'aws:'.",
                tag.key
            )));
        }
    }
    Ok(())
}

/// Merges `new` into `existing`: a key already present takes the new value.
pub fn merge_tags(existing: &mut Vec<Tag>, new: Vec<Tag>) {
    for tag in new {
        match existing.iter_mut().find(|t| t.key == tag.key) {
            Some(slot) => slot.value = tag.value,
            None => existing.push(tag),
        }
    }
}
