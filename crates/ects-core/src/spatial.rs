//! Fast geometry for the rules: a corridor is an R-tree of its segments, each kept as unit
//! vectors on the sphere, so a check looks at the few segments near the point and measures
//! the exact spherical (great-circle) distance to each. Zones are an R-tree of envelopes
//! with exact containment tests behind it.
//!
//! Distances use the mean Earth radius (GRS80, 6 371 008.8 m), as `geo::Haversine` does.
//! Corridors crossing the antimeridian are not supported (no customs corridor does).

use std::collections::HashMap;
use std::sync::Arc;

use geo::{Contains, Coord, LineString, Point, Polygon};
use rstar::{AABB, RTree, RTreeObject};

use crate::geo::{Corridor, Zone, ZoneKind, ZoneShape};
use crate::ids::{CorridorId, OfficeCode, ZoneId};
use crate::model::LatLon;
use crate::trip::RulesOverride;

pub const EARTH_RADIUS_M: f64 = 6_371_008.8;
/// Metres per degree of latitude on that sphere.
const M_PER_DEG: f64 = EARTH_RADIUS_M * std::f64::consts::PI / 180.0;

#[derive(Debug, Clone, Copy, PartialEq)]
struct V3 {
    x: f64,
    y: f64,
    z: f64,
}

impl V3 {
    fn from_lat_lon(lat: f64, lon: f64) -> Self {
        let (slat, clat) = lat.to_radians().sin_cos();
        let (slon, clon) = lon.to_radians().sin_cos();
        Self {
            x: clat * clon,
            y: clat * slon,
            z: slat,
        }
    }
    fn dot(self, o: Self) -> f64 {
        self.x * o.x + self.y * o.y + self.z * o.z
    }
    fn cross(self, o: Self) -> Self {
        Self {
            x: self.y * o.z - self.z * o.y,
            y: self.z * o.x - self.x * o.z,
            z: self.x * o.y - self.y * o.x,
        }
    }
    fn norm(self) -> f64 {
        self.dot(self).sqrt()
    }
    fn scale(self, k: f64) -> Self {
        Self {
            x: self.x * k,
            y: self.y * k,
            z: self.z * k,
        }
    }
    fn sub(self, o: Self) -> Self {
        Self {
            x: self.x - o.x,
            y: self.y - o.y,
            z: self.z - o.z,
        }
    }
}

/// The angle between two unit vectors, stable for small and large angles.
fn angle(a: V3, b: V3) -> f64 {
    a.cross(b).norm().atan2(a.dot(b))
}

/// Great-circle distance in metres.
pub fn distance_m(a: LatLon, b: LatLon) -> f64 {
    angle(
        V3::from_lat_lon(a.lat, a.lon),
        V3::from_lat_lon(b.lat, b.lon),
    ) * EARTH_RADIUS_M
}

/// One corridor segment, ready for distance checks.
#[derive(Debug, Clone)]
struct Segment {
    a: V3,
    b: V3,
    /// Unit normal of the great circle through a and b; `None` for a zero-length segment.
    n: Option<V3>,
    envelope: AABB<[f64; 2]>,
}

impl Segment {
    fn new(p: LatLon, q: LatLon) -> Self {
        let a = V3::from_lat_lon(p.lat, p.lon);
        let b = V3::from_lat_lon(q.lat, q.lon);
        let c = a.cross(b);
        let len = c.norm();
        let n = (len > 1e-15).then(|| c.scale(1.0 / len));
        // A great-circle arc bows poleward of the straight lon/lat box of its ends; widen
        // the box by a bound on that bow so that the index never misses the segment.
        let arc_m = angle(a, b) * EARTH_RADIUS_M;
        let bow_deg = (arc_m * arc_m / (4.0 * EARTH_RADIUS_M) + 1.0) / M_PER_DEG;
        let max_lat = p.lat.abs().max(q.lat.abs()).min(89.0);
        let bow_lon = bow_deg / max_lat.to_radians().cos();
        let envelope = AABB::from_corners(
            [p.lon.min(q.lon) - bow_lon, p.lat.min(q.lat) - bow_deg],
            [p.lon.max(q.lon) + bow_lon, p.lat.max(q.lat) + bow_deg],
        );
        Self { a, b, n, envelope }
    }

    /// Whether the arc may lie within `sin_radius` (the sine of an angular radius) of `p`:
    /// the distance to the arc is never less than the distance to its great circle, which
    /// one dot product gives. A cheap test before the exact one.
    fn may_be_within(&self, p: V3, sin_radius: f64) -> bool {
        self.n.is_none_or(|n| p.dot(n).abs() <= sin_radius)
    }

    /// Exact distance on the sphere from `p` to this arc, in radians.
    fn angle_to(&self, p: V3) -> f64 {
        if let Some(n) = self.n {
            let sin_xt = p.dot(n);
            // The foot of the perpendicular on the great circle; inside the arc when it lies
            // between a and b going the short way round.
            let foot = p.sub(n.scale(sin_xt));
            if self.a.cross(foot).dot(n) >= 0.0 && foot.cross(self.b).dot(n) >= 0.0 {
                return sin_xt.clamp(-1.0, 1.0).asin().abs();
            }
        }
        angle(p, self.a).min(angle(p, self.b))
    }
}

impl RTreeObject for Segment {
    type Envelope = AABB<[f64; 2]>;
    fn envelope(&self) -> Self::Envelope {
        self.envelope
    }
}

/// A point's search box: `radius_m` around it in degrees, widened towards the poles.
fn search_box(p: LatLon, radius_m: f64) -> AABB<[f64; 2]> {
    let dlat = radius_m / M_PER_DEG;
    let lat_far = (p.lat.abs() + dlat).min(89.0);
    let dlon = dlat / lat_far.to_radians().cos();
    AABB::from_corners([p.lon - dlon, p.lat - dlat], [p.lon + dlon, p.lat + dlat])
}

/// A corridor ready for checks: its segments indexed, its thresholds.
#[derive(Debug)]
pub struct CorridorIndex {
    pub id: CorridorId,
    pub width_m: f64,
    pub office_of_departure: Option<OfficeCode>,
    pub office_of_destination: Option<OfficeCode>,
    pub rules: RulesOverride,
    tree: RTree<Segment>,
    line: Vec<LatLon>,
}

impl CorridorIndex {
    pub fn new(corridor: &Corridor) -> Self {
        let segments: Vec<Segment> = corridor
            .line
            .windows(2)
            .map(|w| Segment::new(w[0], w[1]))
            .collect();
        Self {
            id: corridor.id.clone(),
            width_m: corridor.width_m,
            office_of_departure: corridor.office_of_departure.clone(),
            office_of_destination: corridor.office_of_destination.clone(),
            rules: corridor.rules.clone(),
            tree: RTree::bulk_load(segments),
            line: corridor.line.clone(),
        }
    }

    pub fn half_width_m(&self) -> f64 {
        self.width_m / 2.0
    }

    pub fn vertices(&self) -> usize {
        self.line.len()
    }

    /// Distance in metres from `p` to the corridor's line, if it is within `radius_m`
    /// (only the segments near `p` are measured).
    pub fn distance_within(&self, p: LatLon, radius_m: f64) -> Option<f64> {
        let v = V3::from_lat_lon(p.lat, p.lon);
        let sin_radius = (radius_m / EARTH_RADIUS_M).min(1.0).sin();
        self.tree
            .locate_in_envelope_intersecting(&search_box(p, radius_m))
            .filter(|s| s.may_be_within(v, sin_radius))
            .map(|s| s.angle_to(v) * EARTH_RADIUS_M)
            .filter(|d| *d <= radius_m)
            .min_by(f64::total_cmp)
    }

    /// Whether `p` is inside the corridor band (within half its width of the line). Stops at
    /// the first segment close enough.
    pub fn contains(&self, p: LatLon) -> bool {
        let radius_m = self.half_width_m();
        let v = V3::from_lat_lon(p.lat, p.lon);
        let radius = radius_m / EARTH_RADIUS_M;
        let sin_radius = radius.min(1.0).sin();
        self.tree
            .locate_in_envelope_intersecting(&search_box(p, radius_m))
            .any(|s| s.may_be_within(v, sin_radius) && s.angle_to(v) <= radius)
    }

    /// Whether a zone lies on or by the corridor: its circle, or the circle around its
    /// polygon's outer ring, comes within half the corridor's width of the line. A
    /// superset for a polygon (its circle is larger than it), never a miss.
    pub fn reaches(&self, shape: &ZoneShape) -> bool {
        let (centre, radius_m) = match shape {
            ZoneShape::Circle { centre, radius_m } => (*centre, *radius_m),
            ZoneShape::Polygon(rings) => {
                let Some(outer) = rings.first().filter(|r| !r.is_empty()) else {
                    return false;
                };
                let (mut lo, mut hi) = ((f64::MAX, f64::MAX), (f64::MIN, f64::MIN));
                for p in outer {
                    lo = (lo.0.min(p.lat), lo.1.min(p.lon));
                    hi = (hi.0.max(p.lat), hi.1.max(p.lon));
                }
                let centre = LatLon {
                    lat: (lo.0 + hi.0) / 2.0,
                    lon: (lo.1 + hi.1) / 2.0,
                };
                let radius = outer
                    .iter()
                    .map(|p| distance_m(centre, *p))
                    .fold(0.0, f64::max);
                (centre, radius)
            }
        };
        self.distance_within(centre, self.half_width_m() + radius_m)
            .is_some()
    }

    /// The reference: distance to every segment with `geo`'s haversine closest point. For
    /// tests and benchmarks; the rules never scan all segments.
    pub fn distance_brute_force(&self, p: LatLon) -> f64 {
        use geo::{Closest, Distance, Haversine, HaversineClosestPoint, Line};
        let from = Point::new(p.lon, p.lat);
        self.line
            .windows(2)
            .map(|w| {
                let line = Line::new(
                    Coord {
                        x: w[0].lon,
                        y: w[0].lat,
                    },
                    Coord {
                        x: w[1].lon,
                        y: w[1].lat,
                    },
                );
                match line.haversine_closest_point(&from) {
                    Closest::Intersection(q) | Closest::SinglePoint(q) => {
                        Haversine.distance(from, q)
                    }
                    Closest::Indeterminate => Haversine
                        .distance(from, line.start_point())
                        .min(Haversine.distance(from, line.end_point())),
                }
            })
            .fold(f64::INFINITY, f64::min)
    }
}

#[derive(Debug)]
enum Prepared {
    Polygon(Polygon<f64>),
    Circle { centre: LatLon, radius_m: f64 },
}

#[derive(Debug)]
struct ZoneEntry {
    zone: Zone,
    prepared: Prepared,
    envelope: AABB<[f64; 2]>,
}

#[derive(Debug)]
struct ZoneBox {
    envelope: AABB<[f64; 2]>,
    index: usize,
}

impl RTreeObject for ZoneBox {
    type Envelope = AABB<[f64; 2]>;
    fn envelope(&self) -> Self::Envelope {
        self.envelope
    }
}

/// Every registered zone, indexed.
#[derive(Debug, Default)]
pub struct ZoneSet {
    entries: Vec<ZoneEntry>,
    tree: RTree<ZoneBox>,
    by_id: HashMap<ZoneId, usize>,
}

impl ZoneSet {
    pub fn new(zones: Vec<Zone>) -> Self {
        let entries: Vec<ZoneEntry> = zones
            .into_iter()
            .map(|zone| {
                let (prepared, envelope) = match &zone.shape {
                    ZoneShape::Polygon(rings) => {
                        let ring = |r: &Vec<LatLon>| {
                            LineString::from(r.iter().map(|p| (p.lon, p.lat)).collect::<Vec<_>>())
                        };
                        let exterior = rings
                            .first()
                            .map(ring)
                            .unwrap_or_else(|| LineString::new(vec![]));
                        let holes = rings.iter().skip(1).map(ring).collect();
                        let (mut lo, mut hi) = ([f64::MAX, f64::MAX], [f64::MIN, f64::MIN]);
                        for p in rings.iter().flatten() {
                            lo = [lo[0].min(p.lon), lo[1].min(p.lat)];
                            hi = [hi[0].max(p.lon), hi[1].max(p.lat)];
                        }
                        (
                            Prepared::Polygon(Polygon::new(exterior, holes)),
                            AABB::from_corners(lo, hi),
                        )
                    }
                    ZoneShape::Circle { centre, radius_m } => (
                        Prepared::Circle {
                            centre: *centre,
                            radius_m: *radius_m,
                        },
                        search_box(*centre, *radius_m),
                    ),
                };
                ZoneEntry {
                    zone,
                    prepared,
                    envelope,
                }
            })
            .collect();
        let tree = RTree::bulk_load(
            entries
                .iter()
                .enumerate()
                .map(|(index, e)| ZoneBox {
                    envelope: e.envelope,
                    index,
                })
                .collect(),
        );
        let by_id = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.zone.id.clone(), i))
            .collect();
        Self {
            entries,
            tree,
            by_id,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, id: &ZoneId) -> Option<&Zone> {
        self.by_id.get(id).map(|&i| &self.entries[i].zone)
    }

    /// Every zone, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Zone> {
        self.entries.iter().map(|e| &e.zone)
    }

    fn entry_contains(entry: &ZoneEntry, p: LatLon) -> bool {
        match &entry.prepared {
            Prepared::Polygon(poly) => poly.contains(&Point::new(p.lon, p.lat)),
            Prepared::Circle { centre, radius_m } => distance_m(*centre, p) <= *radius_m,
        }
    }

    /// Whether the zone `id` contains `p`.
    pub fn zone_contains(&self, id: &ZoneId, p: LatLon) -> bool {
        self.by_id
            .get(id)
            .is_some_and(|&i| Self::entry_contains(&self.entries[i], p))
    }

    /// The zones that contain `p`.
    pub fn containing(&self, p: LatLon) -> impl Iterator<Item = &Zone> {
        self.tree
            .locate_in_envelope_intersecting(&AABB::from_point([p.lon, p.lat]))
            .map(|b| &self.entries[b.index])
            .filter(move |e| Self::entry_contains(e, p))
            .map(|e| &e.zone)
    }

    /// Whether `p` is in a zone of this office (its customs office or border post zone).
    pub fn in_office(&self, office: &OfficeCode, p: LatLon) -> bool {
        self.containing(p)
            .any(|z| z.office_code.as_ref() == Some(office))
    }

    /// Whether any zone is registered for this office.
    pub fn has_office(&self, office: &OfficeCode) -> bool {
        self.entries
            .iter()
            .any(|e| e.zone.office_code.as_ref() == Some(office))
    }

    /// Whether `p` is where a truck may stand: a rest area, customs office or border post.
    pub fn stop_allowed(&self, p: LatLon) -> Option<ZoneKind> {
        self.containing(p)
            .map(|z| z.kind)
            .filter(|k| *k != ZoneKind::ReleasePlace)
            .min_by_key(|k| match k {
                // An office or border post permits any stop; a rest area only a rest.
                ZoneKind::CustomsOffice | ZoneKind::BorderPost => 0,
                _ => 1,
            })
    }
}

/// The corridors and zones the rules check against; shared by every trip.
#[derive(Debug, Default)]
pub struct Geography {
    corridors: HashMap<CorridorId, Arc<CorridorIndex>>,
    pub zones: ZoneSet,
}

impl Geography {
    pub fn new(corridors: Vec<Corridor>, zones: Vec<Zone>) -> Self {
        Self {
            corridors: corridors
                .iter()
                .map(|c| (c.id.clone(), Arc::new(CorridorIndex::new(c))))
                .collect(),
            zones: ZoneSet::new(zones),
        }
    }

    pub fn corridor(&self, id: &CorridorId) -> Option<&Arc<CorridorIndex>> {
        self.corridors.get(id)
    }

    /// The corridor a trip follows: the one it names, else the one registered for its
    /// offices of departure and destination.
    pub fn corridor_for(
        &self,
        id: Option<&CorridorId>,
        departure: &OfficeCode,
        destination: &OfficeCode,
    ) -> Option<&Arc<CorridorIndex>> {
        match id {
            Some(id) => self.corridors.get(id),
            None => {
                let mut matching: Vec<_> = self
                    .corridors
                    .values()
                    .filter(|c| {
                        c.office_of_departure.as_ref() == Some(departure)
                            && c.office_of_destination.as_ref() == Some(destination)
                    })
                    .collect();
                // Deterministic when several match: the lowest id.
                matching.sort_by(|a, b| a.id.cmp(&b.id));
                matching.into_iter().next()
            }
        }
    }

    pub fn corridor_count(&self) -> usize {
        self.corridors.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ll(lat: f64, lon: f64) -> LatLon {
        LatLon::new(lat, lon).unwrap()
    }

    fn corridor(line: Vec<LatLon>, width_m: f64) -> Corridor {
        Corridor {
            id: CorridorId::parse("C1").unwrap(),
            width_m,
            line,
            office_of_departure: None,
            office_of_destination: None,
            rules: RulesOverride::default(),
        }
    }

    #[test]
    fn distance_to_a_meridian_segment_is_the_longitude_offset() {
        let c = CorridorIndex::new(&corridor(vec![ll(0.0, 0.0), ll(1.0, 0.0)], 2000.0));
        // 0.005° of longitude at the equator is about 556 m.
        let d = c.distance_within(ll(0.5, 0.005), 10_000.0).unwrap();
        assert!((d - 556.0).abs() < 1.0, "{d}");
        assert!(c.contains(ll(0.5, 0.008)));
        assert!(!c.contains(ll(0.5, 0.01)));
        // Beyond the end, the distance is to the end point.
        let past = c.distance_within(ll(1.01, 0.0), 10_000.0).unwrap();
        assert!((past - 1112.0).abs() < 2.0, "{past}");
        assert_eq!(c.distance_within(ll(3.0, 3.0), 10_000.0), None);
    }

    #[test]
    fn zones_contain_what_they_cover() {
        let poly = Zone {
            id: ZoneId::parse("OFFICE").unwrap(),
            kind: ZoneKind::CustomsOffice,
            office_code: Some(OfficeCode::parse("GTPQZ").unwrap()),
            shape: ZoneShape::Polygon(vec![vec![
                ll(13.92, -90.80),
                ll(13.92, -90.77),
                ll(13.94, -90.77),
                ll(13.94, -90.80),
                ll(13.92, -90.80),
            ]]),
        };
        let rest = Zone {
            id: ZoneId::parse("REST").unwrap(),
            kind: ZoneKind::RestArea,
            office_code: None,
            shape: ZoneShape::Circle {
                centre: ll(14.0, -90.6),
                radius_m: 300.0,
            },
        };
        let set = ZoneSet::new(vec![poly, rest]);
        let office = OfficeCode::parse("GTPQZ").unwrap();
        assert!(set.in_office(&office, ll(13.93, -90.78)));
        assert!(!set.in_office(&office, ll(13.95, -90.78)));
        assert_eq!(
            set.stop_allowed(ll(14.001, -90.6)),
            Some(ZoneKind::RestArea)
        );
        assert_eq!(set.stop_allowed(ll(14.01, -90.6)), None);
        assert!(set.zone_contains(&ZoneId::parse("REST").unwrap(), ll(14.0, -90.6)));
    }

    #[test]
    fn a_zone_reaches_a_corridor_when_its_circle_touches_the_band() {
        // 2 km wide along the meridian; 0.01° of longitude at the equator is 1,112 m.
        let c = CorridorIndex::new(&corridor(vec![ll(0.0, 0.0), ll(1.0, 0.0)], 2000.0));
        let circle = |lon: f64, radius_m: f64| ZoneShape::Circle {
            centre: ll(0.5, lon),
            radius_m,
        };
        assert!(c.reaches(&circle(0.0, 10.0)));
        // 1,112 m off the line: 112 m beyond the band, so a radius of 150 m reaches it
        // and one of 50 m does not.
        assert!(c.reaches(&circle(0.01, 150.0)));
        assert!(!c.reaches(&circle(0.01, 50.0)));
        let square = |lon: f64| {
            ZoneShape::Polygon(vec![vec![
                ll(0.49, lon),
                ll(0.49, lon + 0.01),
                ll(0.51, lon + 0.01),
                ll(0.51, lon),
                ll(0.49, lon),
            ]])
        };
        assert!(c.reaches(&square(0.005)));
        assert!(!c.reaches(&square(0.5)));
        assert!(!c.reaches(&ZoneShape::Polygon(vec![])));
    }

    fn line_strategy() -> impl Strategy<Value = Vec<LatLon>> {
        // Corridors in the tropics to mid-latitudes, vertices a few hundred metres to tens
        // of kilometres apart.
        (
            -50.0f64..50.0,
            -170.0f64..170.0,
            prop::collection::vec((-0.3f64..0.3, -0.3f64..0.3), 1..40),
        )
            .prop_map(|(lat0, lon0, steps)| {
                let mut line = vec![ll(lat0, lon0)];
                let (mut lat, mut lon) = (lat0, lon0);
                for (dlat, dlon) in steps {
                    lat = (lat + dlat).clamp(-60.0, 60.0);
                    lon = (lon + dlon).clamp(-175.0, 175.0);
                    line.push(ll(lat, lon));
                }
                line
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// The indexed distance equals the brute-force scan with geo's haversine closest
        /// point, wherever the point is within the search radius.
        #[test]
        fn indexed_distance_matches_brute_force(
            line in line_strategy(),
            pick in 0usize..1000,
            offset in (-0.05f64..0.05, -0.05f64..0.05),
        ) {
            let c = CorridorIndex::new(&corridor(line.clone(), 1000.0));
            let base = line[pick % line.len()];
            let p = ll((base.lat + offset.0).clamp(-89.0, 89.0), base.lon + offset.1);
            let reference = c.distance_brute_force(p);
            let radius = 20_000.0;
            // contains() takes its own early-exit path; it must agree with the reference.
            let half = c.half_width_m();
            if (reference - half).abs() > 0.05 {
                prop_assert_eq!(c.contains(p), reference <= half);
            }
            match c.distance_within(p, radius) {
                Some(d) => prop_assert!((d - reference).abs() <= 0.05 + reference * 1e-6,
                    "indexed {d} vs brute force {reference}"),
                None => prop_assert!(reference > radius - 0.05, "missed a segment at {reference} m"),
            }
        }
    }
}
