//! Signed distance functions of the synthetic shape classes, in object-local pixel coordinates (origin at
//! the centre of the shape's bounding box, y down). Negative inside, positive outside, in pixels (exact for
//! every class but the ellipse, whose first-order approximation is exact on the boundary, which is all the
//! one-pixel anti-aliasing ramp needs).

use super::synthetic::ShapeClass;

/// Inner radius of a ring as a fraction of its outer radius.
pub(crate) const RING_INNER_FRACTION: f32 = 0.5;
/// Arm width of a cross as a fraction of its size.
pub(crate) const CROSS_ARM_FRACTION: f32 = 1.0 / 3.0;
/// Inner radius of the five-pointed star as a fraction of its outer radius.
const STAR_INNER_FRACTION: f32 = 0.45;

#[derive(Clone, Debug)]
pub(crate) enum Geometry {
    Disc { radius: f32 },
    Ring { outer: f32, inner: f32 },
    Rect { half_width: f32, half_height: f32 },
    Cross { half: f32, half_arm: f32 },
    Ellipse { semi_x: f32, semi_y: f32 },
    Polygon { vertices: Vec<[f32; 2]> },
}

/// `vertices` moved and scaled so their bounding box is exactly `[-w/2, w/2] × [-h/2, h/2]`.
fn fit_polygon(vertices: &[[f32; 2]], width: f32, height: f32) -> Vec<[f32; 2]> {
    let (mut lo, mut hi) = ([f32::INFINITY; 2], [f32::NEG_INFINITY; 2]);
    for v in vertices {
        for a in 0..2 {
            lo[a] = lo[a].min(v[a]);
            hi[a] = hi[a].max(v[a]);
        }
    }
    let size = [width, height];
    vertices
        .iter()
        .map(|v| {
            let mut out = [0.0; 2];
            for a in 0..2 {
                out[a] = ((v[a] - lo[a]) / (hi[a] - lo[a]) - 0.5) * size[a];
            }
            out
        })
        .collect()
}

impl Geometry {
    /// The shape of `class` whose bounding box is `width × height` (round classes use the smaller side and
    /// are centred in the box).
    pub(crate) fn new(class: ShapeClass, width: f32, height: f32) -> Geometry {
        let side = width.min(height);
        match class {
            ShapeClass::Circle => Geometry::Disc { radius: side / 2.0 },
            ShapeClass::Ring => Geometry::Ring {
                outer: side / 2.0,
                inner: side / 2.0 * RING_INNER_FRACTION,
            },
            ShapeClass::Square => Geometry::Rect {
                half_width: side / 2.0,
                half_height: side / 2.0,
            },
            ShapeClass::Cross => Geometry::Cross {
                half: side / 2.0,
                half_arm: side / 2.0 * CROSS_ARM_FRACTION,
            },
            ShapeClass::Ellipse => Geometry::Ellipse {
                semi_x: width / 2.0,
                semi_y: height / 2.0,
            },
            ShapeClass::Triangle => Geometry::Polygon {
                vertices: fit_polygon(&[[0.0, -1.0], [1.0, 1.0], [-1.0, 1.0]], width, height),
            },
            ShapeClass::Diamond => Geometry::Polygon {
                vertices: fit_polygon(
                    &[[0.0, -1.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]],
                    width,
                    height,
                ),
            },
            ShapeClass::Star => {
                let points: Vec<[f32; 2]> = (0..10)
                    .map(|k| {
                        let radius = if k % 2 == 0 { 1.0 } else { STAR_INNER_FRACTION };
                        let angle = std::f32::consts::PI * (k as f32 / 5.0 - 0.5);
                        [radius * angle.cos(), radius * angle.sin()]
                    })
                    .collect();
                Geometry::Polygon {
                    vertices: fit_polygon(&points, width, height),
                }
            }
        }
    }

    /// Signed distance from `(x, y)` to the shape's boundary, negative inside.
    pub(crate) fn signed_distance(&self, x: f32, y: f32) -> f32 {
        match self {
            Geometry::Disc { radius } => x.hypot(y) - radius,
            Geometry::Ring { outer, inner } => {
                let mid = 0.5 * (outer + inner);
                let half_thickness = 0.5 * (outer - inner);
                (x.hypot(y) - mid).abs() - half_thickness
            }
            Geometry::Rect {
                half_width,
                half_height,
            } => rect_distance(x, y, *half_width, *half_height),
            Geometry::Cross { half, half_arm } => {
                rect_distance(x, y, *half, *half_arm).min(rect_distance(x, y, *half_arm, *half))
            }
            Geometry::Ellipse { semi_x, semi_y } => {
                let k0 = (x / semi_x).hypot(y / semi_y);
                let k1 = (x / (semi_x * semi_x)).hypot(y / (semi_y * semi_y));
                if k1 == 0.0 {
                    -semi_x.min(*semi_y)
                } else {
                    k0 * (k0 - 1.0) / k1
                }
            }
            Geometry::Polygon { vertices } => polygon_distance(vertices, x, y),
        }
    }
}

/// Signed distance to the axis-aligned rectangle `[-hw, hw] × [-hh, hh]`.
fn rect_distance(x: f32, y: f32, half_width: f32, half_height: f32) -> f32 {
    let qx = x.abs() - half_width;
    let qy = y.abs() - half_height;
    let outside = qx.max(0.0).hypot(qy.max(0.0));
    outside + qx.max(qy).min(0.0)
}

/// Signed distance to a simple polygon: the distance to the nearest edge, negative when an even–odd
/// crossing count puts the point inside.
fn polygon_distance(vertices: &[[f32; 2]], x: f32, y: f32) -> f32 {
    let mut nearest_sq = f32::INFINITY;
    let mut inside = false;
    let mut previous = vertices[vertices.len() - 1];
    for &current in vertices {
        let (ex, ey) = (current[0] - previous[0], current[1] - previous[1]);
        let (wx, wy) = (x - previous[0], y - previous[1]);
        let t = ((wx * ex + wy * ey) / (ex * ex + ey * ey)).clamp(0.0, 1.0);
        let (dx, dy) = (wx - ex * t, wy - ey * t);
        nearest_sq = nearest_sq.min(dx * dx + dy * dy);
        if (previous[1] > y) != (current[1] > y) {
            let crossing_x = previous[0] + ex * (y - previous[1]) / ey;
            if x < crossing_x {
                inside = !inside;
            }
        }
        previous = current;
    }
    let distance = nearest_sq.sqrt();
    if inside {
        -distance
    } else {
        distance
    }
}

/// Signed distance to the segment `a–b` thickened to `half_width`.
pub(crate) fn segment_distance(a: [f32; 2], b: [f32; 2], half_width: f32, x: f32, y: f32) -> f32 {
    let (ex, ey) = (b[0] - a[0], b[1] - a[1]);
    let (wx, wy) = (x - a[0], y - a[1]);
    let length_sq = ex * ex + ey * ey;
    let t = if length_sq > 0.0 {
        ((wx * ex + wy * ey) / length_sq).clamp(0.0, 1.0)
    } else {
        0.0
    };
    (wx - ex * t).hypot(wy - ey * t) - half_width
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_have_the_right_sign_and_scale() {
        let disc = Geometry::new(ShapeClass::Circle, 10.0, 10.0);
        assert_eq!(disc.signed_distance(0.0, 0.0), -5.0);
        assert!((disc.signed_distance(8.0, 0.0) - 3.0).abs() < 1e-6);

        let ring = Geometry::new(ShapeClass::Ring, 20.0, 20.0);
        assert!(ring.signed_distance(0.0, 0.0) > 0.0, "the hole is outside");
        assert!(ring.signed_distance(7.5, 0.0) < 0.0);
        assert!((ring.signed_distance(11.0, 0.0) - 1.0).abs() < 1e-6);

        let square = Geometry::new(ShapeClass::Square, 8.0, 8.0);
        assert!((square.signed_distance(7.0, 8.0) - 5.0).abs() < 1e-6);
        assert_eq!(square.signed_distance(3.0, 0.0), -1.0);

        let cross = Geometry::new(ShapeClass::Cross, 12.0, 12.0);
        assert!(cross.signed_distance(5.0, 0.0) < 0.0);
        assert!(
            cross.signed_distance(5.0, 5.0) > 0.0,
            "the corners are empty"
        );

        let ellipse = Geometry::new(ShapeClass::Ellipse, 20.0, 10.0);
        assert!(ellipse.signed_distance(0.0, 0.0) < 0.0);
        assert!(ellipse.signed_distance(10.0, 0.0).abs() < 1e-5);
        assert!(ellipse.signed_distance(0.0, 5.0).abs() < 1e-5);
        assert!((ellipse.signed_distance(12.0, 0.0) - 2.0).abs() < 0.2);
    }

    #[test]
    fn polygons_fill_their_box_and_hold_their_centre() {
        for class in [ShapeClass::Triangle, ShapeClass::Diamond, ShapeClass::Star] {
            let shape = Geometry::new(class, 30.0, 20.0);
            let Geometry::Polygon { vertices } = &shape else {
                panic!("{class:?} is a polygon")
            };
            let xs = vertices.iter().map(|v| v[0]);
            let ys = vertices.iter().map(|v| v[1]);
            assert!((xs.clone().fold(f32::MAX, f32::min) + 15.0).abs() < 1e-5);
            assert!((xs.fold(f32::MIN, f32::max) - 15.0).abs() < 1e-5);
            assert!((ys.clone().fold(f32::MAX, f32::min) + 10.0).abs() < 1e-5);
            assert!((ys.fold(f32::MIN, f32::max) - 10.0).abs() < 1e-5);
            assert!(shape.signed_distance(0.0, 1.0) < 0.0, "{class:?}");
            assert!(shape.signed_distance(14.9, -9.9) > 0.0, "{class:?} corner");
        }
        let diamond = Geometry::new(ShapeClass::Diamond, 2.0, 2.0);
        let half_diagonal = std::f32::consts::FRAC_1_SQRT_2;
        assert!((diamond.signed_distance(0.0, 0.0) + half_diagonal).abs() < 1e-6);
    }

    #[test]
    fn segments_are_thick_lines() {
        let d = |x, y| segment_distance([0.0, 0.0], [10.0, 0.0], 1.0, x, y);
        assert_eq!(d(5.0, 0.0), -1.0);
        assert_eq!(d(5.0, 3.0), 2.0);
        assert_eq!(d(13.0, 0.0), 2.0);
        assert_eq!(segment_distance([1.0, 1.0], [1.0, 1.0], 0.5, 1.0, 3.0), 1.5);
    }
}
