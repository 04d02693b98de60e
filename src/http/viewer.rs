//! Who is asking: the principal of a request. Every route but the public ones needs one
//! (`policy::authorize` refuses the others with 401): a person or platform presents an
//! API token (`ects-gateway token create`), a partner system its configured token. The
//! route table (`policy::ROUTES`) decides which roles reach a route; this type decides
//! what a principal sees there (trips by party) and how it is named in the audit trail.

use std::future::{Ready, ready};

use actix_web::{FromRequest, HttpMessage, HttpRequest};

use super::error::ApiError;
use crate::auth::{Authenticated, Role};
use crate::partners::PartnerConfig;
use crate::store::{Store, StoreError};

/// A person or platform, by its API token.
#[derive(Debug, Clone)]
pub struct User {
    /// The token's lookup id (not its secret).
    pub token_id: String,
    /// The token's name: who it was given to.
    pub name: String,
    pub role: Role,
    /// An officer's authority (`KE`, `KE-KRA`).
    pub authority: Option<String>,
    /// A shipper's declarant id, a transporter's carrier id.
    pub party: Option<String>,
    /// The id its declarations are filed under (`token:<name>`), for a single window.
    filer: String,
}

impl User {
    pub fn new(a: Authenticated) -> Self {
        Self {
            filer: format!("token:{}", a.name),
            token_id: a.id,
            name: a.name,
            role: a.role,
            authority: a.authority,
            party: a.party,
        }
    }

    fn country(&self) -> Option<&str> {
        self.authority.as_deref().and_then(|a| a.get(..2))
    }
}

/// A party no trip has: what a principal that sees no trip is matched against.
const NO_PARTY: &str = "nobody:";

#[derive(Debug, Clone)]
pub enum Viewer {
    User(Box<User>),
    /// A configured partner system. It files messages as its own, reads what its sharing
    /// rules allow, and issues commands as an officer of its authority's country would.
    Partner(Box<PartnerConfig>),
}

impl Viewer {
    pub fn role(&self) -> Role {
        match self {
            Viewer::User(u) => u.role,
            Viewer::Partner(_) => Role::Partner,
        }
    }

    /// The trip parties this viewer matches; `None`: every trip.
    pub fn parties(&self) -> Option<Vec<String>> {
        match self {
            Viewer::Partner(p) => Some(p.visible_parties()),
            Viewer::User(u) => match u.role {
                Role::Admin | Role::Operator => None,
                Role::Officer => Some(vec![
                    u.country()
                        .map_or_else(|| NO_PARTY.to_owned(), str::to_owned),
                ]),
                Role::SingleWindow => Some(vec![format!("filer:{}", u.filer)]),
                Role::Shipper => Some(vec![format!(
                    "declarant:{}",
                    u.party.as_deref().unwrap_or(NO_PARTY)
                )]),
                Role::Transporter => Some(vec![format!(
                    "carrier:{}",
                    u.party.as_deref().unwrap_or(NO_PARTY)
                )]),
                Role::Integrator | Role::DevicePlatform | Role::Partner => {
                    Some(vec![NO_PARTY.to_owned()])
                }
            },
        }
    }

    /// The parties geometry reads (corridors, zones) are scoped by: the countries only. A
    /// declaration names its corridor as free text, so what a caller filed (its `filer:`
    /// party) must not widen what it sees of the map. `None`: all geometry.
    pub fn geometry_parties(&self) -> Option<Vec<String>> {
        self.parties().map(|parties| {
            parties
                .into_iter()
                .filter(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_uppercase()))
                .collect()
        })
    }

    /// The configured partner this is, if it is one.
    pub fn partner_id(&self) -> Option<&str> {
        match self {
            Viewer::Partner(p) => Some(&p.id),
            Viewer::User(_) => None,
        }
    }

    /// The id what it files is recorded under (a trip's `filer:` party): a partner's id,
    /// or `token:<name>` for a single window's token.
    pub fn filer_id(&self) -> Option<&str> {
        match self {
            Viewer::Partner(p) => Some(&p.id),
            Viewer::User(u) if u.role == Role::SingleWindow => Some(&u.filer),
            Viewer::User(_) => None,
        }
    }

    /// The authority it acts for: a partner's, an officer's.
    pub fn authority(&self) -> Option<&str> {
        match self {
            Viewer::Partner(p) => Some(p.authority.as_str()),
            Viewer::User(u) => u.authority.as_deref(),
        }
    }

    /// A device platform's token name: the platform whose devices' events it posts.
    pub fn device_platform(&self) -> Option<&str> {
        match self {
            Viewer::User(u) if u.role == Role::DevicePlatform => Some(&u.name),
            _ => None,
        }
    }

    /// Who acted, as the audit trail and the registry's record of changes name it:
    /// `user:<token name>/<role>[/<authority or party>]`, or `partner:<id>` (with
    /// `/cert:<sha256>` when it presented a client certificate).
    pub fn actor(&self) -> String {
        match self {
            Viewer::Partner(p) => match &p.presented_certificate {
                Some(sha256) => format!("partner:{}/cert:{sha256}", p.id),
                None => format!("partner:{}", p.id),
            },
            Viewer::User(u) => match u.authority.as_deref().or(u.party.as_deref()) {
                Some(x) => format!("user:{}/{}/{x}", u.name, u.role),
                None => format!("user:{}/{}", u.name, u.role),
            },
        }
    }

    /// Only an admin may do this (geography, thresholds, delivery retries). The route
    /// table already says so; this keeps handlers that share code honest.
    pub fn operator_only(&self, what: &str) -> Result<(), ApiError> {
        match self {
            Viewer::User(u) if u.role == Role::Admin => Ok(()),
            other => Err(ApiError::Forbidden(format!(
                "{} may not {what}: that is an admin's",
                other.actor()
            ))),
        }
    }

    /// Whether it may act as `authority` in a release, handover or cancellation: an
    /// officer or a partner, for its own country.
    pub fn may_act_as(&self, authority: &str) -> bool {
        let own = match self {
            Viewer::Partner(p) => Some(p.authority.as_str()),
            Viewer::User(u) if u.role == Role::Officer => u.authority.as_deref(),
            Viewer::User(_) => None,
        };
        own.is_some_and(|own| same_authority(own, authority))
    }

    /// Whether trip statuses shown to it carry their open alerts: not for a shipper,
    /// transporter or single window (status without alert evidence).
    pub fn sees_alerts(&self) -> bool {
        !matches!(
            self,
            Viewer::User(u)
                if matches!(u.role, Role::Shipper | Role::Transporter | Role::SingleWindow)
        )
    }

    /// Whether this viewer may see the trip.
    pub async fn sees(&self, store: &Store, trip_id: &str) -> Result<bool, StoreError> {
        match self.parties() {
            None => Ok(true),
            Some(parties) => crate::store::outbox::trip_has_party(store, trip_id, &parties).await,
        }
    }

    /// A trip this viewer may not see is answered as one that does not exist.
    pub async fn check(&self, store: &Store, trip_id: &str) -> Result<(), ApiError> {
        if self.sees(store, trip_id).await? {
            Ok(())
        } else {
            Err(ApiError::NotFound(format!("trip {trip_id}")))
        }
    }
}

/// Whether an officer (or partner) of `own` acts for `authority`: the same authority, or
/// a country and one of its agencies (`KE` for `KE-KRA`, `KE-KRA` where the custodian is
/// `KE`); two agencies of one country (`KE-KPA`, `KE-KRA`) are not the same.
fn same_authority(own: &str, authority: &str) -> bool {
    let country = |a: &str| a.get(..2).map(str::to_owned);
    if own == authority {
        return true;
    }
    if country(own) != country(authority) || country(own).is_none() {
        return false;
    }
    own.len() == 2 || authority.len() == 2
}

impl FromRequest for Viewer {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    /// The principal `policy::authorize` found; none on a public route.
    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready(
            req.extensions()
                .get::<Viewer>()
                .cloned()
                .ok_or_else(|| ApiError::Unauthorized("a credential is required".into())),
        )
    }
}
