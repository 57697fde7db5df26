//! API tokens: the `[[api.tokens]]` stanzas of the config file, checked in constant time, and the
//! secrets `tallyd token new` makes.
//!
//! A token is an id, the SHA-256 of a secret, a tenant and scopes. The daemon never sees a
//! secret at rest: the file holds its hash. A client presents the secret as a bearer token, or
//! as the password of Basic auth with the id as the user (how Deeploy's client sends an access
//! key and a secret key). High-entropy secrets need a fast hash, not a password hash: guessing
//! 256 random bits is hopeless however fast the hash is. Every stored hash is compared, each in
//! constant time, so timing tells nothing about which token (or how much of one) matched.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a token allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// List, get, query, read chart data.
    Read,
    /// Record points (Matih data, Deeploy data points, Seldon metrics, StatsD lines).
    Write,
    /// Register, change and delete definitions.
    Admin,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }
}

/// The scopes a caller holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Scopes(u8);

impl Scopes {
    pub const ALL: Scopes = Scopes(0b111);

    pub fn of(scopes: &[Scope]) -> Scopes {
        Scopes(
            scopes
                .iter()
                .fold(0, |bits, scope| bits | Scopes::bit(*scope)),
        )
    }

    pub fn allows(self, scope: Scope) -> bool {
        self.0 & Scopes::bit(scope) != 0
    }

    fn bit(scope: Scope) -> u8 {
        1 << scope as u8
    }
}

/// One `[[api.tokens]]` stanza.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Names the token in logs and is the user of Basic auth (Deeploy's access key).
    #[serde(deserialize_with = "non_empty")]
    pub id: String,
    /// Hex SHA-256 of the secret.
    #[serde(deserialize_with = "sha256_hex")]
    pub secret_sha256: [u8; 32],
    /// Whose definitions and data the token reaches.
    #[serde(deserialize_with = "non_empty")]
    pub tenant: String,
    #[serde(deserialize_with = "some_scopes")]
    pub scopes: Vec<Scope>,
}

// The hash stays out of logs and `--check-config` output.
impl fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenConfig")
            .field("id", &self.id)
            .field("tenant", &self.tenant)
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let text = String::deserialize(d)?;
    if text.trim().is_empty() {
        return Err(serde::de::Error::custom("must not be empty"));
    }
    Ok(text)
}

fn sha256_hex<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
    parse_sha256(&String::deserialize(d)?).map_err(serde::de::Error::custom)
}

/// A hex SHA-256 as the config file writes one.
pub fn parse_sha256(text: &str) -> Result<[u8; 32], &'static str> {
    let mut hash = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut hash).map_err(
        |_| "must be 64 hex digits: the SHA-256 of the secret (`tallyd token new` prints one)",
    )?;
    Ok(hash)
}

/// Whether `secret` hashes to `hash`, compared in constant time.
pub fn secret_matches(hash: &[u8; 32], secret: &str) -> bool {
    let presented: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
    hash.ct_eq(&presented).into()
}

fn some_scopes<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Scope>, D::Error> {
    let scopes = Vec::<Scope>::deserialize(d)?;
    if scopes.is_empty() {
        return Err(serde::de::Error::custom(
            "must name at least one of \"read\", \"write\", \"admin\"",
        ));
    }
    Ok(scopes)
}

/// Checks that token ids are unique (the Basic-auth user must name one token).
pub fn check_unique(tokens: &[TokenConfig]) -> Result<(), String> {
    for (i, token) in tokens.iter().enumerate() {
        if tokens[..i].iter().any(|other| other.id == token.id) {
            return Err(format!(
                "api.tokens: id {:?} is used by two tokens; ids must be unique",
                token.id
            ));
        }
    }
    Ok(())
}

/// Who a presented secret belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenOwner {
    pub id: String,
    pub tenant: String,
    pub scopes: Scopes,
}

/// The tokens in force.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    tokens: Vec<TokenConfig>,
}

impl Tokens {
    pub fn new(tokens: Vec<TokenConfig>) -> Tokens {
        Tokens { tokens }
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The token whose secret is `secret`; with `id`, only that token may match (Basic auth).
    pub fn check(&self, id: Option<&str>, secret: &str) -> Option<TokenOwner> {
        let mut found = None;
        // Every hash is compared, matched or not, so the time taken does not say which.
        for token in &self.tokens {
            let same_secret = secret_matches(&token.secret_sha256, secret);
            if same_secret && id.is_none_or(|id| id == token.id) && found.is_none() {
                found = Some(TokenOwner {
                    id: token.id.clone(),
                    tenant: token.tenant.clone(),
                    scopes: Scopes::of(&token.scopes),
                });
            }
        }
        found
    }
}

/// A new secret (32 random bytes from the OS, hex) and its config stanza.
pub fn new_token(id: &str, tenant: &str, scopes: &[Scope]) -> (String, String) {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source");
    let secret = hex::encode(bytes);
    let hash = hex::encode(Sha256::digest(secret.as_bytes()));
    let scopes: Vec<String> = scopes.iter().map(|s| format!("{:?}", s.name())).collect();
    let stanza = format!(
        "[[api.tokens]]\nid = {id:?}\nsecret_sha256 = \"{hash}\"\ntenant = {tenant:?}\nscopes = [{}]\n",
        scopes.join(", ")
    );
    (secret, stanza)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(id: &str, secret: &str, tenant: &str, scopes: &[Scope]) -> TokenConfig {
        TokenConfig {
            id: id.into(),
            secret_sha256: Sha256::digest(secret.as_bytes()).into(),
            tenant: tenant.into(),
            scopes: scopes.to_vec(),
        }
    }

    #[test]
    fn a_secret_finds_its_token_and_only_its_id_in_basic_auth() {
        let tokens = Tokens::new(vec![
            token("ci", "s1", "t1", &[Scope::Read, Scope::Write]),
            token("ops", "s2", "t2", &[Scope::Admin]),
        ]);
        let ci = tokens.check(None, "s1").unwrap();
        assert_eq!((ci.id.as_str(), ci.tenant.as_str()), ("ci", "t1"));
        assert!(ci.scopes.allows(Scope::Write) && !ci.scopes.allows(Scope::Admin));
        assert_eq!(tokens.check(Some("ops"), "s2").unwrap().tenant, "t2");
        assert_eq!(tokens.check(Some("ci"), "s2"), None);
        assert_eq!(tokens.check(None, "nope"), None);
        assert_eq!(tokens.check(None, ""), None);
    }

    #[test]
    fn a_new_token_parses_back_and_its_secret_matches() {
        let (secret, stanza) = new_token("ci-writer", "550e8400", &[Scope::Read, Scope::Write]);
        assert_eq!(secret.len(), 64);
        #[derive(Deserialize)]
        struct File {
            api: Api,
        }
        #[derive(Deserialize)]
        struct Api {
            tokens: Vec<TokenConfig>,
        }
        let file: File = toml::from_str(&stanza).unwrap();
        let tokens = Tokens::new(file.api.tokens);
        let owner = tokens.check(Some("ci-writer"), &secret).unwrap();
        assert_eq!(owner.tenant, "550e8400");
        assert_eq!(owner.scopes, Scopes::of(&[Scope::Read, Scope::Write]));
        assert_ne!(new_token("a", "b", &[Scope::Read]).0, secret);
    }

    #[test]
    fn bad_stanzas_are_refused_with_the_key() {
        let parse = |text: &str| toml::from_str::<TokenConfig>(text).unwrap_err().to_string();
        let hash = "0".repeat(64);
        assert!(
            parse("id = \"a\"\nsecret_sha256 = \"xyz\"\ntenant = \"t\"\nscopes = [\"read\"]")
                .contains("64 hex digits")
        );
        assert!(
            parse(&format!(
                "id = \"\"\nsecret_sha256 = \"{hash}\"\ntenant = \"t\"\nscopes = [\"read\"]"
            ))
            .contains("must not be empty")
        );
        assert!(
            parse(&format!(
                "id = \"a\"\nsecret_sha256 = \"{hash}\"\ntenant = \"t\"\nscopes = []"
            ))
            .contains("at least one")
        );
        assert!(
            parse(&format!(
                "id = \"a\"\nsecret_sha256 = \"{hash}\"\ntenant = \"t\"\nscopes = [\"root\"]"
            ))
            .contains("unknown variant")
        );
        assert!(
            parse(&format!(
                "id = \"a\"\nsecret = \"{hash}\"\ntenant = \"t\"\nscopes = [\"read\"]"
            ))
            .contains("unknown field")
        );
    }

    #[test]
    fn duplicate_ids_are_refused() {
        let tokens = vec![
            token("a", "1", "t", &[Scope::Read]),
            token("a", "2", "t", &[Scope::Read]),
        ];
        assert!(check_unique(&tokens).unwrap_err().contains("\"a\""));
        assert!(check_unique(&tokens[..1]).is_ok());
    }
}
