//! What an HTTP write token may do (SPEC §11): the all-powerful `[http] token`, and scoped
//! `[[http.tokens]]` that may write only the services whose names match their patterns
//! (`web`, `api-*`; `*` is any run of characters, names compare without case as DNS
//! names do) and, with `agent = true`, the agent-wide operations. The HTTP layer turns a
//! request into the [`Action`]s it needs and asks [`Grant::allows`] for each; the answer's
//! reason is what the 403 says.

/// What a request needs to be allowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action<'a> {
    /// Register, change or deregister an instance of this service, or update its checks.
    Service(&'a str),
    /// An agent-wide operation, named for the refusal (e.g. "join", "keyring").
    Agent(&'a str),
}

/// A scoped token's rights.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Scope {
    pub services: Vec<String>,
    pub agent: bool,
}

/// Who is asking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grant {
    /// No token is configured (writes open to whoever reaches client_addr), or the full
    /// `[http] token` was given.
    Full,
    /// A `[[http.tokens]]` secret was given.
    Scoped(Scope),
    /// Tokens are configured and the request carried none that matches.
    Anonymous,
}

/// Whether `name` matches `pattern`, where `*` stands for any run of characters.
pub fn glob(pattern: &str, name: &str) -> bool {
    let p: Vec<u8> = pattern.bytes().map(|b| b.to_ascii_lowercase()).collect();
    let n: Vec<u8> = name.bytes().map(|b| b.to_ascii_lowercase()).collect();
    // Iterative wildcard match with backtracking to the last star: linear in practice,
    // O(len(p) * len(n)) at worst, and both are short names.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|b| *b == b'*')
}

impl Scope {
    pub fn may_write_service(&self, name: &str) -> bool {
        self.services.iter().any(|p| glob(p, name))
    }
}

impl Grant {
    /// Ok, or the reason the action is refused (the text of the 403).
    pub fn allows(&self, action: Action<'_>) -> Result<(), String> {
        match (self, action) {
            (Grant::Full, _) => Ok(()),
            (Grant::Anonymous, _) => Err(
                "a token is required for writes (X-Consul-Token or Authorization: Bearer)".into(),
            ),
            (Grant::Scoped(s), Action::Service(name)) => {
                if s.may_write_service(name) {
                    Ok(())
                } else if s.services.is_empty() {
                    Err(format!(
                        "this token may not write service {name:?} (it may write no services)"
                    ))
                } else {
                    Err(format!(
                        "this token may not write service {name:?} (it may write: {})",
                        s.services.join(", ")
                    ))
                }
            }
            (Grant::Scoped(s), Action::Agent(what)) => {
                if s.agent {
                    Ok(())
                } else {
                    Err(format!(
                        "this token may not {what}: agent operations need a token with agent = true"
                    ))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("web", "web"));
        assert!(glob("web", "WEB"));
        assert!(!glob("web", "web-1"));
        assert!(glob("web*", "web"));
        assert!(glob("web*", "web-1"));
        assert!(!glob("web*", "db"));
        assert!(glob("api-*", "api-v2"));
        assert!(!glob("api-*", "api"));
        assert!(glob("*-cache", "redis-cache"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(glob("*", "anything"));
        assert!(!glob("", "x"));
        assert!(glob("**a**", "bab"));
    }

    #[test]
    fn grants() {
        let web = Grant::Scoped(Scope {
            services: vec!["web*".into()],
            agent: false,
        });
        assert!(web.allows(Action::Service("web-1")).is_ok());
        let e = web.allows(Action::Service("db")).unwrap_err();
        assert!(e.contains("\"db\"") && e.contains("web*"), "{e}");
        let e = web.allows(Action::Agent("join")).unwrap_err();
        assert!(e.contains("may not join"), "{e}");
        let ops = Grant::Scoped(Scope {
            services: vec![],
            agent: true,
        });
        assert!(ops.allows(Action::Agent("reload")).is_ok());
        assert!(ops
            .allows(Action::Service("web"))
            .unwrap_err()
            .contains("no services"));
        assert!(Grant::Full.allows(Action::Agent("leave")).is_ok());
        assert!(Grant::Anonymous.allows(Action::Service("web")).is_err());
    }
}
