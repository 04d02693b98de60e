//! Corridors and zones as registered by customs: GeoJSON (RFC 7946, lon/lat order) in,
//! checked shapes out. Spatial indexing and distance rules build on these (tracking engine).

use geojson::{Feature, GeometryValue};
use serde::{Deserialize, Serialize};

use crate::ids::{CorridorId, OfficeCode, ZoneId};
use crate::model::LatLon;
use crate::trip::RulesOverride;

/// A problem in a GeoJSON document, with the JSON pointer of the offending part.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{pointer}: {reason}")]
pub struct GeoError {
    pub pointer: String,
    pub reason: String,
}

fn geo_err(pointer: impl Into<String>, reason: impl Into<String>) -> GeoError {
    GeoError {
        pointer: pointer.into(),
        reason: reason.into(),
    }
}

/// Widest corridor accepted: wider than this is not a route any more.
pub const MAX_CORRIDOR_WIDTH_M: f64 = 50_000.0;
/// Largest circle zone accepted.
pub const MAX_ZONE_RADIUS_M: f64 = 100_000.0;

/// An authorized route: a polyline and the full width of the band around it in metres
/// (a truck within `width_m / 2` of the line is on the route).
#[derive(Debug, Clone, PartialEq)]
pub struct Corridor {
    pub id: CorridorId,
    pub width_m: f64,
    pub line: Vec<LatLon>,
    /// The offices this corridor is registered for, so a trip that names no corridor
    /// follows the one of its departure and destination (`properties.office_of_departure`,
    /// `properties.office_of_destination`).
    pub office_of_departure: Option<OfficeCode>,
    pub office_of_destination: Option<OfficeCode>,
    /// Thresholds that differ on this corridor (`properties.rules`).
    pub rules: RulesOverride,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ZoneKind {
    CustomsOffice,
    BorderPost,
    RestArea,
    ReleasePlace,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ZoneShape {
    /// Outer ring first, then holes; each ring closed.
    Polygon(Vec<Vec<LatLon>>),
    Circle {
        centre: LatLon,
        radius_m: f64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Zone {
    pub id: ZoneId,
    pub kind: ZoneKind,
    pub office_code: Option<OfficeCode>,
    pub shape: ZoneShape,
}

fn parse_feature(value: &serde_json::Value) -> Result<Feature, GeoError> {
    if value.get("type").and_then(|t| t.as_str()) != Some("Feature") {
        return Err(geo_err("/type", "must be \"Feature\""));
    }
    let geometry = value
        .get("geometry")
        .ok_or_else(|| geo_err("/geometry", "is missing"))?;
    if !geometry.is_object() {
        return Err(geo_err("/geometry", "must be a geometry object"));
    }
    Feature::deserialize(value).map_err(|e| geo_err("/geometry", e.to_string()))
}

fn point(pos: &geojson::Position, pointer: String) -> Result<LatLon, GeoError> {
    let coords = pos.as_slice();
    if coords.len() < 2 || coords.len() > 3 {
        return Err(geo_err(
            pointer,
            "a position is [lon, lat] or [lon, lat, alt]",
        ));
    }
    // GeoJSON order is longitude first.
    LatLon::new(coords[1], coords[0]).map_err(|reason| geo_err(pointer, reason))
}

fn property<'a>(feature: &'a Feature, name: &str) -> Option<&'a serde_json::Value> {
    feature.properties.as_ref().and_then(|p| p.get(name))
}

fn positive_number(feature: &Feature, name: &str, max: f64) -> Result<f64, GeoError> {
    let pointer = format!("/properties/{name}");
    let value = property(feature, name).ok_or_else(|| geo_err(&pointer, "is missing"))?;
    let n = value
        .as_f64()
        .ok_or_else(|| geo_err(&pointer, "must be a number"))?;
    if !(n > 0.0 && n <= max) {
        return Err(geo_err(pointer, format!("{n} is outside (0, {max}]")));
    }
    Ok(n)
}

fn office_property(feature: &Feature, name: &str) -> Result<Option<OfficeCode>, GeoError> {
    let pointer = format!("/properties/{name}");
    match property(feature, name) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => OfficeCode::parse(s.as_str())
            .map(Some)
            .map_err(|e| geo_err(pointer, e.to_string())),
        Some(_) => Err(geo_err(pointer, "must be a string")),
    }
}

impl Corridor {
    /// Reads a Feature with a LineString geometry and `properties.width_m`.
    pub fn from_geojson(id: CorridorId, value: &serde_json::Value) -> Result<Self, GeoError> {
        Self::read(id, value, true)
    }

    /// Reads a corridor stored earlier. Its thresholds are read without their ranges: one
    /// stored before the ranges were checked is brought inside them where the engine uses
    /// it ([`crate::trip::Rules::clamped`]), rather than making the geometry unreadable.
    pub fn from_stored_geojson(
        id: CorridorId,
        value: &serde_json::Value,
    ) -> Result<Self, GeoError> {
        Self::read(id, value, false)
    }

    fn read(id: CorridorId, value: &serde_json::Value, strict: bool) -> Result<Self, GeoError> {
        let feature = parse_feature(value)?;
        let Some(GeometryValue::LineString { coordinates }) =
            feature.geometry.as_ref().map(|g| &g.value)
        else {
            return Err(geo_err("/geometry/type", "a corridor must be a LineString"));
        };
        if coordinates.len() < 2 {
            return Err(geo_err(
                "/geometry/coordinates",
                "a LineString needs at least two positions",
            ));
        }
        let line = coordinates
            .iter()
            .enumerate()
            .map(|(i, p)| point(p, format!("/geometry/coordinates/{i}")))
            .collect::<Result<Vec<_>, _>>()?;
        let width_m = positive_number(&feature, "width_m", MAX_CORRIDOR_WIDTH_M)?;
        let rules = match property(&feature, "rules") {
            None | Some(serde_json::Value::Null) => RulesOverride::default(),
            Some(value) if strict => RulesOverride::parse(value)
                .map_err(|e| geo_err(format!("/properties/rules{}", e.pointer), e.reason))?,
            Some(value) => RulesOverride::deserialize(value)
                .map_err(|e| geo_err("/properties/rules", e.to_string()))?,
        };
        Ok(Self {
            id,
            width_m,
            line,
            office_of_departure: office_property(&feature, "office_of_departure")?,
            office_of_destination: office_property(&feature, "office_of_destination")?,
            rules,
        })
    }
}

impl Zone {
    /// Reads a Feature with a Polygon, or a Point and `properties.radius_m`, and
    /// `properties.kind` (plus `properties.office_code` for an office).
    pub fn from_geojson(id: ZoneId, value: &serde_json::Value) -> Result<Self, GeoError> {
        let feature = parse_feature(value)?;
        let kind_value =
            property(&feature, "kind").ok_or_else(|| geo_err("/properties/kind", "is missing"))?;
        let kind = ZoneKind::deserialize(kind_value).map_err(|_| {
            geo_err(
                "/properties/kind",
                "must be one of customs_office, border_post, rest_area, release_place",
            )
        })?;
        let office_code = office_property(&feature, "office_code")?;
        let shape = match feature.geometry.as_ref().map(|g| &g.value) {
            Some(GeometryValue::Polygon { coordinates }) => {
                if coordinates.is_empty() {
                    return Err(geo_err("/geometry/coordinates", "a Polygon needs a ring"));
                }
                let mut rings = Vec::with_capacity(coordinates.len());
                for (r, ring) in coordinates.iter().enumerate() {
                    let pointer = format!("/geometry/coordinates/{r}");
                    if ring.len() < 4 {
                        return Err(geo_err(pointer, "a ring needs at least four positions"));
                    }
                    let points = ring
                        .iter()
                        .enumerate()
                        .map(|(i, p)| point(p, format!("{pointer}/{i}")))
                        .collect::<Result<Vec<_>, _>>()?;
                    if points.first() != points.last() {
                        return Err(geo_err(pointer, "a ring must end where it starts"));
                    }
                    rings.push(points);
                }
                ZoneShape::Polygon(rings)
            }
            Some(GeometryValue::Point { coordinates }) => ZoneShape::Circle {
                centre: point(coordinates, "/geometry/coordinates".into())?,
                radius_m: positive_number(&feature, "radius_m", MAX_ZONE_RADIUS_M)?,
            },
            _ => {
                return Err(geo_err(
                    "/geometry/type",
                    "a zone must be a Polygon, or a Point with properties.radius_m",
                ));
            }
        };
        Ok(Self {
            id,
            kind,
            office_code,
            shape,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cid() -> CorridorId {
        CorridorId::parse("CA-PQZ-SAL").unwrap()
    }

    #[test]
    fn corridor_reads_lon_lat_order() {
        let c = Corridor::from_geojson(
            cid(),
            &json!({"type": "Feature", "properties": {"width_m": 2000},
                    "geometry": {"type": "LineString", "coordinates": [[-90.81, 14.07], [-89.2, 13.7]]}}),
        )
        .unwrap();
        assert_eq!(c.line[0], LatLon::new(14.07, -90.81).unwrap());
        assert_eq!(c.width_m, 2000.0);
    }

    #[test]
    fn corridor_errors_point_at_the_part() {
        let e = Corridor::from_geojson(
            cid(),
            &json!({"type": "Feature", "properties": {"width_m": 2000},
                    "geometry": {"type": "LineString", "coordinates": [[-90.81, 14.07], [-89.2, 93.7]]}}),
        )
        .unwrap_err();
        assert_eq!(e.pointer, "/geometry/coordinates/1");
        let e = Corridor::from_geojson(
            cid(),
            &json!({"type": "Feature", "properties": {},
                    "geometry": {"type": "LineString", "coordinates": [[-90.81, 14.07], [-89.2, 13.7]]}}),
        )
        .unwrap_err();
        assert_eq!(e.pointer, "/properties/width_m");
        let e = Corridor::from_geojson(
            cid(),
            &json!({"type": "Feature", "properties": {"width_m": 10},
                    "geometry": {"type": "Point", "coordinates": [-90.81, 14.07]}}),
        )
        .unwrap_err();
        assert_eq!(e.pointer, "/geometry/type");
    }

    #[test]
    fn zones_take_polygons_and_circles() {
        let id = ZoneId::parse("GTPQZ-office").unwrap();
        let z = Zone::from_geojson(
            id.clone(),
            &json!({"type": "Feature", "properties": {"kind": "customs_office", "office_code": "GTPQZ"},
                    "geometry": {"type": "Polygon", "coordinates": [[[-90.8, 13.9], [-90.7, 13.9], [-90.7, 14.0], [-90.8, 13.9]]]}}),
        )
        .unwrap();
        assert_eq!(z.kind, ZoneKind::CustomsOffice);
        let e = Zone::from_geojson(
            id.clone(),
            &json!({"type": "Feature", "properties": {"kind": "rest_area"},
                    "geometry": {"type": "Polygon", "coordinates": [[[-90.8, 13.9], [-90.7, 13.9], [-90.7, 14.0], [-90.8, 14.0]]]}}),
        )
        .unwrap_err();
        assert_eq!(e.pointer, "/geometry/coordinates/0");
        let e = Zone::from_geojson(
            id,
            &json!({"type": "Feature", "properties": {"kind": "rest_area"},
                    "geometry": {"type": "Point", "coordinates": [-90.8, 13.9]}}),
        )
        .unwrap_err();
        assert_eq!(e.pointer, "/properties/radius_m");
    }
}
