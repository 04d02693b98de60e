//! The office registry's entries, as customs registered them (and the shipped ones).

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Store, StoreError, Tx, ts};
use crate::offices::{Office, OfficeRole};

fn roles_column(office: &Office) -> String {
    let mut s = String::from("|");
    for r in &office.roles {
        s.push_str(r.as_str());
        s.push('|');
    }
    s
}

fn entry_of(text: &str) -> Result<Office, StoreError> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("office entry: {e}")))?;
    Office::from_json(&value, "").map_err(|p| {
        StoreError::Corrupt(format!(
            "office entry: {}",
            p.first().map(|p| p.detail.as_str()).unwrap_or_default()
        ))
    })
}

/// Marks the registry as changed, inside the transaction that changes it.
async fn bump_registry_version(tx: &mut Tx) -> Result<(), StoreError> {
    sqlx::query("update office_registry_version set version = version + 1 where id = 1")
        .execute(&mut ***tx)
        .await?;
    Ok(())
}

/// What changed the office registry or the geometry: `operator`, `partner:<id>`, `cli`
/// or `shipped`.
pub type Actor<'a> = &'a str;

/// One change recorded, in the transaction that makes it.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn record_change(
    tx: &mut Tx,
    actor: Actor<'_>,
    subject: &str,
    id: &str,
    created: bool,
    entry: &str,
    now: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "insert into registry_changes (changed_at, actor, subject, subject_id, action, entry)
         values ($1, $2, $3, $4, $5, $6)",
    )
    .bind(now)
    .bind(actor)
    .bind(subject)
    .bind(id)
    .bind(if created { "created" } else { "replaced" })
    .bind(entry)
    .execute(&mut ***tx)
    .await?;
    Ok(())
}

/// Room for new zones in one transaction: the count is read once, then kept.
#[derive(Default)]
pub(crate) struct ZoneRoom {
    count: Option<i64>,
}

impl ZoneRoom {
    /// Whether zone `id` may be written: a replaced one always, a new one while the
    /// gateway holds fewer than [`super::geo::MAX_ZONES`].
    pub(crate) async fn claim(
        &mut self,
        tx: &mut Tx,
        id: &str,
        pointer: &str,
    ) -> Result<bool, StoreError> {
        let exists = sqlx::query("select 1 from zones where zone_id = $1")
            .bind(id)
            .fetch_optional(&mut ***tx)
            .await?
            .is_some();
        if exists {
            return Ok(false);
        }
        let count = match self.count {
            Some(n) => n,
            None => sqlx::query("select count(*) as n from zones")
                .fetch_one(&mut ***tx)
                .await?
                .try_get::<i64, _>("n")?,
        };
        if count >= super::geo::MAX_ZONES {
            return Err(StoreError::OverLimit {
                pointer: pointer.to_owned(),
                detail: format!(
                    "zone {id} would be one more than the limit of {} zones the gateway holds (offices' locations included); replace existing zones instead",
                    super::geo::MAX_ZONES
                ),
            });
        }
        self.count = Some(count + 1);
        Ok(true)
    }
}

/// One office written in a transaction; `true` when it is new. An office with a location
/// also registers its zone, `office:<code>`.
async fn upsert(
    tx: &mut Tx,
    office: &Office,
    now: &str,
    actor: Actor<'_>,
    room: &mut ZoneRoom,
    zone_pointer: &str,
) -> Result<bool, StoreError> {
    let existed = sqlx::query("select 1 from offices where code = $1")
        .bind(office.code.as_str())
        .fetch_optional(&mut ***tx)
        .await?
        .is_some();
    let entry = serde_json::to_string(office).unwrap_or_default();
    sqlx::query(
        "insert into offices (code, country, roles, entry, updated_at) values ($1, $2, $3, $4, $5)
         on conflict (code) do update set country = excluded.country, roles = excluded.roles,
             entry = excluded.entry, updated_at = excluded.updated_at",
    )
    .bind(office.code.as_str())
    .bind(office.country.as_str())
    .bind(roles_column(office))
    .bind(&entry)
    .bind(now)
    .execute(&mut ***tx)
    .await?;
    bump_registry_version(tx).await?;
    record_change(
        tx,
        actor,
        "office",
        office.code.as_str(),
        !existed,
        &entry,
        now,
    )
    .await?;
    if let Some(Ok((zone, feature))) = office.zone() {
        let new_zone = room.claim(tx, zone.id.as_str(), zone_pointer).await?;
        let kind = serde_json::to_value(zone.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        sqlx::query(
            "insert into zones (zone_id, kind, office_code, feature, updated_at) values ($1, $2, $3, $4, $5)
             on conflict (zone_id) do update set
                 kind = excluded.kind, office_code = excluded.office_code,
                 feature = excluded.feature, updated_at = excluded.updated_at",
        )
        .bind(zone.id.as_str())
        .bind(kind)
        .bind(office.code.as_str())
        .bind(feature.to_string())
        .bind(now)
        .execute(&mut ***tx)
        .await?;
        let feature = feature.to_string();
        crate::tracking::bump_geometry_version(tx, "zone", zone.id.as_str(), &feature).await?;
        record_change(tx, actor, "zone", zone.id.as_str(), new_zone, &feature, now).await?;
    }
    Ok(!existed)
}

/// One recorded change of the office registry or the geometry.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct RegistryChange {
    pub seq: i64,
    /// When it was stored (RFC 3339, UTC).
    pub at: String,
    /// `operator`, `partner:<id>`, `cli` or `shipped`.
    pub actor: String,
    /// `office`, `zone` or `corridor`.
    pub subject: String,
    pub id: String,
    /// `created` or `replaced`.
    pub action: String,
    /// What was stored: the office's entry, or the zone's or corridor's feature.
    #[schema(value_type = Object)]
    pub entry: serde_json::Value,
}

/// What an import did.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, utoipa::ToSchema)]
pub struct ImportCounts {
    pub created: usize,
    pub replaced: usize,
}

impl Store {
    /// Adds the offices that are not stored yet; a stored one (perhaps changed by
    /// customs) is left as it is. Returns how many were added.
    pub async fn merge_offices(
        &self,
        offices: &[Office],
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let now = ts(now);
        let mut tx = self.begin_geometry_write().await?;
        let mut added = 0;
        for office in offices {
            let entry = serde_json::to_string(office).unwrap_or_default();
            let done = sqlx::query(
                "insert into offices (code, country, roles, entry, updated_at) values ($1, $2, $3, $4, $5)
                 on conflict (code) do nothing",
            )
            .bind(office.code.as_str())
            .bind(office.country.as_str())
            .bind(roles_column(office))
            .bind(&entry)
            .bind(&now)
            .execute(&mut **tx)
            .await?;
            if done.rows_affected() > 0 {
                added += 1;
                let code = office.code.as_str();
                record_change(&mut tx, "shipped", "office", code, true, &entry, &now).await?;
            }
        }
        if added > 0 {
            bump_registry_version(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(added)
    }

    /// Registers or replaces one office; `true` when it is new.
    pub async fn put_office(
        &self,
        office: &Office,
        now: DateTime<Utc>,
        actor: Actor<'_>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_geometry_write().await?;
        let mut room = ZoneRoom::default();
        let created = upsert(&mut tx, office, &ts(now), actor, &mut room, "/location").await?;
        tx.commit().await?;
        Ok(created)
    }

    /// Registers or replaces every office of a list, all or none.
    pub async fn import_offices(
        &self,
        offices: &[Office],
        now: DateTime<Utc>,
        actor: Actor<'_>,
    ) -> Result<ImportCounts, StoreError> {
        let now = ts(now);
        let mut tx = self.begin_geometry_write().await?;
        let mut counts = ImportCounts::default();
        let mut room = ZoneRoom::default();
        for office in offices {
            if upsert(&mut tx, office, &now, actor, &mut room, "").await? {
                counts.created += 1;
            } else {
                counts.replaced += 1;
            }
        }
        tx.commit().await?;
        Ok(counts)
    }

    pub async fn office(&self, code: &str) -> Result<Option<Office>, StoreError> {
        let row = sqlx::query("select entry from offices where code = $1")
            .bind(code)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| entry_of(&r.try_get::<String, _>("entry")?))
            .transpose()
    }

    /// One page of offices in code order, after `after`, of a country and a role.
    pub async fn offices_page(
        &self,
        country: Option<&str>,
        role: Option<OfficeRole>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Office>, StoreError> {
        let rows = sqlx::query(
            "select entry from offices
             where code > $1 and ($2 = '' or country = $2) and roles like $3
             order by code limit $4",
        )
        .bind(after.unwrap_or(""))
        .bind(country.unwrap_or(""))
        .bind(match role {
            Some(r) => format!("%|{}|%", r.as_str()),
            None => "%".into(),
        })
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| entry_of(&r.try_get::<String, _>("entry")?))
            .collect()
    }

    /// The registry's version, bumped by every change: what a cached registry compares.
    /// (Not a count and latest `updated_at`: another instance's clock may be behind, and
    /// a removal and an addition keep the count.)
    pub async fn offices_version(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("select version from office_registry_version where id = 1")
            .fetch_one(self.pool())
            .await?;
        Ok(row.try_get("version")?)
    }

    pub async fn all_offices(&self) -> Result<Vec<Office>, StoreError> {
        let rows = sqlx::query("select entry from offices order by code")
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| entry_of(&r.try_get::<String, _>("entry")?))
            .collect()
    }

    /// Recorded changes in order, after `after` (a `seq`), of one subject (`office`,
    /// `zone`, `corridor`) and id when given.
    pub async fn registry_changes(
        &self,
        subject: Option<&str>,
        id: Option<&str>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<RegistryChange>, StoreError> {
        let rows = sqlx::query(
            "select seq, changed_at, actor, subject, subject_id, action, entry
             from registry_changes
             where seq > $1 and ($2 = '' or subject = $2) and ($3 = '' or subject_id = $3)
             order by seq limit $4",
        )
        .bind(after)
        .bind(subject.unwrap_or(""))
        .bind(id.unwrap_or(""))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RegistryChange {
                    seq: r.try_get("seq")?,
                    at: r.try_get("changed_at")?,
                    actor: r.try_get("actor")?,
                    subject: r.try_get("subject")?,
                    id: r.try_get("subject_id")?,
                    action: r.try_get("action")?,
                    entry: super::from_json("registry change", &r.try_get::<String, _>("entry")?)?,
                })
            })
            .collect()
    }

    /// The zones registered for an office (its own, and those `PUT /v1/zones` linked).
    pub async fn zones_of_office(&self, code: &str) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("select zone_id from zones where office_code = $1 order by zone_id")
            .bind(code)
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("zone_id").map_err(Into::into))
            .collect()
    }
}
