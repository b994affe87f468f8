//! Who may write (SPEC §11): the request's token is matched in constant time against the
//! full `[http] token` and the `[[http.tokens]]` secrets (read from the live config, so a
//! reload applies token changes at once), and every write is mapped to the actions it
//! needs ([`muster_proto::acl`]) before its handler runs. Unknown writes need agent
//! rights (default deny), so a new endpoint cannot slip past a scoped token.

use super::{ApiError, Call};
use crate::config::Config;
use hyper::Method;
use muster_proto::acl::{Action, Grant, Scope};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// The grant of a request carrying `given` (or no token). Secrets are compared as
/// SHA-256 digests with `subtle`, so neither their bytes nor their lengths show in the
/// time taken, and every configured token is compared whatever matched first.
pub fn grant(config: &Config, given: Option<&str>) -> Grant {
    let http = &config.http;
    if http.token.is_none() && http.tokens.is_empty() {
        return Grant::Full;
    }
    let Some(given) = given else {
        return Grant::Anonymous;
    };
    let digest = Sha256::digest(given.as_bytes());
    let full = http
        .token
        .as_ref()
        .map(|t| {
            digest
                .as_slice()
                .ct_eq(Sha256::digest(t.as_bytes()).as_slice())
        })
        .unwrap_or_else(|| 0u8.ct_eq(&1u8));
    let mut found = u32::MAX;
    for (i, t) in http.tokens.iter().enumerate() {
        let m = digest
            .as_slice()
            .ct_eq(Sha256::digest(t.secret.as_bytes()).as_slice());
        found.conditional_assign(&(i as u32), m);
    }
    if bool::from(full) {
        return Grant::Full;
    }
    match http.tokens.get(found as usize) {
        Some(t) => Grant::Scoped(Scope {
            services: t.services.clone(),
            agent: t.agent,
        }),
        None => Grant::Anonymous,
    }
}

fn need(grant: &Grant, action: Action<'_>) -> Result<(), ApiError> {
    grant.allows(action).map_err(ApiError::Forbidden)
}

/// Checks everything `call` needs under `grant`. Reads are open except the keyring
/// listing (it shows the secret keys). Requests whose target does not exist pass here
/// and get their 404 or 400 from the handler.
pub fn authorize(call: &Call, grant: &Grant) -> Result<(), ApiError> {
    if *grant == Grant::Full {
        return Ok(());
    }
    let segs: Vec<&str> = call.segments.iter().map(String::as_str).collect();
    let write = matches!(call.method, Method::PUT | Method::POST | Method::DELETE);
    if let ["operator", "keyring"] = segs.as_slice() {
        return need(grant, Action::Agent("list or change the gossip keyring"));
    }
    if !write {
        return Ok(());
    }
    let local = call.shared.state.local();
    let service_of = |id: &str| local.services.get(id).map(|s| s.name.clone());
    // A check's service, or None for a node-level check (Err when the check is unknown).
    let check_owner = |id: &str| -> Result<Option<String>, ()> {
        let c = local.checks.get(id).ok_or(())?;
        if c.service_id.is_empty() {
            Ok(None)
        } else {
            Ok(Some(service_of(&c.service_id).unwrap_or_default()))
        }
    };
    let check_action = |id: &str, what: &'static str| -> Result<(), ApiError> {
        match check_owner(id) {
            Ok(Some(name)) => need(grant, Action::Service(&name)),
            Ok(None) => need(grant, Action::Agent(what)),
            Err(()) => Ok(()),
        }
    };
    match segs.as_slice() {
        ["agent", "service", "register"] => {
            let Ok(body) = call.json_body("a service definition") else {
                return Ok(());
            };
            let Ok(reg) = muster_proto::consul::parse_registration(&body) else {
                return Ok(());
            };
            need(grant, Action::Service(&reg.service.name))?;
            // Re-registering an id that another service holds replaces that instance.
            if let Some(existing) = service_of(&reg.service.id) {
                need(grant, Action::Service(&existing))?;
            }
            Ok(())
        }
        ["agent", "service", "deregister", id] => match service_of(id) {
            Some(name) => need(grant, Action::Service(&name)),
            None => Ok(()),
        },
        ["agent", "service", "maintenance", id] => match service_of(id) {
            // Maintenance of a service: its writer, or a token with agent rights.
            Some(name) => need(grant, Action::Service(&name)).or_else(|e| {
                need(grant, Action::Agent("put services in maintenance")).map_err(|_| e)
            }),
            None => Ok(()),
        },
        ["agent", "maintenance"] => need(grant, Action::Agent("put the node in maintenance")),
        ["agent", "check", "register"] => {
            let Ok(body) = call.json_body("a check definition") else {
                return Ok(());
            };
            let Ok(check) = muster_proto::consul::parse_check(&body, "body", "", "") else {
                return Ok(());
            };
            if check.service_id.is_empty() {
                need(grant, Action::Agent("register node-level checks"))?;
            } else if let Some(name) = service_of(&check.service_id) {
                need(grant, Action::Service(&name))?;
            }
            check_action(&check.id, "replace node-level checks")
        }
        ["agent", "check", "deregister", id] => check_action(id, "deregister node-level checks"),
        ["agent", "check", "pass" | "warn" | "fail" | "update", id] => {
            check_action(id, "update node-level checks")
        }
        ["agent", "join", _] => need(grant, Action::Agent("join")),
        ["agent", "leave"] => need(grant, Action::Agent("leave")),
        ["agent", "force-leave", _] => need(grant, Action::Agent("force-leave")),
        ["agent", "reload"] => need(grant, Action::Agent("reload")),
        _ => need(grant, Action::Agent("use this endpoint")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ScopedToken;

    fn config(full: Option<&str>, scoped: &[(&str, &[&str], bool)]) -> Config {
        let mut c = Config::dev();
        c.http.token = full.map(str::to_string);
        c.http.tokens = scoped
            .iter()
            .map(|(s, services, agent)| ScopedToken {
                secret: s.to_string(),
                services: services.iter().map(|x| x.to_string()).collect(),
                agent: *agent,
            })
            .collect();
        c
    }

    #[test]
    fn tokens_map_to_grants() {
        assert_eq!(grant(&config(None, &[]), None), Grant::Full);
        let c = config(
            Some("root"),
            &[("web-secret", &["web*"], false), ("ops", &[], true)],
        );
        assert_eq!(grant(&c, Some("root")), Grant::Full);
        assert_eq!(grant(&c, None), Grant::Anonymous);
        assert_eq!(grant(&c, Some("roo")), Grant::Anonymous);
        assert_eq!(grant(&c, Some("rootx")), Grant::Anonymous);
        assert_eq!(
            grant(&c, Some("web-secret")),
            Grant::Scoped(Scope {
                services: vec!["web*".into()],
                agent: false
            })
        );
        assert!(matches!(
            grant(&c, Some("ops")),
            Grant::Scoped(Scope { agent: true, .. })
        ));
        // Scoped tokens alone also close writes to anonymous callers.
        let only = config(None, &[("t", &["a"], false)]);
        assert_eq!(grant(&only, Some("other")), Grant::Anonymous);
    }
}
