//! Corridors and zones, stored as the GeoJSON features customs registered.

use chrono::{DateTime, Utc};
use ects_core::geo::{Corridor, Zone};
use sqlx::Row;

use super::offices::{Actor, ZoneRoom, record_change};
use super::{Store, StoreError, from_json, ts};

/// Most zones the gateway holds, offices' locations included: every fix is tested against
/// them, and a zone switches checks off.
pub const MAX_ZONES: i64 = 10_000;

/// A registered corridor or zone: the feature as sent, and when it was last replaced.
#[derive(Debug, Clone)]
pub struct FeatureRow {
    pub feature: serde_json::Value,
    pub updated_at: String,
}

/// Both tables have the same shape; `sql` selects `feature, updated_at` by id.
async fn feature_by_id(
    store: &Store,
    sql: &'static str,
    id: &str,
) -> Result<Option<FeatureRow>, StoreError> {
    let row = sqlx::query(sql)
        .bind(id)
        .fetch_optional(store.pool())
        .await?;
    row.map(|r| {
        Ok(FeatureRow {
            feature: from_json("feature", &r.try_get::<String, _>("feature")?)?,
            updated_at: r.try_get("updated_at")?,
        })
    })
    .transpose()
}

/// One page of features in id order, after `after`; `sql` selects `id, feature` with
/// `id > $1 order by id limit $2`.
async fn features_page(
    store: &Store,
    sql: &'static str,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
    let rows = sqlx::query(sql)
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(store.pool())
        .await?;
    rows.iter()
        .map(|r| {
            Ok((
                r.try_get::<String, _>("id")?,
                from_json("feature", &r.try_get::<String, _>("feature")?)?,
            ))
        })
        .collect()
}

impl Store {
    /// Stores or replaces a corridor; `true` when it is new.
    pub async fn put_corridor(
        &self,
        corridor: &Corridor,
        feature: &serde_json::Value,
        now: DateTime<Utc>,
        actor: Actor<'_>,
    ) -> Result<bool, StoreError> {
        let now = ts(now);
        let mut tx = self.begin_geometry_write().await?;
        let existed = sqlx::query("select 1 from corridors where corridor_id = $1")
            .bind(corridor.id.as_str())
            .fetch_optional(&mut **tx)
            .await?
            .is_some();
        sqlx::query(
            "insert into corridors (corridor_id, width_m, feature, updated_at) values ($1, $2, $3, $4)
             on conflict (corridor_id) do update set
                 width_m = excluded.width_m, feature = excluded.feature, updated_at = excluded.updated_at",
        )
        .bind(corridor.id.as_str())
        .bind(corridor.width_m)
        .bind(feature.to_string())
        .bind(&now)
        .execute(&mut **tx)
        .await?;
        let (id, entry) = (corridor.id.as_str(), feature.to_string());
        crate::tracking::bump_geometry_version(&mut tx, "corridor", id, &entry).await?;
        record_change(&mut tx, actor, "corridor", id, !existed, &entry, &now).await?;
        tx.commit().await?;
        Ok(!existed)
    }

    pub async fn corridor(&self, id: &str) -> Result<Option<FeatureRow>, StoreError> {
        let sql = "select feature, updated_at from corridors where corridor_id = $1";
        feature_by_id(self, sql, id).await
    }

    /// Corridors in id order after `after`, at most `limit`, with their ids.
    pub async fn corridors_page(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        let sql = "select corridor_id as id, feature from corridors
                   where corridor_id > $1 order by corridor_id limit $2";
        features_page(self, sql, after, limit).await
    }

    /// [`Store::corridors_page`] for a partner: only corridors that a trip with one of
    /// these parties names (`parties`: a partner's visible parties, at most two).
    pub async fn corridors_page_seen(
        &self,
        after: Option<&str>,
        limit: i64,
        parties: &[String],
    ) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        let rows = sqlx::query(
            "select c.corridor_id as id, c.feature from corridors c
             where c.corridor_id > $1 and exists (
                 select 1 from trips t join trip_parties p on p.trip_id = t.trip_id
                 where t.corridor_id = c.corridor_id and (p.party = $3 or p.party = $4))
             order by c.corridor_id limit $2",
        )
        .bind(after.unwrap_or(""))
        .bind(limit)
        .bind(parties.first().map(String::as_str).unwrap_or(""))
        .bind(parties.get(1).map(String::as_str).unwrap_or(""))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get::<String, _>("id")?,
                    from_json("feature", &r.try_get::<String, _>("feature")?)?,
                ))
            })
            .collect()
    }

    /// Whether a trip with one of these parties names the corridor.
    pub async fn corridor_seen(&self, id: &str, parties: &[String]) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "select 1 from trips t join trip_parties p on p.trip_id = t.trip_id
             where t.corridor_id = $1 and (p.party = $2 or p.party = $3) limit 1",
        )
        .bind(id)
        .bind(parties.first().map(String::as_str).unwrap_or(""))
        .bind(parties.get(1).map(String::as_str).unwrap_or(""))
        .fetch_optional(self.pool())
        .await?;
        Ok(row.is_some())
    }

    /// The corridors the trips with one of these parties name (at most 10,000).
    pub async fn corridor_ids_seen(&self, parties: &[String]) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "select distinct t.corridor_id as id from trips t
                 join trip_parties p on p.trip_id = t.trip_id
             where t.corridor_id is not null and (p.party = $1 or p.party = $2)
             limit 10000",
        )
        .bind(parties.first().map(String::as_str).unwrap_or(""))
        .bind(parties.get(1).map(String::as_str).unwrap_or(""))
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>("id")?))
            .collect()
    }

    /// Stores or replaces a zone; `true` when it is new.
    pub async fn put_zone(
        &self,
        zone: &Zone,
        feature: &serde_json::Value,
        now: DateTime<Utc>,
        actor: Actor<'_>,
    ) -> Result<bool, StoreError> {
        let now = ts(now);
        let mut tx = self.begin_geometry_write().await?;
        let created = ZoneRoom::default()
            .claim(&mut tx, zone.id.as_str(), "")
            .await?;
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
        .bind(zone.office_code.as_ref().map(|c| c.as_str()))
        .bind(feature.to_string())
        .bind(&now)
        .execute(&mut **tx)
        .await?;
        let (id, entry) = (zone.id.as_str(), feature.to_string());
        crate::tracking::bump_geometry_version(&mut tx, "zone", id, &entry).await?;
        record_change(&mut tx, actor, "zone", id, created, &entry, &now).await?;
        tx.commit().await?;
        Ok(created)
    }

    pub async fn zone(&self, id: &str) -> Result<Option<FeatureRow>, StoreError> {
        let sql = "select feature, updated_at from zones where zone_id = $1";
        feature_by_id(self, sql, id).await
    }

    /// Zones in id order after `after`, at most `limit`, with their ids.
    pub async fn zones_page(
        &self,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<(String, serde_json::Value)>, StoreError> {
        let sql = "select zone_id as id, feature from zones
                   where zone_id > $1 order by zone_id limit $2";
        features_page(self, sql, after, limit).await
    }
}
