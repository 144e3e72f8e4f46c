//! Tokens (HS256 JWTs signed with the server's secret) and the secrets
//! generated at first start.

use std::time::{SystemTime, UNIX_EPOCH};

use chatgw_idgen::UserId;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// What a token says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// The user id, decimal.
    pub sub: String,
    /// The username.
    pub name: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// The user's token version when it was minted: raising the version
    /// (logout, a password change) revokes every token minted before. A
    /// token from before versions existed reads as 0.
    #[serde(default)]
    pub ver: u64,
}

/// A verified token's user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthedUser {
    /// The user.
    pub user_id: UserId,
    /// Their username.
    pub username: String,
    /// The token's version (see [`Claims::ver`]).
    pub token_version: u64,
    /// When the token expires, ms since the Unix epoch.
    pub expires_at_ms: u64,
}

/// Signs and checks tokens with one secret.
#[derive(Clone)]
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys(..)")
    }
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}

impl TokenKeys {
    /// Keys from the secret.
    pub fn new(secret: &[u8]) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "sub"]);
        TokenKeys { encoding: EncodingKey::from_secret(secret), decoding: DecodingKey::from_secret(secret), validation }
    }

    /// A token for `user` valid for `ttl_s` seconds; returns it and its
    /// expiry in ms since the Unix epoch.
    pub fn mint(&self, user: UserId, username: &str, ttl_s: u64, version: u64) -> (String, u64) {
        let iat = now_s();
        let claims = Claims { sub: user.to_string(), name: username.to_string(), exp: iat + ttl_s, iat, ver: version };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of a small claim set cannot fail");
        (token, claims.exp * 1000)
    }

    /// Checks a token's signature, algorithm and expiry.
    pub fn verify(&self, token: &str) -> Option<AuthedUser> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).ok()?;
        let user_id = UserId::parse(&data.claims.sub).ok()?;
        Some(AuthedUser {
            user_id,
            username: data.claims.name,
            token_version: data.claims.ver,
            expires_at_ms: data.claims.exp.saturating_mul(1000),
        })
    }
}

/// 32 random bytes as 64 hex chars: a generated secret or admin token.
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_with_their_secret_and_before_expiry() {
        let keys = TokenKeys::new(b"secret-one");
        let (token, expires_at_ms) = keys.mint(UserId(42), "alice", 60, 3);
        assert!(expires_at_ms > now_s() * 1000);
        let user = AuthedUser { user_id: UserId(42), username: "alice".into(), token_version: 3, expires_at_ms };
        assert_eq!(keys.verify(&token), Some(user));
        assert_eq!(TokenKeys::new(b"secret-two").verify(&token), None, "forged");
        assert_eq!(keys.verify("not.a.token"), None);
        assert_eq!(keys.verify(""), None);
        let claims = Claims { sub: "42".into(), name: "alice".into(), exp: now_s() - 10, iat: now_s() - 100, ver: 0 };
        let expired = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &keys.encoding).unwrap();
        assert_eq!(keys.verify(&expired), None, "expired");
        assert_eq!(generate_secret().len(), 64);
    }
}
