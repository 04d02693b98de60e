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
/// Largest circle zone accepted, of any kind (each kind has its own, smaller, limit:
/// [`ZoneKind::max_radius_m`]).
pub const MAX_ZONE_RADIUS_M: f64 = 100_000.0;
/// Most positions in a corridor's line: one every 100 m over 2,000 km.
pub const MAX_CORRIDOR_VERTICES: usize = 20_000;
/// Most positions in a zone's polygon, all rings together.
pub const MAX_POLYGON_VERTICES: usize = 5_000;
/// Most rings in a zone's polygon (the outer one and its holes).
pub const MAX_POLYGON_RINGS: usize = 50;

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

impl ZoneKind {
    /// Largest circle of this kind, in metres. A zone switches checks off inside it (a
    /// customs office, border post or rest area: no route deviation; a release place:
    /// opening approved), so it is never much larger than the place it stands for. A
    /// customs office exempts as much as a border post does, so it gets the same limit.
    pub fn max_radius_m(self) -> f64 {
        match self {
            ZoneKind::CustomsOffice | ZoneKind::BorderPost | ZoneKind::ReleasePlace => 5_000.0,
            ZoneKind::RestArea => 3_000.0,
        }
    }

    /// Largest polygon of this kind (its outer ring), in square kilometres: about the
    /// circle of [`ZoneKind::max_radius_m`].
    pub fn max_area_km2(self) -> f64 {
        match self {
            ZoneKind::CustomsOffice | ZoneKind::BorderPost | ZoneKind::ReleasePlace => 80.0,
            ZoneKind::RestArea => 30.0,
        }
    }

    /// Longest side of the bounding box of a polygon of this kind (each ring), in
    /// kilometres: a thin sliver under the area limit may still not run along a whole
    /// road. About twice the diameter of [`ZoneKind::max_radius_m`].
    pub fn max_extent_km(self) -> f64 {
        match self {
            ZoneKind::CustomsOffice | ZoneKind::BorderPost | ZoneKind::ReleasePlace => 20.0,
            ZoneKind::RestArea => 12.0,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ZoneKind::CustomsOffice => "customs_office",
            ZoneKind::BorderPost => "border_post",
            ZoneKind::RestArea => "rest_area",
            ZoneKind::ReleasePlace => "release_place",
        }
    }
}

/// The area of a ring on the sphere, in square kilometres; `None` when the ring spans
/// more than half the globe in longitude (it is then not a place, whatever its area).
pub fn ring_area_km2(ring: &[LatLon]) -> Option<f64> {
    let (mut west, mut east) = (f64::INFINITY, f64::NEG_INFINITY);
    for p in ring {
        west = west.min(p.lon);
        east = east.max(p.lon);
    }
    if east - west > 180.0 {
        return None;
    }
    // The spherical excess of the ring by the trapezoid sum over its edges.
    let mut sum = 0.0;
    for pair in ring.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        sum += (b.lon - a.lon).to_radians()
            * (2.0 + a.lat.to_radians().sin() + b.lat.to_radians().sin());
    }
    let r_km = crate::spatial::EARTH_RADIUS_M / 1000.0;
    Some((sum * r_km * r_km / 2.0).abs())
}

/// The width (east-west, at the ring's widest latitude) and height (north-south) of a
/// ring's bounding box, in kilometres.
pub fn ring_extent_km(ring: &[LatLon]) -> (f64, f64) {
    let (mut west, mut east) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut south, mut north) = (f64::INFINITY, f64::NEG_INFINITY);
    for p in ring {
        west = west.min(p.lon);
        east = east.max(p.lon);
        south = south.min(p.lat);
        north = north.max(p.lat);
    }
    if ring.is_empty() {
        return (0.0, 0.0);
    }
    let km_per_degree = crate::spatial::EARTH_RADIUS_M / 1000.0 * std::f64::consts::PI / 180.0;
    // A degree of longitude is longest at the latitude nearest the equator.
    let widest = if south <= 0.0 && north >= 0.0 {
        0.0
    } else {
        south.abs().min(north.abs())
    };
    (
        (east - west) * km_per_degree * widest.to_radians().cos(),
        (north - south) * km_per_degree,
    )
}

/// The sign of the turn a → b → c (lon as x, lat as y): positive left, negative right,
/// zero when the three are in line.
fn orientation(a: LatLon, b: LatLon, c: LatLon) -> f64 {
    let v = (b.lon - a.lon) * (c.lat - a.lat) - (b.lat - a.lat) * (c.lon - a.lon);
    if v.abs() < 1e-18 { 0.0 } else { v.signum() }
}

fn on_segment(a: LatLon, b: LatLon, p: LatLon) -> bool {
    p.lon >= a.lon.min(b.lon)
        && p.lon <= a.lon.max(b.lon)
        && p.lat >= a.lat.min(b.lat)
        && p.lat <= a.lat.max(b.lat)
}

/// Whether segments a-b and c-d meet (crossing, touching, or overlapping in line).
fn segments_meet(a: LatLon, b: LatLon, c: LatLon, d: LatLon) -> bool {
    let (o1, o2) = (orientation(a, b, c), orientation(a, b, d));
    let (o3, o4) = (orientation(c, d, a), orientation(c, d, b));
    if o1 * o2 < 0.0 && o3 * o4 < 0.0 {
        return true;
    }
    (o1 == 0.0 && on_segment(a, b, c))
        || (o2 == 0.0 && on_segment(a, b, d))
        || (o3 == 0.0 && on_segment(c, d, a))
        || (o4 == 0.0 && on_segment(c, d, b))
}

/// Where a closed ring crosses or touches itself: the positions (indices into `ring`)
/// starting the two edges that meet, or `None` for a simple ring. Repeated consecutive
/// positions are one vertex. A sweep over the edges sorted by west end: each edge is
/// compared only with those whose longitudes overlap it (rings are capped at
/// [`MAX_POLYGON_VERTICES`] positions, so even the worst case is bounded).
pub fn ring_self_crossing(ring: &[LatLon]) -> Option<(usize, usize)> {
    // Distinct vertices, each with its index in `ring`; the closing one dropped.
    let mut vertices: Vec<(usize, LatLon)> = Vec::with_capacity(ring.len());
    for (i, p) in ring.iter().enumerate() {
        if vertices.last().is_none_or(|(_, q)| q != p) {
            vertices.push((i, *p));
        }
    }
    if vertices.len() > 1 && vertices.first().map(|v| v.1) == vertices.last().map(|v| v.1) {
        vertices.pop();
    }
    let n = vertices.len();
    if n < 3 {
        return None;
    }
    let edge = |k: usize| (vertices[k].1, vertices[(k + 1) % n].1);
    let mut order: Vec<usize> = (0..n).collect();
    let west = |k: usize| {
        let (a, b) = edge(k);
        a.lon.min(b.lon)
    };
    order.sort_by(|&x, &y| west(x).total_cmp(&west(y)));
    for (pos, &i) in order.iter().enumerate() {
        let (a, b) = edge(i);
        let east = a.lon.max(b.lon);
        for &j in &order[pos + 1..] {
            if west(j) > east {
                break;
            }
            // Neighbouring edges share their vertex, and nothing else unless they fold
            // back on each other (a spike), which the in-line test below catches.
            let neighbours = (i + 1) % n == j || (j + 1) % n == i;
            let (c, d) = edge(j);
            let meet = if neighbours {
                // They share a vertex; they meet elsewhere only when one folds back along
                // the other (a spike).
                let (p, shared, q) = if (i + 1) % n == j {
                    (a, b, d)
                } else {
                    (c, a, b)
                };
                orientation(p, shared, q) == 0.0
                    && (on_segment(p, shared, q) || on_segment(shared, q, p))
            } else {
                segments_meet(a, b, c, d)
            };
            if meet {
                let (first, second) = if i < j { (i, j) } else { (j, i) };
                return Some((vertices[first].0, vertices[second].0));
            }
        }
    }
    None
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
        if coordinates.len() > MAX_CORRIDOR_VERTICES {
            return Err(geo_err(
                "/geometry/coordinates",
                format!(
                    "{} positions exceed the limit of {MAX_CORRIDOR_VERTICES} for a corridor",
                    coordinates.len()
                ),
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
                if coordinates.len() > MAX_POLYGON_RINGS {
                    return Err(geo_err(
                        "/geometry/coordinates",
                        format!(
                            "{} rings exceed the limit of {MAX_POLYGON_RINGS} for a zone",
                            coordinates.len()
                        ),
                    ));
                }
                let vertices = coordinates
                    .iter()
                    .map(Vec::len)
                    .fold(0usize, usize::saturating_add);
                if vertices > MAX_POLYGON_VERTICES {
                    return Err(geo_err(
                        "/geometry/coordinates",
                        format!(
                            "{vertices} positions exceed the limit of {MAX_POLYGON_VERTICES} for a zone"
                        ),
                    ));
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
                    if let Some((a, b)) = ring_self_crossing(&points) {
                        return Err(geo_err(
                            pointer,
                            format!(
                                "the ring crosses or touches itself: its edges from positions {a} and {b} meet (a bow-tie is not a zone)"
                            ),
                        ));
                    }
                    let (width, height) = ring_extent_km(&points);
                    let max = kind.max_extent_km();
                    if width > max || height > max {
                        return Err(geo_err(
                            pointer,
                            format!(
                                "the ring's bounding box is {width:.1} km by {height:.1} km; a {} spans at most {max} km either way",
                                kind.as_str()
                            ),
                        ));
                    }
                    rings.push(points);
                }
                let max = kind.max_area_km2();
                match ring_area_km2(&rings[0]) {
                    Some(area) if area <= max => {}
                    Some(area) => {
                        return Err(geo_err(
                            "/geometry/coordinates/0",
                            format!(
                                "the area {area:.1} km² exceeds the limit of {max} km² for a {}",
                                kind.as_str()
                            ),
                        ));
                    }
                    None => {
                        return Err(geo_err(
                            "/geometry/coordinates/0",
                            format!(
                                "spans more than 180° of longitude: larger than any {}",
                                kind.as_str()
                            ),
                        ));
                    }
                }
                ZoneShape::Polygon(rings)
            }
            Some(GeometryValue::Point { coordinates }) => ZoneShape::Circle {
                centre: point(coordinates, "/geometry/coordinates".into())?,
                radius_m: positive_number(
                    &feature,
                    "radius_m",
                    kind.max_radius_m().min(MAX_ZONE_RADIUS_M),
                )?,
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

    fn zone(kind: &str, ring: Vec<[f64; 2]>) -> Result<Zone, GeoError> {
        Zone::from_geojson(
            ZoneId::parse("Z").unwrap(),
            &json!({"type": "Feature", "properties": {"kind": kind},
                    "geometry": {"type": "Polygon", "coordinates": [ring]}}),
        )
    }

    fn square(lon: f64, lat: f64, side_deg: f64) -> Vec<[f64; 2]> {
        vec![
            [lon, lat],
            [lon + side_deg, lat],
            [lon + side_deg, lat + side_deg],
            [lon, lat + side_deg],
            [lon, lat],
        ]
    }

    #[test]
    fn ring_area_is_close_to_the_sphere() {
        let one_degree: Vec<LatLon> = square(0.0, 0.0, 1.0)
            .into_iter()
            .map(|[lon, lat]| LatLon::new(lat, lon).unwrap())
            .collect();
        let area = ring_area_km2(&one_degree).unwrap();
        assert!((area - 12_364.0).abs() < 50.0, "{area}");
    }

    #[test]
    fn zones_are_no_larger_than_their_kind() {
        // A border post of about 1 km² (Pedro de Alvarado), and the review's world.
        assert!(zone("border_post", square(-90.17, 13.79, 0.01)).is_ok());
        let world = vec![
            [-179.0, -89.0],
            [179.0, -89.0],
            [179.0, 89.0],
            [-179.0, 89.0],
            [-179.0, -89.0],
        ];
        let e = zone("border_post", world).unwrap_err();
        assert_eq!(e.pointer, "/geometry/coordinates/0");
        // 1° squared is a region, not a release place; it may not be a customs office either.
        let e = zone("release_place", square(-90.0, 14.0, 1.0)).unwrap_err();
        assert!(e.reason.contains("release_place"), "{e}");
        assert!(zone("customs_office", square(-90.0, 14.0, 1.0)).is_err());
        // Circles: each kind its radius.
        let circle = |kind: &str, r: f64| {
            Zone::from_geojson(
                ZoneId::parse("Z").unwrap(),
                &json!({"type": "Feature", "properties": {"kind": kind, "radius_m": r},
                        "geometry": {"type": "Point", "coordinates": [-90.0, 14.0]}}),
            )
        };
        assert!(circle("border_post", 5_000.0).is_ok());
        assert_eq!(
            circle("border_post", 5_001.0).unwrap_err().pointer,
            "/properties/radius_m"
        );
        // A customs office exempts as much as a border post: the same limits.
        assert!(circle("customs_office", 5_000.0).is_ok());
        assert_eq!(
            circle("customs_office", 5_001.0).unwrap_err().pointer,
            "/properties/radius_m"
        );
        // About 100 km² (0.09° × 0.09° at 14° N): over 80 km² for both kinds.
        for kind in ["customs_office", "border_post"] {
            let e = zone(kind, square(-90.0, 14.0, 0.09)).unwrap_err();
            assert!(e.reason.contains("80 km²"), "{kind}: {e}");
        }
    }

    #[test]
    fn self_crossing_rings_are_refused_with_their_pointer() {
        // A bow-tie: two triangles meeting in the middle, tiny and under every limit.
        let bow_tie = vec![
            [-90.0, 14.0],
            [-89.99, 14.01],
            [-89.99, 14.0],
            [-90.0, 14.01],
            [-90.0, 14.0],
        ];
        let e = zone("border_post", bow_tie).unwrap_err();
        assert_eq!(e.pointer, "/geometry/coordinates/0");
        assert!(e.reason.contains("crosses"), "{e}");
        // A hole that crosses itself is named by its own index.
        let e = Zone::from_geojson(
            ZoneId::parse("Z").unwrap(),
            &json!({"type": "Feature", "properties": {"kind": "border_post"},
                    "geometry": {"type": "Polygon", "coordinates": [
                        square(-90.0, 14.0, 0.01),
                        [[-89.998, 14.002], [-89.996, 14.004], [-89.996, 14.002], [-89.998, 14.004], [-89.998, 14.002]]
                    ]}}),
        )
        .unwrap_err();
        assert_eq!(e.pointer, "/geometry/coordinates/1");
        // A spike folding back on its edge touches itself.
        let spike = vec![
            [-90.0, 14.0],
            [-89.99, 14.0],
            [-89.995, 14.0],
            [-89.995, 14.01],
            [-90.0, 14.0],
        ];
        assert!(zone("border_post", spike).is_err());
        // Concave, and with a repeated position: simple rings pass.
        let concave = vec![
            [-90.0, 14.0],
            [-89.99, 14.0],
            [-89.99, 14.0],
            [-89.995, 14.005],
            [-89.99, 14.01],
            [-90.0, 14.01],
            [-90.0, 14.0],
        ];
        assert!(zone("border_post", concave).is_ok());
        assert!(ring_self_crossing(&[]).is_none());
    }

    #[test]
    fn a_thin_sliver_is_held_to_its_kind_s_extent() {
        // 0.3° long and 0.002° wide: about 6.5 km² (under 80), but 32 km long.
        let sliver = vec![
            [-90.0, 14.0],
            [-89.7, 14.0],
            [-89.7, 14.002],
            [-90.0, 14.002],
            [-90.0, 14.0],
        ];
        let e = zone("border_post", sliver).unwrap_err();
        assert_eq!(e.pointer, "/geometry/coordinates/0");
        assert!(e.reason.contains("20 km"), "{e}");
        let (w, h) = ring_extent_km(
            &square(0.0, 0.0, 1.0)
                .into_iter()
                .map(|[lon, lat]| LatLon::new(lat, lon).unwrap())
                .collect::<Vec<_>>(),
        );
        assert!(
            (w - 111.2).abs() < 0.5 && (h - 111.2).abs() < 0.5,
            "{w} {h}"
        );
    }

    #[test]
    fn the_crossing_sweep_stays_fast_at_the_vertex_cap() {
        // A star of MAX_POLYGON_VERTICES - 1 points: simple, and every edge spans little.
        let n = MAX_POLYGON_VERTICES - 1;
        let mut ring: Vec<LatLon> = (0..n)
            .map(|i| {
                let a = i as f64 / n as f64 * std::f64::consts::TAU;
                let r = if i % 2 == 0 { 0.01 } else { 0.008 };
                LatLon::new(14.0 + r * a.sin(), -90.0 + r * a.cos()).unwrap()
            })
            .collect();
        ring.push(ring[0]);
        let started = std::time::Instant::now();
        assert_eq!(ring_self_crossing(&ring), None);
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        // The sweep's worst case: a sawtooth whose every edge spans the ring's width.
        let mut saw: Vec<LatLon> = (0..n - 3)
            .map(|i| {
                let lon = if i % 2 == 0 { -90.0 } else { -89.99 };
                LatLon::new(14.0 + i as f64 * 1e-5, lon).unwrap()
            })
            .collect();
        let top = saw.last().unwrap().lat;
        saw.push(LatLon::new(top, -90.001).unwrap());
        saw.push(LatLon::new(14.0, -90.001).unwrap());
        saw.push(saw[0]);
        let started = std::time::Instant::now();
        assert_eq!(ring_self_crossing(&saw), None);
        let took = started.elapsed();
        assert!(took < std::time::Duration::from_secs(5), "{took:?}");
        // And the same sawtooth with its last tooth pulled across the first ones.
        let k = saw.len() - 4;
        saw[k] = LatLon::new(13.99995, -89.995).unwrap();
        assert!(ring_self_crossing(&saw).is_some());
    }

    #[test]
    fn vertex_and_ring_counts_are_limited() {
        let line: Vec<[f64; 2]> = (0..420_000)
            .map(|i| [-90.0 + f64::from(i) * 1e-6, 14.0])
            .collect();
        let e = Corridor::from_geojson(
            cid(),
            &json!({"type": "Feature", "properties": {"width_m": 2000},
                    "geometry": {"type": "LineString", "coordinates": line}}),
        )
        .unwrap_err();
        assert_eq!(e.pointer, "/geometry/coordinates");
        assert!(e.reason.contains("420000 positions"), "{e}");
        let mut ring: Vec<[f64; 2]> = (0..6_000)
            .map(|i| {
                let a = f64::from(i) / 6_000.0 * std::f64::consts::TAU;
                [-90.0 + 0.001 * a.cos(), 14.0 + 0.001 * a.sin()]
            })
            .collect();
        ring.push(ring[0]);
        assert!(
            zone("border_post", ring)
                .unwrap_err()
                .reason
                .contains("positions")
        );
        let small = square(-90.0, 14.0, 0.001);
        let many = vec![small; 51];
        let e = Zone::from_geojson(
            ZoneId::parse("Z").unwrap(),
            &json!({"type": "Feature", "properties": {"kind": "rest_area"},
                    "geometry": {"type": "Polygon", "coordinates": many}}),
        )
        .unwrap_err();
        assert!(e.reason.contains("51 rings"), "{e}");
    }
}
