//! Input rules for what programs register: one place, so that HTTP, config files and the
//! CLI refuse the same things with the same words.
//!
//! Limits keep every record small enough to gossip and to answer in DNS, and keep names
//! usable as DNS labels.

use crate::model::{Service, Weights};
use std::collections::BTreeMap;

pub const MAX_ID_LEN: usize = 128;
pub const MAX_TAGS: usize = 64;
pub const MAX_TAG_LEN: usize = 255;
pub const MAX_META: usize = 64;
pub const MAX_META_KEY_LEN: usize = 128;
pub const MAX_META_VALUE_LEN: usize = 512;
pub const MAX_CHECKS_PER_SERVICE: usize = 32;
pub const MAX_CHECK_NAME_LEN: usize = 256;

/// A refused input, naming the field (Consul's JSON name) and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct ValidationError {
    pub field: String,
    pub reason: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ValidationError {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// A DNS label: 1–63 of `[A-Za-z0-9-]`.
pub fn dns_label(field: &str, value: &str) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if value.len() > 63 {
        return Err(ValidationError::new(
            field,
            format!("{:?} is longer than 63 characters", value),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
    {
        return Err(ValidationError::new(
            field,
            format!("{value:?} contains {bad:?}; only letters, digits and '-' are allowed"),
        ));
    }
    Ok(())
}

/// A service or check id: 1–128 characters, no `/` (ids appear in URL paths), no control
/// characters.
pub fn id(field: &str, value: &str) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if value.chars().count() > MAX_ID_LEN {
        return Err(ValidationError::new(
            field,
            format!("longer than {MAX_ID_LEN} characters"),
        ));
    }
    if value.contains('/') {
        return Err(ValidationError::new(field, "must not contain '/'"));
    }
    if value.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Check ids the agent itself uses (`serfHealth`, maintenance checks): a user check with
/// one of these ids would be confused with the agent's own.
pub fn check_id_not_reserved(field: &str, id: &str) -> Result<(), ValidationError> {
    use crate::model::{NODE_MAINTENANCE_CHECK, SERF_HEALTH_CHECK, SERVICE_MAINTENANCE_PREFIX};
    if id == SERF_HEALTH_CHECK
        || id == NODE_MAINTENANCE_CHECK
        || id.starts_with(SERVICE_MAINTENANCE_PREFIX)
    {
        return Err(ValidationError::new(
            field,
            format!("{id:?} is reserved for the agent's own checks"),
        ));
    }
    Ok(())
}

/// Free text with a length bound (check names and notes).
pub fn text(field: &str, value: &str, max: usize) -> Result<(), ValidationError> {
    if value.len() > max {
        return Err(ValidationError::new(
            field,
            format!("longer than {max} bytes"),
        ));
    }
    Ok(())
}

/// A TCP/UDP port given as any integer.
pub fn port(field: &str, value: i64) -> Result<u16, ValidationError> {
    u16::try_from(value)
        .map_err(|_| ValidationError::new(field, format!("{value} is not in 0-65535")))
}

pub fn tags(field: &str, tags: &[String]) -> Result<(), ValidationError> {
    if tags.len() > MAX_TAGS {
        return Err(ValidationError::new(
            field,
            format!("{} tags, at most {MAX_TAGS} allowed", tags.len()),
        ));
    }
    for t in tags {
        if t.len() > MAX_TAG_LEN {
            return Err(ValidationError::new(
                field,
                format!("a tag is longer than {MAX_TAG_LEN} bytes"),
            ));
        }
        if t.is_empty() {
            return Err(ValidationError::new(field, "a tag is empty"));
        }
    }
    Ok(())
}

pub fn meta(field: &str, meta: &BTreeMap<String, String>) -> Result<(), ValidationError> {
    if meta.len() > MAX_META {
        return Err(ValidationError::new(
            field,
            format!("{} pairs, at most {MAX_META} allowed", meta.len()),
        ));
    }
    for (k, v) in meta {
        if k.is_empty() || k.len() > MAX_META_KEY_LEN {
            return Err(ValidationError::new(
                field,
                format!("key {k:?} must be 1-{MAX_META_KEY_LEN} characters"),
            ));
        }
        if let Some(bad) = k
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
        {
            return Err(ValidationError::new(
                field,
                format!(
                    "key {k:?} contains {bad:?}; only letters, digits, '_' and '-' are allowed"
                ),
            ));
        }
        if v.len() > MAX_META_VALUE_LEN {
            return Err(ValidationError::new(
                field,
                format!("value of {k:?} is longer than {MAX_META_VALUE_LEN} bytes"),
            ));
        }
    }
    Ok(())
}

pub fn weights(field: &str, w: &Weights) -> Result<(), ValidationError> {
    if w.passing < 1 {
        return Err(ValidationError::new(
            format!("{field}.Passing"),
            "must be at least 1",
        ));
    }
    if w.warning < 1 {
        return Err(ValidationError::new(
            format!("{field}.Warning"),
            "must be at least 1",
        ));
    }
    Ok(())
}

/// An address a service may carry: empty (use the node's), an IP, or a host name.
pub fn address(field: &str, value: &str) -> Result<(), ValidationError> {
    if value.is_empty() || value.parse::<std::net::IpAddr>().is_ok() {
        return Ok(());
    }
    if value.len() > 253
        || value.split('.').any(|l| {
            l.is_empty()
                || l.len() > 63
                || !l
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
    {
        return Err(ValidationError::new(
            field,
            format!("{value:?} is neither an IP address nor a host name"),
        ));
    }
    Ok(())
}

/// Every rule for a whole service, with Consul's field names.
pub fn service(s: &Service) -> Result<(), ValidationError> {
    dns_label("Name", &s.name)?;
    id("ID", &s.id)?;
    tags("Tags", &s.tags)?;
    meta("Meta", &s.meta)?;
    weights("Weights", &s.weights)?;
    address("Address", &s.address)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok_service() -> Service {
        Service {
            id: "web-1".into(),
            name: "web".into(),
            tags: vec!["v1".into()],
            address: String::new(),
            port: 80,
            meta: BTreeMap::new(),
            weights: Weights::default(),
            enable_tag_override: false,
        }
    }

    #[test]
    fn accepts_good_service() {
        service(&ok_service()).unwrap();
    }

    #[test]
    fn names_the_field() {
        let mut s = ok_service();
        s.name = "web_1".into();
        assert_eq!(service(&s).unwrap_err().field, "Name");
        let mut s = ok_service();
        s.name = "a".repeat(64);
        assert_eq!(service(&s).unwrap_err().field, "Name");
        let mut s = ok_service();
        s.id = "a/b".into();
        assert_eq!(service(&s).unwrap_err().field, "ID");
        let mut s = ok_service();
        s.id = "x".repeat(129);
        assert_eq!(service(&s).unwrap_err().field, "ID");
        let mut s = ok_service();
        s.tags = vec!["t".into(); 65];
        assert_eq!(service(&s).unwrap_err().field, "Tags");
        let mut s = ok_service();
        s.tags = vec!["t".repeat(256)];
        assert_eq!(service(&s).unwrap_err().field, "Tags");
        let mut s = ok_service();
        s.meta.insert("bad key".into(), "v".into());
        assert_eq!(service(&s).unwrap_err().field, "Meta");
        let mut s = ok_service();
        s.meta.insert("k".into(), "v".repeat(513));
        assert_eq!(service(&s).unwrap_err().field, "Meta");
        let mut s = ok_service();
        s.weights.passing = 0;
        assert_eq!(service(&s).unwrap_err().field, "Weights.Passing");
        let mut s = ok_service();
        s.address = "not an address!".into();
        assert_eq!(service(&s).unwrap_err().field, "Address");
        assert!(check_id_not_reserved("CheckID", "serfHealth").is_err());
        assert!(check_id_not_reserved("CheckID", "_service_maintenance:web").is_err());
        assert!(check_id_not_reserved("CheckID", "web-check").is_ok());
        assert!(port("Port", 65536).is_err());
        assert!(port("Port", -1).is_err());
        assert_eq!(port("Port", 65535).unwrap(), 65535);
    }

    #[test]
    fn meta_limits() {
        let mut m = BTreeMap::new();
        for i in 0..65 {
            m.insert(format!("k{i}"), "v".into());
        }
        assert!(meta("Meta", &m).is_err());
        m.remove("k0");
        assert!(meta("Meta", &m).is_ok());
    }
}
