//! Identifiers that cross the boundary. Each is parsed once, where it enters, and code past
//! the boundary only sees the parsed type (parse, don't validate).

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why a text could not be taken as an identifier of some kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct IdError {
    pub what: &'static str,
    pub reason: String,
}

/// Checks length and characters; the rules of each kind are in the macro calls below.
fn check(
    what: &'static str,
    text: &str,
    min: usize,
    max: usize,
    allowed: fn(char) -> bool,
) -> Result<(), IdError> {
    let len = text.chars().count();
    if len < min || len > max {
        return Err(IdError {
            what,
            reason: format!("length {len} is outside {min}..={max}"),
        });
    }
    if let Some(bad) = text.chars().find(|c| !allowed(*c)) {
        return Err(IdError {
            what,
            reason: format!("character {bad:?} is not allowed"),
        });
    }
    if text.starts_with(' ') || text.ends_with(' ') {
        return Err(IdError {
            what,
            reason: "leading or trailing space".into(),
        });
    }
    Ok(())
}

fn upper_alnum(c: char) -> bool {
    c.is_ascii_uppercase() || c.is_ascii_digit()
}

fn reference_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '/' | '.' | ':' | ' ')
}

fn token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')
}

macro_rules! text_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $min:expr, $max:expr, $allowed:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub const WHAT: &'static str = $what;

            pub fn parse(text: impl Into<String>) -> Result<Self, IdError> {
                let text = text.into();
                check($what, &text, $min, $max, $allowed)?;
                Ok(Self(text))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(text: String) -> Result<Self, IdError> {
                Self::parse(text)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

text_id!(
    /// The declarant's or the authority's reference of a transit declaration
    /// (e.g. `GT-2026-T-000123`, an MRN, an ASYCUDA registration `2021 T 1234`).
    DeclarationId, "declaration id", 1, 64, reference_char
);
text_id!(
    /// A customs authority: an ISO 3166-1 country code (`GT`) or an agency code (`KE-KRA`).
    AuthorityCode, "authority code", 2, 16, |c| upper_alnum(c) || c == '-'
);
text_id!(
    /// ISO 3166-1 alpha-2 country code.
    CountryCode, "country code", 2, 2, |c| c.is_ascii_uppercase()
);
text_id!(
    /// A customs office: UN/LOCODE-style (`GTPQZ`) or a national office number (`GB000060`).
    OfficeCode, "office code", 2, 17, upper_alnum
);
text_id!(
    /// A seal's number as marked on it (WCO an..35).
    SealId, "seal id", 1, 35, token_char
);
text_id!(
    /// The tracking device inside an electronic seal (IMEI or vendor id).
    DeviceId, "device id", 1, 64, token_char
);
text_id!(
    /// A device key's id, as a signed seal event names it in `key_id`.
    KeyId, "key id", 1, 64, token_char
);
text_id!(
    /// A seal event's signature: standard base64 (RFC 4648, with padding) of an Ed25519
    /// signature (64 bytes) or an HMAC-SHA256 tag (32 bytes).
    EventSignature, "signature", 4, 128, |c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=')
);
text_id!(
    /// A container number (ISO 6346) or other transport equipment id.
    EquipmentId, "equipment id", 1, 35, token_char
);
text_id!(
    /// The sender's id of a seal event; unique per sender.
    EventId, "event id", 1, 128, |c| c.is_ascii_graphic()
);
text_id!(
    /// A registered corridor (authorized route).
    CorridorId, "corridor id", 1, 64, token_char
);
text_id!(
    /// A registered zone (office, border post, rest area, release place).
    ZoneId, "zone id", 1, 64, token_char
);

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            pub fn parse(text: &str) -> Result<Self, IdError> {
                Uuid::parse_str(text).map(Self).map_err(|e| IdError {
                    what: stringify!($name),
                    reason: e.to_string(),
                })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(
    /// A trip: one transit declaration's journey under seal. Assigned by the gateway.
    TripId
);
uuid_id!(
    /// An alert; derived deterministically from the trip, the rule and the first evidence,
    /// so that replaying a trip gives the same ids.
    AlertId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_checked() {
        assert!(CountryCode::parse("GT").is_ok());
        assert!(CountryCode::parse("gt").is_err());
        assert!(CountryCode::parse("GTM").is_err());
        assert!(OfficeCode::parse("GTPQZ").is_ok());
        assert!(OfficeCode::parse("GT PQZ").is_err());
        assert!(SealId::parse("").is_err());
        assert!(SealId::parse("A".repeat(36)).is_err());
        assert!(DeclarationId::parse("2021 T 1234").is_ok());
        assert!(DeclarationId::parse(" 2021").is_err());
        let err = SealId::parse("ES 1").unwrap_err();
        assert_eq!(err.to_string(), "seal id: character ' ' is not allowed");
    }

    #[test]
    fn ids_deserialize_through_parse() {
        let ok: Result<SealId, _> = serde_json::from_str("\"ES00781234\"");
        assert!(ok.is_ok());
        let bad: Result<SealId, _> = serde_json::from_str("\"ES 0078\"");
        assert!(bad.is_err());
    }
}
