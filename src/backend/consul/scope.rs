//! Namespace and partition (Consul Enterprise): make sure the agent will honour them before the
//! first request, so a lock never silently lands in the default namespace (README, "Consul
//! connection").

use reqwest::{Method, StatusCode};

use super::client::ConsulClient;
use crate::backend::error::BackendError;

impl ConsulClient {
    /// Makes sure the agent will honour the namespace and partition rather than silently
    /// ignore them and lock in the default ones, where a holder would not exclude one in the
    /// intended scope. Agents that know the parameters refuse them when they cannot serve
    /// them; older ones ignore them, so those are told apart by version (namespaces came in
    /// 1.7, admin partitions in 1.11). Runs once; a failure is not cached.
    pub(super) async fn check_scope(&self) -> Result<(), BackendError> {
        if self.namespace.is_none() && self.partition.is_none() {
            return Ok(());
        }
        self.scope_checked
            .get_or_try_init(|| async {
                let response = self
                    .unscoped(Method::GET, "agent/self")
                    .send()
                    .await
                    .map_err(|err| self.transport_error(err))?;
                // `agent/self` needs `agent:read`, which a token made for locking may lack.
                // Without the version a partition cannot be trusted (every agent before 1.11
                // ignores it); a namespace can, as only agents before 1.7 ignore it. Any other
                // failure (a proxy's 401, a 5xx) is reported as for any request.
                let self_info = if response.status() == StatusCode::FORBIDDEN {
                    if let Some(partition) = &self.partition {
                        return Err(BackendError::Denied(format!(
                            "cannot confirm that Consul at {} honours partition {partition:?} \
                             (agents before 1.11 ignore it): reading its version from \
                             /v1/agent/self needs a token with agent:read",
                            self.display_address
                        )));
                    }
                    None
                } else {
                    let response = self.check_status(response).await?;
                    response.json::<AgentSelf>().await.ok()
                };
                let version = self_info.map(|info| info.config.version);
                if let Some(message) = self.scope_unsupported(version.as_deref()) {
                    return Err(BackendError::Invalid(message));
                }
                if version.is_none() {
                    tracing::debug!(
                        "cannot read the Consul version at {} (agent/self); trusting it to refuse a namespace it cannot honour",
                        self.display_address
                    );
                }
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// Why an agent of `version` would ignore the configured scope, if it would.
    pub(super) fn scope_unsupported(&self, version: Option<&str>) -> Option<String> {
        let version = version?;
        let (major, minor) = major_minor(version)?;
        let (what, setting, value, since) = match (&self.namespace, &self.partition) {
            (_, Some(partition)) if (major, minor) < (1, 11) => {
                ("admin partitions", "partition", partition, "1.11")
            }
            (Some(ns), _) if (major, minor) < (1, 7) => ("namespaces", "namespace", ns, "1.7"),
            _ => return None,
        };
        Some(format!(
            "Consul at {} is version {version}, which predates {what} (Consul Enterprise \
             {since}+) and would ignore {setting} {value:?}, locking outside it; {}",
            self.display_address,
            self.scope_hint()
        ))
    }

    /// The one-line message for an agent that refused the namespace or partition.
    pub(super) fn scope_refused(&self, body: &str) -> String {
        // "Bad request: Invalid query parameter: \"ns\" - Namespaces are a Consul Enterprise
        // feature": the part after the dash says it all.
        let reason = body.rsplit(" - ").next().unwrap_or(body);
        let scope: Vec<String> = [
            ("namespace", &self.namespace),
            ("partition", &self.partition),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.as_ref().map(|v| format!("{name} {v:?}")))
        .collect();
        format!(
            "Consul at {} cannot use {}: {reason}; {}",
            self.display_address,
            scope.join(" and "),
            self.scope_hint()
        )
    }

    pub(super) fn scope_hint(&self) -> &'static str {
        "unset --namespace/--partition (CONSUL_NAMESPACE/CONSUL_PARTITION) or use a Consul Enterprise agent that supports them"
    }
}

/// The fields of `GET /v1/agent/self` that the scope check reads.
#[derive(serde::Deserialize)]
struct AgentSelf {
    #[serde(rename = "Config")]
    config: AgentConfig,
}

#[derive(serde::Deserialize)]
struct AgentConfig {
    #[serde(rename = "Version")]
    version: String,
}

/// `(major, minor)` of a Consul version such as `1.8.7`, `1.11.0+ent` or `1.15.2-rc1`.
fn major_minor(version: &str) -> Option<(u32, u32)> {
    let mut parts = version.trim_start_matches('v').split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts
        .next()?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::consul::ConsulSettings;

    #[test]
    fn versions_that_would_ignore_the_scope() {
        assert_eq!(major_minor("1.8.7"), Some((1, 8)));
        assert_eq!(major_minor("1.11.0+ent"), Some((1, 11)));
        assert_eq!(major_minor("1.15.2-rc1"), Some((1, 15)));
        assert_eq!(major_minor("dev"), None);
        let client = |ns: Option<&str>, partition: Option<&str>| {
            ConsulClient::new(&ConsulSettings {
                address: "127.0.0.1:8500".into(),
                namespace: ns.map(str::to_string),
                partition: partition.map(str::to_string),
                ..Default::default()
            })
            .unwrap()
        };
        let partitioned = client(None, Some("p1"));
        let refused = partitioned.scope_unsupported(Some("1.8.7")).unwrap();
        assert!(
            refused.contains("\"p1\"") && refused.contains("1.11"),
            "{refused}"
        );
        assert_eq!(partitioned.scope_unsupported(Some("1.11.0+ent")), None);
        assert_eq!(partitioned.scope_unsupported(None), None);
        let namespaced = client(Some("ns1"), None);
        assert!(namespaced.scope_unsupported(Some("1.6.2")).is_some());
        assert_eq!(namespaced.scope_unsupported(Some("1.8.7")), None);
    }
}
