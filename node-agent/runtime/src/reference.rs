//! Image references with Docker's normalisation: `busybox`,
//! `busybox:latest`, `library/busybox` and `docker.io/library/busybox:latest`
//! all name `docker.io/library/busybox:latest`.

use std::fmt;

/// The registry a reference without one belongs to.
const DEFAULT_DOMAIN: &str = "docker.io";
/// Docker Hub's legacy name, normalised to [`DEFAULT_DOMAIN`].
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
/// Docker Hub's namespace for single-component names (`busybox`).
const OFFICIAL_REPO_PREFIX: &str = "library/";
const DEFAULT_TAG: &str = "latest";

/// A reference that is not a valid image name.
#[derive(Debug, thiserror::Error)]
#[error("invalid image reference {reference:?}: {reason}")]
pub struct ReferenceError {
    /// The reference as written.
    pub reference: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// A parsed, normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    domain: String,
    path: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl Reference {
    /// Parses `reference` the way Docker does and fills in the defaults:
    /// the `docker.io` registry, the `library/` namespace and the `latest`
    /// tag (unless a digest pins the image).
    pub fn parse(reference: &str) -> Result<Reference, ReferenceError> {
        let err = |reason| ReferenceError {
            reference: reference.to_owned(),
            reason,
        };
        if reference.is_empty() {
            return Err(err("the reference is empty"));
        }
        if reference.len() > 4096 {
            return Err(err("the reference is too long"));
        }
        let (name_tag, digest) = match reference.split_once('@') {
            Some((n, d)) => (n, Some(d)),
            None => (reference, None),
        };
        if let Some(d) = digest {
            let (alg, hex) = d
                .split_once(':')
                .ok_or_else(|| err("the digest has no algorithm (want sha256:<hex>)"))?;
            if alg != "sha256" {
                return Err(err("only sha256 digests are supported"));
            }
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err("a sha256 digest has 64 hexadecimal digits"));
            }
        }
        // The tag follows the last ':' after the last '/' (a ':' before it
        // belongs to a registry port).
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => (
                &name_tag[..last_slash + i],
                Some(&name_tag[last_slash + i + 1..]),
            ),
            None => (name_tag, None),
        };
        if let Some(t) = tag
            && !valid_tag(t)
        {
            return Err(err(
                "a tag is up to 128 letters, digits, '_', '.' or '-' and starts with a letter, digit or '_'",
            ));
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.')
                    || first.contains(':')
                    || first == "localhost"
                    || first.to_lowercase() != first =>
            {
                (first, rest.to_owned())
            }
            _ => (DEFAULT_DOMAIN, name.to_owned()),
        };
        let domain = if domain == LEGACY_DEFAULT_DOMAIN {
            DEFAULT_DOMAIN
        } else {
            domain
        };
        if domain.is_empty()
            || !domain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        {
            return Err(err("the registry name is not a host name"));
        }
        let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
            format!("{OFFICIAL_REPO_PREFIX}{path}")
        } else {
            path
        };
        if path.to_lowercase() != path {
            return Err(err("repository names must be lowercase"));
        }
        if !path.split('/').all(valid_path_component) {
            return Err(err(
                "repository name components are lowercase letters and digits separated by '.', '_', '__' or '-'",
            ));
        }
        let tag = match (tag, digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, None) => Some(DEFAULT_TAG.to_owned()),
            (None, Some(_)) => None,
        };
        Ok(Reference {
            domain: domain.to_owned(),
            path,
            tag,
            digest: digest.map(str::to_owned),
        })
    }

    /// The repository without tag or digest, e.g. `docker.io/library/busybox`.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The registry, e.g. `docker.io` or `127.0.0.1:5000`.
    pub fn registry(&self) -> &str {
        &self.domain
    }

    /// The repository's path within its registry, e.g. `library/busybox`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The tag, `latest` when neither tag nor digest was given.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The pinned digest (`sha256:<hex>`), if any.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }
}

impl fmt::Display for Reference {
    /// The fully qualified form, e.g. `docker.io/library/busybox:latest`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn valid_tag(tag: &str) -> bool {
    let mut bytes = tag.bytes();
    tag.len() <= 128
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]*)[a-z0-9]+)*`
fn valid_path_component(component: &str) -> bool {
    let b = component.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &component[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-')) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests;
