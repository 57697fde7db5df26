//! Native histogram buckets (Prometheus' exponential, sparse buckets), kept beside a histogram's
//! classic ones, the way Prometheus' Go client (`client_golang`, `prometheus/histogram.go`) keeps
//! them, so that a scrape of tallyd and of a Go program mean the same thing.
//!
//! A *schema* `n` (from -4 to 8) splits every power of two into `2^n` buckets (for `n < 0`, one
//! bucket spans `2^-n` powers of two); bucket `i` holds `(2^((i-1)/2^n), 2^(i/2^n)]`, so bucket
//! 0 ends at 1. Observations with `|v| <=` the zero threshold count in the zero bucket; the
//! others in a positive or a negative bucket, by index. Only populated buckets are kept.
//!
//! - The schema comes from a bucket *factor* (the most one bucket may be wider than the one
//!   before): the finest schema whose factor `2^(2^-n)` is at most that ([`schema_for_factor`]).
//!   client_golang's recommended 1.1 gives schema 3 (8 buckets per power of two).
//! - The index of a value comes from `frexp` (mantissa and exponent): for `n > 0`, a search of
//!   the mantissa among the `2^n` boundaries within a power of two ([`BOUNDARIES`]), plus the
//!   exponent times `2^n`; for `n <= 0`, the exponent shifted right by `-n`, rounding up.
//! - More populated buckets than the cap widens the buckets: the schema drops by one (two
//!   neighbouring buckets merge into one) until the count fits, or the schema is -4. This is
//!   client_golang's `doubleBucketWidth`; its other two strategies (resetting the histogram,
//!   widening the zero bucket) are not used, as statsd_exporter does not configure them either.
//!
//! Cost: a histogram without native buckets carries `None` and never reaches this module. With
//! them, an observation takes a short lock (one per series, so threads contend only on the same
//! series), a `frexp`, two binary searches (the boundaries, then the populated buckets, at most
//! the cap), and an increment; a bucket seen for the first time inserts into a sorted `Vec`.
//! Memory is bounded by the cap: 16 bytes per populated bucket.

use parking_lot::Mutex;

/// The finest schema: 256 buckets per power of two.
pub const MAX_SCHEMA: i8 = 8;
/// The coarsest schema: one bucket spans 16 powers of two (a factor of 65536).
pub const MIN_SCHEMA: i8 = -4;
/// client_golang's default zero threshold, 2^-128: a bucket boundary at every schema.
pub const DEFAULT_ZERO_THRESHOLD: f64 = 2.938_735_877_055_719e-39;
/// statsd_exporter's default cap on populated buckets.
pub const DEFAULT_MAX_BUCKETS: u32 = 256;
/// The most populated buckets a cap may allow: bounded memory (16 bytes each) per series.
pub const MOST_MAX_BUCKETS: u32 = 4096;

/// How one family's histograms keep native buckets.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NativeConfig {
    /// The starting schema (it may drop per series as the cap requires).
    pub schema: i8,
    /// Observations with an absolute value at most this count in the zero bucket.
    pub zero_threshold: f64,
    /// The most populated buckets (positive and negative together) before the buckets widen.
    pub max_buckets: u32,
}

impl NativeConfig {
    /// The configuration for a bucket factor and a cap, or `None` when the factor turns native
    /// buckets off (`<= 1`, as in client_golang).
    pub fn new(bucket_factor: f64, max_buckets: u32) -> Option<NativeConfig> {
        (bucket_factor > 1.0).then(|| NativeConfig {
            schema: schema_for_factor(bucket_factor),
            zero_threshold: DEFAULT_ZERO_THRESHOLD,
            max_buckets: max_buckets.max(1),
        })
    }
}

/// The largest schema `n` (between -4 and 8) whose bucket factor `2^(2^-n)` is at most
/// `factor`; factors finer than schema 8's (about 1.0027) still get schema 8. `factor` must be
/// above 1.
pub fn schema_for_factor(factor: f64) -> i8 {
    let floor = factor.log2().log2().floor();
    if floor >= 4.0 {
        MIN_SCHEMA
    } else if floor > -8.0 {
        -(floor as i8)
    } else {
        // -8 and below, and NaN from a factor that is not above 1.
        MAX_SCHEMA
    }
}

/// The upper bounds of schema 8's buckets within one power of two, as mantissas in `[0.5, 1)`:
/// `2^(j/256 - 1)` for `j` in `0..256`. Schema `n`'s are every `2^(8-n)`-th of them (each
/// coarser schema's boundaries are a subset of the finer one's).
///
/// These are the exact `f64` values client_golang (`nativeHistogramBounds`) and Prometheus
/// (`model/histogram`) use. Computing them (with `exp2`, or client_golang's own recurrence)
/// gives values one or two units in the last place away from theirs, and a value on a boundary
/// must land in the same bucket on both sides, so the table is written out; a test checks every
/// entry against the formula.
#[rustfmt::skip]
pub const BOUNDARIES: [f64; 256] = [
    0.5, 0.5013556375251013, 0.5027149505564014, 0.5040779490592088,
    0.5054446430258502, 0.5068150424757447, 0.5081891574554764, 0.509566998038869,
    0.5109485743270583, 0.5123338964485679, 0.5137229745593818, 0.5151158188430205,
    0.5165124395106142, 0.5179128468009786, 0.5193170509806894, 0.520725062344158,
    0.5221368912137069, 0.5235525479396449, 0.5249720429003435, 0.526395386502313,
    0.5278225891802786, 0.5292536613972564, 0.5306886136446309, 0.5321274564422321,
    0.5335702003384117, 0.5350168559101208, 0.5364674337629877, 0.5379219445313954,
    0.5393803988785598, 0.5408428074966075, 0.5423091811066545, 0.5437795304588847,
    0.5452538663326288, 0.5467321995364429, 0.5482145409081883, 0.549700901315111,
    0.5511912916539204, 0.5526857228508706, 0.5541842058618393, 0.5556867516724088,
    0.5571933712979462, 0.5587040757836845, 0.5602188762048033, 0.5617377836665098,
    0.5632608093041209, 0.564787964283144, 0.5663192597993595, 0.5678547070789026,
    0.5693943173783458, 0.5709381019847808, 0.572486072215902, 0.5740382394200894,
    0.5755946149764913, 0.5771552102951081, 0.5787200368168754, 0.5802891060137493,
    0.5818624293887887, 0.5834400184762408, 0.585021884841625, 0.5866080400818185,
    0.5881984958251406, 0.5897932637314379, 0.5913923554921704, 0.5929957828304968,
    0.5946035575013605, 0.5962156912915756, 0.5978321960199137, 0.5994530835371903,
    0.6010783657263515, 0.6027080545025619, 0.6043421618132907, 0.6059806996384005,
    0.6076236799902344, 0.6092711149137041, 0.6109230164863786, 0.6125793968185725,
    0.6142402680534349, 0.6159056423670379, 0.6175755319684665, 0.6192499490999082,
    0.620928906036742, 0.622612415087629, 0.6243004885946023, 0.6259931389331581,
    0.6276903785123455, 0.6293922197748583, 0.6310986751971253, 0.6328097572894031,
    0.6345254785958666, 0.6362458516947014, 0.637970889198196, 0.6397006037528346,
    0.6414350080393891, 0.6431741147730128, 0.6449179367033329, 0.6466664866145447,
    0.6484197773255048, 0.6501778216898253, 0.6519406325959679, 0.6537082229673385,
    0.6554806057623822, 0.6572577939746774, 0.659039800633032, 0.6608266388015788,
    0.6626183215798706, 0.6644148621029772, 0.6662162735415805, 0.6680225691020727,
    0.6698337620266515, 0.6716498655934177, 0.6734708931164728, 0.6752968579460171,
    0.6771277734684463, 0.6789636531064505, 0.6808045103191123, 0.6826503586020058,
    0.6845012114872953, 0.6863570825438342, 0.688217985377265, 0.690083933630119,
    0.6919549409819159, 0.6938310211492645, 0.6957121878859629, 0.6975984549830999,
    0.6994898362691555, 0.7013863456101023, 0.7032879969095076, 0.7051948041086352,
    0.7071067811865475, 0.7090239421602076, 0.7109463010845827, 0.7128738720527471,
    0.7148066691959849, 0.7167447066838943, 0.718687998724491, 0.7206365595643126,
    0.7225904034885232, 0.7245495448210174, 0.7265139979245261, 0.7284837772007218,
    0.7304588970903234, 0.7324393720732029, 0.7344252166684908, 0.7364164454346837,
    0.7384130729697496, 0.7404151139112358, 0.7424225829363761, 0.7444354947621984,
    0.7464538641456323, 0.7484777058836176, 0.7505070348132126, 0.7525418658117031,
    0.7545822137967112, 0.7566280937263048, 0.7586795205991071, 0.7607365094544071,
    0.762799075372269, 0.7648672334736434, 0.7669409989204777, 0.7690203869158282,
    0.7711054127039704, 0.7731960915705107, 0.7752924388424999, 0.7773944698885442,
    0.7795022001189185, 0.7816156449856788, 0.7837348199827764, 0.7858597406461707,
    0.7879904225539431, 0.7901268813264122, 0.7922691326262467, 0.7944171921585818,
    0.7965710756711334, 0.7987307989543135, 0.8008963778413465, 0.8030678282083853,
    0.805245165974627, 0.8074284071024302, 0.8096175675974316, 0.8118126635086642,
    0.8140137109286738, 0.8162207259936375, 0.8184337248834821, 0.820652723822003,
    0.8228777390769823, 0.8251087869603088, 0.8273458838280969, 0.8295890460808079,
    0.8318382901633681, 0.8340936325652911, 0.8363550898207981, 0.8386226785089391,
    0.8408964152537144, 0.8431763167241966, 0.8454623996346523, 0.8477546807446661,
    0.8500531768592616, 0.8523579048290255, 0.8546688815502312, 0.8569861239649629,
    0.8593096490612387, 0.8616394738731368, 0.8639756154809185, 0.8663180910111553,
    0.8686669176368529, 0.871022112577578, 0.8733836930995842, 0.8757516765159389,
    0.8781260801866495, 0.8805069215187917, 0.8828942179666361, 0.8852879870317771,
    0.8876882462632604, 0.890095013257712, 0.8925083056594671, 0.8949281411607002,
    0.8973545375015533, 0.8997875124702672, 0.9022270839033115, 0.9046732696855155,
    0.9071260877501991, 0.909585556079304, 0.9120516927035263, 0.9145245157024483,
    0.9170040432046711, 0.9194902933879467, 0.9219832844793128, 0.9244830347552253,
    0.9269895625416926, 0.92950288621441, 0.9320230241988943, 0.9345499949706191,
    0.9370838170551498, 0.93962450902828, 0.9421720895161669, 0.9447265771954693,
    0.9472879907934827, 0.9498563490882775, 0.9524316709088368, 0.9550139751351947,
    0.9576032806985735, 0.9601996065815236, 0.9628029718180622, 0.9654133954938133,
    0.9680308967461471, 0.9706554947643201, 0.9732872087896164, 0.9759260581154889,
    0.9785720620876999, 0.9812252401044634, 0.9838856116165875, 0.9865531961276168,
    0.9892280131939752, 0.9919100824251095, 0.9945994234836328, 0.9972960560854698,
];

/// `(mantissa, exponent)` with `value = mantissa * 2^exponent` and the mantissa in `[0.5, 1)`
/// (C's and Go's `frexp`) for a finite, non-zero `value`; `(value, 0)` otherwise.
pub fn frexp(value: f64) -> (f64, i32) {
    const EXPONENT_MASK: u64 = 0x7ff << 52;
    if value == 0.0 || !value.is_finite() {
        return (value, 0);
    }
    let (value, adjust) = if value.abs() < f64::MIN_POSITIVE {
        // Subnormal: scale into the normal range first (2^54 is exact).
        (value * (1u64 << 54) as f64, -54)
    } else {
        (value, 0)
    };
    let bits = value.to_bits();
    let exponent = ((bits & EXPONENT_MASK) >> 52) as i32 - 1022 + adjust;
    let mantissa = f64::from_bits((bits & !EXPONENT_MASK) | (1022 << 52));
    (mantissa, exponent)
}

/// The index of the bucket holding `magnitude` (an absolute value above the zero threshold)
/// at `schema`.
pub fn bucket_index(magnitude: f64, schema: i8) -> i32 {
    let (mantissa, exponent) = frexp(magnitude);
    if schema > 0 {
        let per_power = 1i32 << schema;
        let stride = 1usize << (MAX_SCHEMA - schema);
        // The first of this schema's boundaries at or above the mantissa.
        let (mut low, mut high) = (0i32, per_power);
        while low < high {
            let middle = (low + high) / 2;
            if BOUNDARIES[middle as usize * stride] < mantissa {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        low + (exponent - 1) * per_power
    } else {
        // A power of two is the upper bound of its own bucket.
        let index = if mantissa == 0.5 {
            exponent - 1
        } else {
            exponent
        };
        // Rounding up, for negative indexes too (older client_golang divided with truncation,
        // which put small values one bucket too high at negative schemas).
        let shift = -schema;
        (index + (1 << shift) - 1) >> shift
    }
}

/// The bucket that bucket `index` falls into once the schema drops by one: `ceil(index / 2)`.
fn coarser_index(index: i32) -> i32 {
    (index + 1) >> 1
}

/// Native buckets as read at one moment: a family's configuration, the series' current schema,
/// and its populated buckets, each `(index, count)` sorted by index.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NativeSnapshot {
    pub schema: i8,
    pub zero_threshold: f64,
    pub zero_count: u64,
    pub positive: Vec<(i32, u64)>,
    pub negative: Vec<(i32, u64)>,
}

impl NativeSnapshot {
    /// Observations counted in the native buckets, the zero bucket included.
    pub fn count(&self) -> u64 {
        self.positive
            .iter()
            .chain(&self.negative)
            .fold(self.zero_count, |total, (_, count)| {
                total.saturating_add(*count)
            })
    }
}

/// Buckets as the exposition formats (protobuf, remote-write) carry them: runs of consecutive
/// indexes as spans `(offset from the end of the previous span, or the first index; length)`
/// and each bucket's count as a delta from the previous bucket's. Gaps of one or two empty
/// buckets stay inside a span as zero counts, which encodes smaller than a new span (as
/// client_golang does). `spans` and `deltas` are cleared first.
pub fn spans_and_deltas(
    buckets: &[(i32, u64)],
    spans: &mut Vec<(i32, u32)>,
    deltas: &mut Vec<i64>,
) {
    spans.clear();
    deltas.clear();
    let mut previous: i64 = 0;
    let mut next_index: i32 = 0;
    for (n, &(index, count)) in buckets.iter().enumerate() {
        let gap = index - next_index;
        if n == 0 || gap > 2 {
            spans.push((gap, 0));
        } else {
            for _ in 0..gap {
                deltas.push(-previous);
                previous = 0;
            }
        }
        let count = i64::try_from(count).unwrap_or(i64::MAX);
        deltas.push(count - previous);
        previous = count;
        if let Some(span) = spans.last_mut() {
            // The bucket, and the empty ones filled in before it.
            span.1 += 1 + if n > 0 && gap <= 2 { gap as u32 } else { 0 };
        }
        next_index = index + 1;
    }
}

/// One series' native buckets.
#[derive(Debug)]
pub struct NativeHistogram {
    config: NativeConfig,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    schema: i8,
    zero_count: u64,
    positive: Vec<(i32, u64)>,
    negative: Vec<(i32, u64)>,
}

impl NativeHistogram {
    pub fn new(config: NativeConfig) -> NativeHistogram {
        NativeHistogram {
            config,
            state: Mutex::new(State {
                schema: config.schema,
                zero_count: 0,
                positive: Vec::new(),
                negative: Vec::new(),
            }),
        }
    }

    pub fn config(&self) -> &NativeConfig {
        &self.config
    }

    /// Counts `weight` observations of `value`. Non-finite values are not counted (the write
    /// seam refuses them before they get here; client_golang likewise keeps NaN out of its
    /// native buckets).
    pub fn observe(&self, value: f64, weight: u64) {
        if !value.is_finite() {
            return;
        }
        let threshold = self.config.zero_threshold;
        let mut state = self.state.lock();
        let state = &mut *state;
        let buckets = if value > threshold {
            &mut state.positive
        } else if value < -threshold {
            &mut state.negative
        } else {
            state.zero_count = state.zero_count.saturating_add(weight);
            return;
        };
        let index = bucket_index(value.abs(), state.schema);
        match buckets.binary_search_by_key(&index, |(i, _)| *i) {
            Ok(at) => buckets[at].1 = buckets[at].1.saturating_add(weight),
            Err(at) => {
                buckets.insert(at, (index, weight));
                state.fit(self.config.max_buckets);
            }
        }
    }

    /// Copies the current buckets into `out` (its buffers are reused).
    pub fn read(&self, out: &mut NativeSnapshot) {
        let state = self.state.lock();
        out.schema = state.schema;
        out.zero_threshold = self.config.zero_threshold;
        out.zero_count = state.zero_count;
        out.positive.clone_from(&state.positive);
        out.negative.clone_from(&state.negative);
    }
}

impl State {
    /// Widens the buckets (lowers the schema) until at most `max_buckets` are populated, or
    /// the schema is the coarsest.
    fn fit(&mut self, max_buckets: u32) {
        while self.positive.len() + self.negative.len() > max_buckets as usize
            && self.schema > MIN_SCHEMA
        {
            self.schema -= 1;
            merge_pairs(&mut self.positive);
            merge_pairs(&mut self.negative);
        }
    }
}

/// Re-indexes sorted buckets one schema coarser, adding up those that merge (in place).
fn merge_pairs(buckets: &mut Vec<(i32, u64)>) {
    let mut kept = 0;
    for read in 0..buckets.len() {
        let (index, count) = buckets[read];
        let index = coarser_index(index);
        if kept > 0 && buckets[kept - 1].0 == index {
            buckets[kept - 1].1 = buckets[kept - 1].1.saturating_add(count);
        } else {
            buckets[kept] = (index, count);
            kept += 1;
        }
    }
    buckets.truncate(kept);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `histogram` holds after `observations`, as client_golang's tests spell a
    /// `dto.Histogram`'s native part.
    fn native_of(config: NativeConfig, observations: &[f64]) -> NativeSnapshot {
        let histogram = NativeHistogram::new(config);
        for value in observations {
            histogram.observe(*value, 1);
        }
        let mut snapshot = NativeSnapshot::default();
        histogram.read(&mut snapshot);
        snapshot
    }

    fn config(factor: f64) -> NativeConfig {
        // No cap, as client_golang's tests without one.
        NativeConfig::new(factor, u32::MAX).unwrap()
    }

    fn capped(factor: f64, max_buckets: u32) -> NativeConfig {
        NativeConfig::new(factor, max_buckets).unwrap()
    }

    /// `(spans, deltas)` of one side.
    fn encoded(buckets: &[(i32, u64)]) -> (Vec<(i32, u32)>, Vec<i64>) {
        let (mut spans, mut deltas) = (Vec::new(), Vec::new());
        spans_and_deltas(buckets, &mut spans, &mut deltas);
        (spans, deltas)
    }

    #[test]
    fn frexp_splits_like_c_and_go() {
        assert_eq!(frexp(1.0), (0.5, 1));
        assert_eq!(frexp(3.0), (0.75, 2));
        assert_eq!(frexp(0.1), (0.8, -3));
        assert_eq!(frexp(-8.0), (-0.5, 4));
        assert_eq!(frexp(f64::MAX).1, 1024);
        let (mantissa, exponent) = frexp(f64::MIN_POSITIVE / 4.0);
        assert_eq!((mantissa, exponent), (0.5, -1023));
        assert_eq!(frexp(5e-324), (0.5, -1073));
        assert_eq!(frexp(0.0), (0.0, 0));
    }

    #[test]
    fn the_schema_is_the_finest_whose_factor_is_at_most_the_one_asked() {
        // client_golang's pickSchema, and the factors its tests name.
        for (factor, schema) in [
            (1.1, 3),
            (1.2, 2),
            (4.0, -1),
            (17.0, -2),
            (2.0, 0),
            (1.0001, 8),
            (1.5, 1),
            (1e10, -4),
            (65536.0, -4),
            (256.0, -3),
        ] {
            assert_eq!(schema_for_factor(factor), schema, "factor {factor}");
        }
        for schema in MIN_SCHEMA..=MAX_SCHEMA {
            let exact = 2f64.powf(2f64.powi(-i32::from(schema)));
            assert_eq!(schema_for_factor(exact * 1.000_001), schema);
        }
    }

    #[test]
    fn a_factor_of_one_or_less_turns_native_buckets_off() {
        assert_eq!(NativeConfig::new(1.0, 256), None);
        assert_eq!(NativeConfig::new(0.0, 256), None);
        assert_eq!(NativeConfig::new(1.1, 256).unwrap().schema, 3);
    }

    #[test]
    fn boundaries_are_two_to_the_j_over_256_minus_one() {
        for (j, bound) in BOUNDARIES.iter().enumerate() {
            let exact = 2f64.powf(j as f64 / 256.0 - 1.0);
            let ulps = (bound.to_bits() as i64 - exact.to_bits() as i64).abs();
            assert!(ulps <= 4, "boundary {j}: {bound} vs {exact} ({ulps} ulps)");
        }
    }

    #[test]
    fn coarser_schemas_use_client_golangs_own_boundaries() {
        // client_golang's nativeHistogramBounds for schemas 1 to 3, verbatim.
        let known: [(i8, &[f64]); 3] = [
            (1, &[0.5, 0.7071067811865475]),
            (
                2,
                &[
                    0.5,
                    0.5946035575013605,
                    0.7071067811865475,
                    0.8408964152537144,
                ],
            ),
            (
                3,
                &[
                    0.5,
                    0.5452538663326288,
                    0.5946035575013605,
                    0.6484197773255048,
                    0.7071067811865475,
                    0.7711054127039704,
                    0.8408964152537144,
                    0.9170040432046711,
                ],
            ),
        ];
        for (schema, bounds) in known {
            let stride = 1 << (MAX_SCHEMA - schema);
            let ours: Vec<f64> = BOUNDARIES.iter().step_by(stride).copied().collect();
            assert_eq!(ours, bounds, "schema {schema}");
        }
    }

    #[test]
    fn bucket_indexes_follow_client_golangs_known_values() {
        // Schema 3 (factor 1.1): 1 ends bucket 0, 2 ends bucket 8, 3 is in bucket 13.
        assert_eq!(bucket_index(1.0, 3), 0);
        assert_eq!(bucket_index(2.0, 3), 8);
        assert_eq!(bucket_index(3.0, 3), 13);
        // Schema 2 (factor 1.2): 1, 1.2, 1.4, 1.8, 2 → 0, 2, 2, 4, 4.
        let indexes: Vec<i32> = [1.0, 1.1, 1.2, 1.4, 1.8, 2.0, 3.0]
            .iter()
            .map(|v| bucket_index(*v, 2))
            .collect();
        assert_eq!(indexes, [0, 1, 2, 2, 4, 4, 7]);
        // Schema -1 (factor 4): (0.25, 1] is 0, (1, 4] is 1, (4, 16] is 2, (16, 64] is 3.
        let indexes: Vec<i32> = [0.5, 1.0, 1.5, 4.0, 5.0, 16.0, 33.33]
            .iter()
            .map(|v| bucket_index(*v, -1))
            .collect();
        assert_eq!(indexes, [0, 0, 1, 1, 2, 2, 3]);
        // Schema -2 (factor 17): (1/16, 1] is 0, (1, 16] is 1, (16, 256] is 2.
        assert_eq!(bucket_index(0.5, -2), 0);
        assert_eq!(bucket_index(7.0, -2), 1);
        assert_eq!(bucket_index(33.33, -2), 2);
    }

    #[test]
    fn small_values_at_negative_schemas_round_the_index_up() {
        // 2^-5.5 is in (2^-8, 2^-4], bucket -1 at schema -2; truncating division said 0.
        assert_eq!(bucket_index(2f64.powf(-5.5), -2), -1);
        assert_eq!(bucket_index(2f64.powi(-4), -2), -1);
        assert_eq!(bucket_index(2f64.powi(-8), -2), -2);
    }

    #[test]
    fn every_value_is_within_its_buckets_bounds() {
        for schema in MIN_SCHEMA..=MAX_SCHEMA {
            let base = 2f64.powf(2f64.powi(-i32::from(schema)));
            for value in [
                1e-9, 0.003, 0.1, 0.25, 0.7, 1.0, 1.5, 3.0, 1000.0, 123456.789,
            ] {
                let index = bucket_index(value, schema);
                let upper = base.powi(index);
                let lower = base.powi(index - 1);
                let slack = 1e-12 * upper;
                assert!(
                    value > lower - slack && value <= upper + slack,
                    "schema {schema}: {value} in bucket {index} = ({lower}, {upper}]"
                );
            }
        }
    }

    // client_golang's TestNativeHistogram scenarios (values as its `dto.Histogram` strings).

    #[test]
    fn factor_1_1_results_in_schema_3() {
        let native = native_of(config(1.1), &[0.0, 1.0, 2.0, 3.0]);
        assert_eq!(native.schema, 3);
        assert_eq!(native.zero_threshold, DEFAULT_ZERO_THRESHOLD);
        assert_eq!(native.zero_count, 1);
        let (spans, deltas) = encoded(&native.positive);
        assert_eq!(spans, [(0, 1), (7, 1), (4, 1)]);
        assert_eq!(deltas, [1, 0, 0]);
        assert!(native.negative.is_empty());
    }

    #[test]
    fn factor_1_2_results_in_schema_2() {
        let native = native_of(config(1.2), &[0.0, 1.0, 1.2, 1.4, 1.8, 2.0]);
        assert_eq!((native.schema, native.zero_count), (2, 1));
        assert_eq!(
            encoded(&native.positive),
            (vec![(0, 5)], vec![1, -1, 2, -2, 2])
        );
    }

    #[test]
    fn factor_4_results_in_schema_minus_1() {
        let observations = [0.5, 1.0, 1.5, 2.0, 3.0, 3.5, 5.0, 6.0, 7.0, 33.33];
        let native = native_of(config(4.0), &observations);
        assert_eq!((native.schema, native.zero_count), (-1, 0));
        assert_eq!(
            encoded(&native.positive),
            (vec![(0, 4)], vec![2, 2, -1, -2])
        );
    }

    #[test]
    fn factor_17_results_in_schema_minus_2() {
        let observations = [0.5, 1.0, 1.5, 2.0, 3.0, 3.5, 5.0, 6.0, 7.0, 33.33];
        let native = native_of(config(17.0), &observations);
        assert_eq!(native.schema, -2);
        assert_eq!(encoded(&native.positive), (vec![(0, 3)], vec![2, 5, -6]));
    }

    #[test]
    fn negative_observations_fill_negative_buckets() {
        let native = native_of(config(1.2), &[0.0, -1.0, -1.2, -1.4, -1.8, -2.0]);
        assert_eq!(native.zero_count, 1);
        assert!(native.positive.is_empty());
        assert_eq!(
            encoded(&native.negative),
            (vec![(0, 5)], vec![1, -1, 2, -2, 2])
        );
    }

    #[test]
    fn negative_and_positive_observations_fill_both_sides() {
        let observations = [0.0, -1.0, -1.2, -1.4, -1.8, -2.0, 1.0, 1.2, 1.4, 1.8, 2.0];
        let native = native_of(config(1.2), &observations);
        assert_eq!(native.zero_count, 1);
        let expected = (vec![(0, 5)], vec![1, -1, 2, -2, 2]);
        assert_eq!(encoded(&native.negative), expected);
        assert_eq!(encoded(&native.positive), expected);
        assert_eq!(native.count(), 11);
    }

    #[test]
    fn a_wide_zero_bucket_takes_the_small_values_of_both_signs() {
        let observations = [0.0, -1.0, -1.2, -1.4, -1.8, -2.0, 1.0, 1.2, 1.4, 1.8, 2.0];
        let wide = NativeConfig {
            zero_threshold: 1.4,
            ..config(1.2)
        };
        let native = native_of(wide, &observations);
        assert_eq!(native.zero_count, 7);
        assert_eq!(encoded(&native.negative), (vec![(4, 1)], vec![2]));
        assert_eq!(encoded(&native.positive), (vec![(4, 1)], vec![2]));
    }

    #[test]
    fn limited_buckets_but_nothing_triggered() {
        let native = native_of(capped(1.2, 4), &[0.0, 1.0, 1.2, 1.4, 1.8, 2.0]);
        assert_eq!(native.schema, 2);
        assert_eq!(
            encoded(&native.positive),
            (vec![(0, 5)], vec![1, -1, 2, -2, 2])
        );
    }

    #[test]
    fn buckets_limited_by_halving_resolution() {
        let observations = [0.0, 1.0, 1.1, 1.2, 1.4, 1.8, 2.0, 3.0];
        let native = native_of(capped(1.2, 4), &observations);
        assert_eq!((native.schema, native.zero_count), (1, 1));
        assert_eq!(
            encoded(&native.positive),
            (vec![(0, 5)], vec![1, 2, -1, -2, 1])
        );
    }

    #[test]
    fn buckets_limited_by_halving_resolution_negative_observations() {
        let observations = [0.0, -1.0, -1.1, -1.2, -1.4, -1.8, -2.0, -3.0];
        let native = native_of(capped(1.2, 4), &observations);
        assert_eq!(native.schema, 1);
        assert_eq!(
            encoded(&native.negative),
            (vec![(0, 5)], vec![1, 2, -1, -2, 1])
        );
    }

    #[test]
    fn the_cap_counts_both_sides_and_widens_until_it_fits() {
        // Five decades at schema 3 need ~130 buckets; a cap of 8 takes several halvings at once.
        let observations: Vec<f64> = (0..50).map(|i| 10f64.powf(f64::from(i) / 10.0)).collect();
        let native = native_of(capped(1.1, 8), &observations);
        assert!(native.positive.len() <= 8, "{native:?}");
        assert!(native.schema < 0, "{native:?}");
        assert_eq!(native.count(), 50);
        let both: Vec<f64> = observations.iter().flat_map(|v| [*v, -*v]).collect();
        let native = native_of(capped(1.1, 8), &both);
        assert!(native.positive.len() + native.negative.len() <= 8);
        assert_eq!(native.count(), 100);
    }

    #[test]
    fn the_schema_stops_at_minus_4_even_over_the_cap() {
        let observations = [1e-300, 1e-100, 1.0, 1e100, 1e300];
        let native = native_of(capped(1.1, 1), &observations);
        assert_eq!(native.schema, MIN_SCHEMA);
        assert!(native.positive.len() > 1);
        assert_eq!(native.count(), 5);
    }

    #[test]
    fn merging_pairs_matches_recomputing_at_the_coarser_schema() {
        let values: Vec<f64> = (1..400).map(|i| 0.001 * 1.037f64.powi(i)).collect();
        for schema in (MIN_SCHEMA + 1)..=MAX_SCHEMA {
            let mut fine: Vec<(i32, u64)> = Vec::new();
            let mut coarse: Vec<(i32, u64)> = Vec::new();
            for value in &values {
                for (buckets, s) in [(&mut fine, schema), (&mut coarse, schema - 1)] {
                    let index = bucket_index(*value, s);
                    match buckets.binary_search_by_key(&index, |b| b.0) {
                        Ok(at) => buckets[at].1 += 1,
                        Err(at) => buckets.insert(at, (index, 1)),
                    }
                }
            }
            merge_pairs(&mut fine);
            assert_eq!(fine, coarse, "schema {schema} → {}", schema - 1);
        }
    }

    #[test]
    fn weighted_observations_count_their_weight() {
        let histogram = NativeHistogram::new(config(1.1));
        histogram.observe(0.25, 100);
        histogram.observe(0.0, 3);
        histogram.observe(-0.25, 2);
        let mut native = NativeSnapshot::default();
        histogram.read(&mut native);
        assert_eq!(native.zero_count, 3);
        assert_eq!(native.positive, [(bucket_index(0.25, 3), 100)]);
        assert_eq!(native.negative, [(bucket_index(0.25, 3), 2)]);
        assert_eq!(native.count(), 105);
    }

    #[test]
    fn non_finite_observations_stay_out_of_the_buckets() {
        let native = native_of(config(1.1), &[f64::NAN, f64::INFINITY, 1.0]);
        assert_eq!(native.count(), 1);
    }

    #[test]
    fn small_gaps_stay_in_a_span_and_large_ones_start_a_new_one() {
        let buckets = [(-3, 1), (-1, 2), (2, 5), (6, 1)];
        let (spans, deltas) = encoded(&buckets);
        // -3, (gap 1) -1, (gap 2) 2 in one span of 6; gap 3 before 6 starts a new span.
        assert_eq!(spans, [(-3, 6), (3, 1)]);
        assert_eq!(deltas, [1, -1, 2, -2, 0, 5, -4]);
        let mut total = 0i64;
        let mut current = 0i64;
        for delta in &deltas {
            current += delta;
            total += current;
        }
        assert_eq!(total, 9);
        assert_eq!(encoded(&[]), (vec![], vec![]));
    }
}
