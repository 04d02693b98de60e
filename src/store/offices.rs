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

/// One office written in a transaction; `true` when it is new. An office with a location
/// also registers its zone, `office:<code>`.
async fn upsert(tx: &mut Tx, office: &Office, now: &str) -> Result<bool, StoreError> {
    let existed = sqlx::query("select 1 from offices where code = $1")
        .bind(office.code.as_str())
        .fetch_optional(&mut ***tx)
        .await?
        .is_some();
    sqlx::query(
        "insert into offices (code, country, roles, entry, updated_at) values ($1, $2, $3, $4, $5)
         on conflict (code) do update set country = excluded.country, roles = excluded.roles,
             entry = excluded.entry, updated_at = excluded.updated_at",
    )
    .bind(office.code.as_str())
    .bind(office.country.as_str())
    .bind(roles_column(office))
    .bind(serde_json::to_string(office).unwrap_or_default())
    .bind(now)
    .execute(&mut ***tx)
    .await?;
    bump_registry_version(tx).await?;
    if let Some(Ok((zone, feature))) = office.zone() {
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
        crate::tracking::bump_geometry_version(tx).await?;
    }
    Ok(!existed)
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
        let mut tx = self.begin_write().await?;
        let mut added = 0;
        for office in offices {
            let done = sqlx::query(
                "insert into offices (code, country, roles, entry, updated_at) values ($1, $2, $3, $4, $5)
                 on conflict (code) do nothing",
            )
            .bind(office.code.as_str())
            .bind(office.country.as_str())
            .bind(roles_column(office))
            .bind(serde_json::to_string(office).unwrap_or_default())
            .bind(&now)
            .execute(&mut **tx)
            .await?;
            added += done.rows_affected() as usize;
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
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let created = upsert(&mut tx, office, &ts(now)).await?;
        tx.commit().await?;
        Ok(created)
    }

    /// Registers or replaces every office of a list, all or none.
    pub async fn import_offices(
        &self,
        offices: &[Office],
        now: DateTime<Utc>,
    ) -> Result<ImportCounts, StoreError> {
        let now = ts(now);
        let mut tx = self.begin_write().await?;
        let mut counts = ImportCounts::default();
        for office in offices {
            if upsert(&mut tx, office, &now).await? {
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
