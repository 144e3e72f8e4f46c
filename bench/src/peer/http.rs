//! The peer's HTTP side on hyper: signup, login, readiness, and the
//! WebSocket upgrade at `/v1/ws`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use super::state::{State, user_id};
use super::{PeerError, Settings, session};

/// Tokens last a day.
const TOKEN_TTL_S: u64 = 86_400;

/// Request bodies are read up to this.
const BODY_BYTES_MAX: usize = 64 << 10;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
}

/// The HTTP server: its state, settings and token keys.
pub struct Server {
    state: Arc<State>,
    settings: Arc<Settings>,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_secs())
}

fn answer(status: u16, body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert("content-type", "application/json".parse().expect("a valid header value"));
    response
}

fn failure(error: &PeerError) -> Response<Full<Bytes>> {
    answer(error.status(), &json!({ "error": error.body() }))
}

fn valid_username(name: &str) -> bool {
    (3..=32).contains(&name.len())
        && name.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_')
}

fn valid_device(device: &str) -> bool {
    (1..=64).contains(&device.len())
        && device.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
}

fn query_param(request: &Request<Incoming>, name: &str) -> Option<String> {
    let query = request.uri().query()?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| value.to_string())
    })
}

impl Server {
    /// A server over `state` with `settings`.
    pub fn new(state: Arc<State>, settings: Settings) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_required_spec_claims(&["exp", "sub"]);
        Server {
            state,
            encoding: EncodingKey::from_secret(settings.jwt_secret.as_bytes()),
            decoding: DecodingKey::from_secret(settings.jwt_secret.as_bytes()),
            validation,
            settings: Arc::new(settings),
        }
    }

    /// Accepts connections on `listener` until the process ends, each on a
    /// task of its own.
    pub async fn run(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let server = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let server = server.clone();
                    async move { Ok::<_, Infallible>(server.route(request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    }

    async fn route(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = request.uri().path().to_string();
        let outcome = match (request.method(), path.as_str()) {
            (&Method::GET, "/healthz" | "/readyz") => Ok(answer(200, &json!({ "ok": true }))),
            (&Method::POST, "/v1/signup") => self.signup(request).await,
            (&Method::POST, "/v1/login") => self.login(request).await,
            (&Method::GET, "/v1/ws") => self.upgrade(request),
            _ => Err(PeerError::NotFound("no such route")),
        };
        outcome.unwrap_or_else(|error| failure(&error))
    }

    fn mint(&self, username: &str) -> (String, u64) {
        let claims = Claims { sub: username.to_string(), exp: now_s() + TOKEN_TTL_S };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .expect("HS256 signing of a small claim set cannot fail");
        (token, claims.exp * 1000)
    }

    async fn credentials(request: Request<Incoming>) -> Result<(String, String), PeerError> {
        let body = Limited::new(request.into_body(), BODY_BYTES_MAX)
            .collect()
            .await
            .map_err(|error| PeerError::BadRequest(format!("reading the body: {error}")))?
            .to_bytes();
        let body: Value = serde_json::from_slice(&body).map_err(|_| PeerError::BadRequest("not JSON".into()))?;
        let (Some(username), Some(password)) = (body["username"].as_str(), body["password"].as_str()) else {
            return Err(PeerError::BadRequest("`username` and `password` are needed".into()));
        };
        Ok((username.to_string(), password.to_string()))
    }

    async fn signup(&self, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, PeerError> {
        let (username, password) = Self::credentials(request).await?;
        if !valid_username(&username) || password.len() < 8 {
            return Err(PeerError::BadRequest("a username is 3 to 32 of a-z 0-9 _, a password 8 chars or more".into()));
        }
        // Argon2id off the runtime's threads, as any async server must.
        let hash = tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut OsRng);
            Argon2::default().hash_password(password.as_bytes(), &salt).map(|hash| hash.to_string())
        })
        .await
        .map_err(|error| PeerError::Internal(error.to_string()))?
        .map_err(|error| PeerError::Internal(error.to_string()))?;
        if !self.state.add_account(&username, hash) {
            return Err(PeerError::UsernameTaken);
        }
        let (token, expires_at) = self.mint(&username);
        Ok(answer(
            201,
            &json!({ "user_id": user_id(&username), "username": username, "token": token, "expires_at": expires_at }),
        ))
    }

    async fn login(&self, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, PeerError> {
        let (username, password) = Self::credentials(request).await?;
        let hash = self.state.password_hash(&username).ok_or(PeerError::Unauthorized)?;
        let matches = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .is_ok_and(|hash| Argon2::default().verify_password(password.as_bytes(), &hash).is_ok())
        })
        .await
        .map_err(|error| PeerError::Internal(error.to_string()))?;
        if !matches {
            return Err(PeerError::Unauthorized);
        }
        let (token, expires_at) = self.mint(&username);
        Ok(answer(200, &json!({ "user_id": user_id(&username), "token": token, "expires_at": expires_at })))
    }

    fn upgrade(&self, mut request: Request<Incoming>) -> Result<Response<Full<Bytes>>, PeerError> {
        let bearer = request
            .headers()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::to_string);
        let token = bearer.or_else(|| query_param(&request, "token")).ok_or(PeerError::Unauthorized)?;
        let claims = jsonwebtoken::decode::<Claims>(&token, &self.decoding, &self.validation)
            .map_err(|_| PeerError::Unauthorized)?
            .claims;
        let device = query_param(&request, "device").unwrap_or_else(|| format!("d{}", now_s()));
        if !valid_device(&device) {
            return Err(PeerError::BadRequest("a device id is 1 to 64 of A-Z a-z 0-9 _ -".into()));
        }
        let response = tokio_tungstenite::tungstenite::handshake::server::create_response_with_body(&request, || {
            Full::new(Bytes::new())
        })
        .map_err(|error| PeerError::BadRequest(format!("not a WebSocket upgrade: {error}")))?;
        let user = self.state.know(&claims.sub);
        let (state, settings) = (self.state.clone(), self.settings.clone());
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let mut config = WebSocketConfig::default().max_frame_size(Some(2 << 20)).max_message_size(Some(2 << 20));
            if let Some(bytes) = settings.read_buffer_bytes {
                config = config.read_buffer_size(bytes.max(1024));
            }
            let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
            session::serve(ws, state, settings, user, device).await;
        });
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_devices_follow_the_contract() {
        assert!(valid_username("lg_12ab"));
        for bad in ["ab", "Upper", "has space", &"x".repeat(33)] {
            assert!(!valid_username(bad), "{bad}");
        }
        assert!(valid_device("phone-1_A"));
        assert!(!valid_device("") && !valid_device("a/b") && !valid_device(&"d".repeat(65)));
    }
}
