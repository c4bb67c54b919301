//! Who a namespace socket is and what it may do: JWT verification of the
//! CONNECT payload and room permissions.
//!
//! A token is `{"token": "<JWT>"}` in the CONNECT payload. Its algorithm is
//! pinned by configuration (HS256 with a secret, RS256/ES256 with a PEM
//! public key), so a token signed otherwise, or with `none`, is refused;
//! `exp` is required, `nbf`, `aud` and `iss` are checked. Claims: `sub` (the
//! user id), `subscribe` and `publish` (room patterns, `*` and `?`
//! wildcards). Verification is `jsonwebtoken`'s; patterns are `wildmatch`'s.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{decode, errors::ErrorKind, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use wildmatch::WildMatch;

use crate::config::AuthSettings;

/// Room permissions of one namespace socket.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The user id (`sub`), absent for anonymous sockets.
    pub user: Option<String>,
    /// Patterns of rooms it may subscribe to (shared: every anonymous
    /// socket has the same ones).
    pub subscribe: Arc<[WildMatch]>,
    /// Patterns of rooms it may publish to.
    pub publish: Arc<[WildMatch]>,
    /// When the token expires.
    pub expires: Option<SystemTime>,
}

impl Identity {
    /// Whether it may subscribe to `room`.
    pub fn may_subscribe(&self, room: &str) -> bool {
        self.subscribe.iter().any(|p| p.matches(room))
    }

    /// Whether it may publish to `room`.
    pub fn may_publish(&self, room: &str) -> bool {
        self.publish.iter().any(|p| p.matches(room))
    }
    /// As a recovery session's `data` (`socket.data`): `{user, subscribe,
    /// publish}` with the room patterns as written. The expiry is not kept:
    /// a socket restored from it (`recovery.verify_token = false`) has none.
    pub fn to_data(&self) -> serde_json::Value {
        let patterns = |v: &[WildMatch]| v.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        serde_json::json!({
            "user": self.user,
            "subscribe": patterns(&self.subscribe),
            "publish": patterns(&self.publish),
        })
    }

    /// The identity [`Self::to_data`] wrote (missing members: none, no
    /// room), e.g. restored from a session another server stored.
    pub fn from_data(data: &serde_json::Value) -> Identity {
        let patterns = |key: &str| {
            data.get(key)
                .and_then(serde_json::Value::as_array)
                .map(|a| a.iter().filter_map(|p| p.as_str()).map(WildMatch::new).collect())
                .unwrap_or_else(|| Arc::from([]))
        };
        Identity {
            user: data.get("user").and_then(serde_json::Value::as_str).map(str::to_owned),
            subscribe: patterns("subscribe"),
            publish: patterns("publish"),
            expires: None,
        }
    }
}

/// Why a CONNECT was refused; `code` goes to the client in
/// `CONNECT_ERROR.data.code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthError {
    /// Stable code: `auth_required`, `invalid_token`, `token_expired`.
    pub code: &'static str,
    /// Human-readable message.
    pub message: &'static str,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    #[serde(default)]
    subscribe: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    exp: u64,
}

/// Why `[auth]` cannot make a [`Verifier`].
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// `auth.jwt_algorithm` is none of the supported ones.
    #[error("unsupported algorithm {0:?} (HS256, RS256 or ES256)")]
    Algorithm(String),
    /// `auth.jwt_secret` is too short for HS256.
    #[error("the HS256 secret must be at least 32 bytes")]
    ShortSecret,
    /// `auth.jwt_public_key_file` cannot be read.
    #[error("public key {path:?} could not be read: {source}")]
    KeyUnreadable {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// `auth.jwt_public_key_file` holds no key of the algorithm.
    #[error("public key {path:?} is not a PEM key: {source}")]
    KeyInvalid {
        /// The file.
        path: String,
        /// Why.
        source: jsonwebtoken::errors::Error,
    },
}

impl SettingsError {
    /// The configuration key at fault.
    pub fn key(&self) -> &'static str {
        match self {
            SettingsError::Algorithm(_) => "auth.jwt_algorithm",
            SettingsError::ShortSecret => "auth.jwt_secret",
            SettingsError::KeyUnreadable { .. } | SettingsError::KeyInvalid { .. } => "auth.jwt_public_key_file",
        }
    }
}

/// Checks CONNECT payloads.
#[derive(Clone)]
pub struct Verifier {
    jwt: Option<(DecodingKey, Validation)>,
    anonymous_namespaces: Vec<String>,
    anonymous_subscribe: Arc<[WildMatch]>,
    anonymous_publish: Arc<[WildMatch]>,
}

impl Verifier {
    /// Builds the verifier; the error says what is wrong with the settings
    /// and names the key.
    pub fn from_settings(s: &AuthSettings) -> Result<Verifier, SettingsError> {
        let jwt = match s.jwt_algorithm.as_str() {
            "" => None,
            alg @ ("HS256" | "RS256" | "ES256") => {
                let algorithm: Algorithm = alg.parse().map_err(|_| SettingsError::Algorithm(alg.to_owned()))?;
                let key = if algorithm == Algorithm::HS256 {
                    if s.jwt_secret.len() < 32 {
                        return Err(SettingsError::ShortSecret);
                    }
                    DecodingKey::from_secret(s.jwt_secret.as_bytes())
                } else {
                    let path = || s.jwt_public_key_file.clone();
                    let pem = std::fs::read(&s.jwt_public_key_file)
                        .map_err(|source| SettingsError::KeyUnreadable { path: path(), source })?;
                    let key = if algorithm == Algorithm::RS256 {
                        DecodingKey::from_rsa_pem(&pem)
                    } else {
                        DecodingKey::from_ec_pem(&pem)
                    };
                    key.map_err(|source| SettingsError::KeyInvalid { path: path(), source })?
                };
                let mut validation = Validation::new(algorithm);
                validation.leeway = s.jwt_leeway_s;
                validation.validate_nbf = true;
                // A configured `aud`/`iss` must also be present in the token.
                let mut required = vec!["exp"];
                if s.jwt_audience.is_empty() {
                    validation.validate_aud = false;
                } else {
                    validation.set_audience(&[&s.jwt_audience]);
                    required.push("aud");
                }
                if !s.jwt_issuer.is_empty() {
                    validation.set_issuer(&[&s.jwt_issuer]);
                    required.push("iss");
                }
                validation.set_required_spec_claims(&required);
                Some((key, validation))
            }
            other => return Err(SettingsError::Algorithm(other.to_owned())),
        };
        Ok(Verifier {
            jwt,
            anonymous_namespaces: s.anonymous_namespaces.clone(),
            anonymous_subscribe: patterns(&s.anonymous_subscribe),
            anonymous_publish: patterns(&s.anonymous_publish),
        })
    }

    /// Decides a CONNECT to `nsp` with payload `auth`.
    pub fn check(&self, nsp: &str, auth: &serde_json::Value) -> Result<Identity, AuthError> {
        const INVALID: AuthError = AuthError {
            code: "invalid_token",
            message: "Invalid token",
        };
        // Without a configured key no token can be verified, and none can
        // grant anything: the socket is judged as anonymous.
        let token = auth.get("token").filter(|_| self.jwt.is_some());
        match token {
            None | Some(serde_json::Value::Null) => {
                if self.anonymous_namespaces.iter().any(|n| n == nsp) {
                    Ok(Identity {
                        user: None,
                        subscribe: self.anonymous_subscribe.clone(),
                        publish: self.anonymous_publish.clone(),
                        expires: None,
                    })
                } else {
                    Err(AuthError {
                        code: "auth_required",
                        message: "Authentication required",
                    })
                }
            }
            Some(serde_json::Value::String(token)) => {
                // unwrap: `token` is only set when a key is configured.
                let (key, validation) = self.jwt.as_ref().unwrap();
                let data = decode::<Claims>(token, key, validation).map_err(|e| match e.kind() {
                    ErrorKind::ExpiredSignature => AuthError {
                        code: "token_expired",
                        message: "Token expired",
                    },
                    _ => INVALID,
                })?;
                let c = data.claims;
                // RFC 7519 §4.1.4: expired from `exp` on (jsonwebtoken
                // accepts the whole second of `exp`, so a token refused by
                // the live expiry would connect again within that second).
                if c.exp.saturating_add(validation.leeway) <= now_secs() {
                    return Err(AuthError {
                        code: "token_expired",
                        message: "Token expired",
                    });
                }
                // An `exp` past what a `SystemTime` holds (above `i64::MAX`
                // seconds on Unix) is no time at all: `UNIX_EPOCH + exp`
                // would panic the connection actor, so the token is refused.
                let expires = UNIX_EPOCH.checked_add(Duration::from_secs(c.exp)).ok_or(INVALID)?;
                Ok(Identity {
                    user: c.sub,
                    subscribe: patterns(&c.subscribe),
                    publish: patterns(&c.publish),
                    expires: Some(expires),
                })
            }
            Some(_) => Err(INVALID),
        }
    }
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("jwt", &self.jwt.as_ref().map(|(_, v)| &v.algorithms))
            .field("anonymous_namespaces", &self.anonymous_namespaces)
            .finish_non_exhaustive()
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn patterns(list: &[String]) -> Arc<[WildMatch]> {
    list.iter().map(|p| WildMatch::new(p)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn settings() -> AuthSettings {
        AuthSettings {
            anonymous_namespaces: vec!["/".into()],
            anonymous_subscribe: vec!["public:*".into()],
            anonymous_publish: vec![],
            jwt_algorithm: "HS256".into(),
            jwt_secret: SECRET.into(),
            jwt_public_key_file: String::new(),
            jwt_audience: "roomcast".into(),
            jwt_issuer: String::new(),
            jwt_leeway_s: 0,
        }
    }

    fn now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    fn token(claims: serde_json::Value, alg: Algorithm) -> String {
        encode(&Header::new(alg), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
    }

    #[test]
    fn valid_token_gives_user_and_patterns() {
        let v = Verifier::from_settings(&settings()).unwrap();
        let t = token(
            json!({"sub": "ann", "aud": "roomcast", "exp": now() + 60, "subscribe": ["chat:*"], "publish": ["chat:ann"]}),
            Algorithm::HS256,
        );
        let id = v.check("/private", &json!({ "token": t })).unwrap();
        assert_eq!(id.user.as_deref(), Some("ann"));
        assert!(id.may_subscribe("chat:lobby"));
        assert!(!id.may_subscribe("admin"));
        assert!(id.may_publish("chat:ann"));
        assert!(!id.may_publish("chat:bob"));
    }

    #[test]
    fn bad_tokens_are_refused_with_codes() {
        let v = Verifier::from_settings(&settings()).unwrap();
        let check = |t: String| v.check("/", &json!({ "token": t })).unwrap_err().code;
        assert_eq!(
            check(token(json!({"aud": "roomcast", "exp": now() - 10}), Algorithm::HS256)),
            "token_expired"
        );
        assert_eq!(
            check(token(json!({"aud": "other", "exp": now() + 60}), Algorithm::HS256)),
            "invalid_token"
        );
        assert_eq!(
            check(token(json!({"exp": now() + 60}), Algorithm::HS256)),
            "invalid_token"
        );
        assert_eq!(
            check(token(json!({"aud": "roomcast", "exp": now()}), Algorithm::HS256)),
            "token_expired"
        );
        assert_eq!(
            check(token(json!({"aud": "roomcast"}), Algorithm::HS256)),
            "invalid_token"
        );
        assert_eq!(
            check(token(json!({"aud": "roomcast", "exp": now() + 60}), Algorithm::HS384)),
            "invalid_token"
        );
        assert_eq!(
            check(token(
                json!({"aud": "roomcast", "exp": now() + 60, "nbf": now() + 30}),
                Algorithm::HS256
            )),
            "invalid_token"
        );
        assert_eq!(check("not.a.jwt".into()), "invalid_token");
        // An unsigned token ("alg":"none").
        let unsigned = format!(
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
            base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                format!(r#"{{"aud":"roomcast","exp":{}}}"#, now() + 60)
            )
        );
        assert_eq!(check(unsigned), "invalid_token");
        assert_eq!(v.check("/", &json!({"token": 5})).unwrap_err().code, "invalid_token");
    }

    #[test]
    fn an_exp_past_what_a_system_time_holds_is_an_invalid_token() {
        let v = Verifier::from_settings(&settings()).unwrap();
        let check = |exp: u64| {
            let t = token(json!({"aud": "roomcast", "exp": exp}), Algorithm::HS256);
            v.check("/", &json!({ "token": t }))
        };
        for exp in [i64::MAX as u64 + 1, u64::MAX - 1, u64::MAX] {
            assert_eq!(check(exp).unwrap_err().code, "invalid_token", "exp {exp}");
        }
        // Far away but representable: accepted.
        let far = check(i64::MAX as u64).unwrap();
        assert!(far.expires.is_some());
    }

    #[test]
    fn anonymous_access_is_per_namespace() {
        let v = Verifier::from_settings(&settings()).unwrap();
        let anon = v.check("/", &json!({})).unwrap();
        assert!(anon.user.is_none());
        assert!(anon.may_subscribe("public:news"));
        assert!(!anon.may_publish("public:news"));
        assert_eq!(v.check("/private", &json!({})).unwrap_err().code, "auth_required");
    }

    #[test]
    fn without_a_key_tokens_are_ignored() {
        let mut s = settings();
        s.jwt_algorithm = String::new();
        let v = Verifier::from_settings(&s).unwrap();
        let anon = v.check("/", &json!({"token": "123"})).unwrap();
        assert!(anon.user.is_none());
        assert_eq!(
            v.check("/private", &json!({"token": "123"})).unwrap_err().code,
            "auth_required"
        );
    }

    #[test]
    fn rs256_and_es256_verify_with_public_keys_and_refuse_other_keys() {
        let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        for (alg, name) in [(Algorithm::RS256, "rs256"), (Algorithm::ES256, "es256")] {
            let mut s = settings();
            s.jwt_algorithm = format!("{alg:?}");
            s.jwt_public_key_file = fixtures.join(format!("{name}-public.pem")).display().to_string();
            let v = Verifier::from_settings(&s).unwrap();
            let private = std::fs::read(fixtures.join(format!("{name}-private.pem"))).unwrap();
            let key = match alg {
                Algorithm::RS256 => EncodingKey::from_rsa_pem(&private).unwrap(),
                _ => EncodingKey::from_ec_pem(&private).unwrap(),
            };
            let claims = json!({"sub": "ann", "aud": "roomcast", "exp": now() + 60, "subscribe": ["a"]});
            let good = encode(&Header::new(alg), &claims, &key).unwrap();
            let id = v.check("/", &json!({ "token": good })).unwrap();
            assert_eq!(id.user.as_deref(), Some("ann"), "{name}");
            // Signed with the HS256 secret instead: refused (algorithm pinned).
            let hs = token(claims, Algorithm::HS256);
            assert_eq!(
                v.check("/", &json!({ "token": hs })).unwrap_err().code,
                "invalid_token",
                "{name}"
            );
        }
    }

    #[test]
    fn settings_are_checked() {
        let mut s = settings();
        s.jwt_secret = "short".into();
        assert!(Verifier::from_settings(&s).unwrap_err().to_string().contains("secret"));
        s.jwt_algorithm = "none".into();
        assert!(Verifier::from_settings(&s).is_err());
        s.jwt_algorithm = "RS256".into();
        s.jwt_public_key_file = "/nonexistent.pem".into();
        assert!(Verifier::from_settings(&s)
            .unwrap_err()
            .to_string()
            .contains("public key"));
    }
}
