//! The push webhook's HTTP client, checked at start: the URL
//! (`--push-webhook`, http or https) and the agent that POSTs to it, with
//! the push timeout and, for https, the roots its server must chain to
//! (Mozilla's, or `--push-webhook-ca`'s certificates).

use std::path::Path;

use ureq::tls::{PemItem, RootCerts, TlsConfig};

use crate::config::Config;
use crate::error::ServeError;
use crate::limits;

/// Refuses a webhook that is not an absolute http or https URL with a host.
pub fn check_url(webhook: &str) -> Result<(), ServeError> {
    let refused = |why: &str| ServeError::Config(format!("--push-webhook {webhook:?}: {why}"));
    let uri: hyper::Uri = webhook.parse().map_err(|error| refused(&format!("not a URL ({error})")))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(refused("must start with http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(refused("has no host"));
    }
    Ok(())
}

/// The agent that POSTs pushes: statuses are answers, not errors; every
/// POST ends within `PUSH_HTTP_TIMEOUT`; TLS trusts `config`'s CA file
/// alone when one is given.
pub fn agent(config: &Config) -> Result<ureq::Agent, ServeError> {
    let mut builder =
        ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(limits::PUSH_HTTP_TIMEOUT));
    if let Some(path) = &config.push_webhook_ca {
        let roots = RootCerts::new_with_certs(&certificates(path)?);
        builder = builder.tls_config(TlsConfig::builder().root_certs(roots).build());
    }
    Ok(builder.build().into())
}

/// Every certificate of a PEM file (other items skipped); at least one.
fn certificates(path: &Path) -> Result<Vec<ureq::tls::Certificate<'static>>, ServeError> {
    let refused = |why: String| ServeError::Config(format!("--push-webhook-ca {}: {why}", path.display()));
    let pem = std::fs::read(path).map_err(|error| refused(error.to_string()))?;
    let mut certificates = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item.map_err(|error| refused(format!("not PEM ({error})")))? {
            PemItem::Certificate(certificate) => certificates.push(certificate),
            _ => continue,
        }
    }
    if certificates.is_empty() {
        return Err(refused("holds no certificate".into()));
    }
    Ok(certificates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config { push_webhook_ca: Some(dir.path().join("missing.pem")), ..Config::default() };
        assert!(agent(&config).unwrap_err().to_string().contains("missing.pem"));
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no pem here\n").unwrap();
        config.push_webhook_ca = Some(empty);
        assert!(agent(&config).unwrap_err().to_string().contains("holds no certificate"));
        let ca = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/gateway/fixtures/webhook-ca.pem");
        config.push_webhook_ca = Some(ca.into());
        agent(&config).expect("the fixture CA is taken");
    }

    #[test]
    fn only_absolute_http_urls_are_webhooks() {
        for good in ["http://127.0.0.1:9/push", "https://hooks.example.com/push"] {
            check_url(good).unwrap();
        }
        for bad in ["ftp://example.com/push", "not a url", "http://", "/push"] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }
}
