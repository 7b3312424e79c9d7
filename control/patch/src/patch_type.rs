//! The four PATCH content types Kubernetes accepts.

use std::fmt;

use crate::error::PatchError;

/// How a PATCH body is to be applied, chosen by the request's Content-Type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PatchType {
    /// RFC 6902 JSON patch: `application/json-patch+json`.
    Json,
    /// RFC 7386 JSON merge patch: `application/merge-patch+json`.
    Merge,
    /// Kubernetes strategic merge patch:
    /// `application/strategic-merge-patch+json`.
    StrategicMerge,
    /// Server-side apply: `application/apply-patch+yaml`.
    Apply,
}

impl PatchType {
    /// Every patch type, in the order the apiserver advertises them.
    pub const ALL: [PatchType; 4] = [
        PatchType::Json,
        PatchType::Merge,
        PatchType::StrategicMerge,
        PatchType::Apply,
    ];

    /// The patch type for a Content-Type header value. Parameters such as
    /// `; charset=utf-8` are ignored and the media type is matched without
    /// regard to case; anything else is an error the apiserver turns into
    /// 415 Unsupported Media Type.
    pub fn from_content_type(content_type: &str) -> Result<Self, PatchError> {
        let media_type = content_type.split(';').next().unwrap_or_default().trim();
        Self::ALL
            .into_iter()
            .find(|ty| ty.content_type().eq_ignore_ascii_case(media_type))
            .ok_or_else(|| PatchError::UnsupportedContentType {
                content_type: content_type.to_owned(),
            })
    }

    /// The media type a client sends for this patch type.
    pub const fn content_type(self) -> &'static str {
        match self {
            PatchType::Json => "application/json-patch+json",
            PatchType::Merge => "application/merge-patch+json",
            PatchType::StrategicMerge => "application/strategic-merge-patch+json",
            PatchType::Apply => "application/apply-patch+yaml",
        }
    }
}

impl fmt::Display for PatchType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PatchType::Json => "json patch",
            PatchType::Merge => "merge patch",
            PatchType::StrategicMerge => "strategic merge patch",
            PatchType::Apply => "apply patch",
        })
    }
}

#[cfg(test)]
mod tests;
