//! The grouping key of a push, read from its URL path as Pushgateway reads it:
//! `/metrics/job/<job>{/<label>/<value>}`, where a name ending `@base64` says its value is
//! base64 in the URL-safe alphabet, padded or not (`prometheus_client` encodes a value holding
//! `/` or a space that way, and an empty value as `=`). Segments are percent-decoded first; a
//! `+` stays a `+`, as in Pushgateway (older `prometheus_client`s sent a space as `+`).
//!
//! The key's labels become labels of every series the push holds (`job` included); the group
//! is the unit a push replaces and a delete removes.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::record::TENANT_LABEL;

/// The suffix of a label name whose value is base64.
pub const BASE64_SUFFIX: &str = "@base64";

/// Labels a grouping key may not set: tallyd's own (`tenant`, set from the caller) and the
/// two that carry a histogram's and a summary's structure.
const RESERVED: &[&str] = &[TENANT_LABEL, "le", "quantile"];

/// The grouping key in `path` (the whole request path, `/metrics/job/...`): its labels sorted
/// by name, `job` first among them by rule of the path, or why it is not one.
pub fn grouping_key(path: &str) -> Result<Vec<(String, String)>, String> {
    let rest = path
        .strip_prefix("/metrics/")
        .ok_or_else(|| format!("{path:?} is not a push path (/metrics/job/<job>/...)"))?;
    let mut segments: Vec<&str> = rest.split('/').collect();
    // One trailing slash is allowed, as Pushgateway's route allows it.
    if !segments.len().is_multiple_of(2) && segments.last() == Some(&"") {
        segments.pop();
    }
    if !segments.len().is_multiple_of(2) {
        return Err(format!(
            "an odd number of path segments after /metrics/ in {path:?}: a label value \
             holding / must be base64 (<name>@base64/<value>)"
        ));
    }
    let mut labels: Vec<(String, String)> = Vec::with_capacity(segments.len() / 2);
    for (i, pair) in segments.chunks(2).enumerate() {
        let raw_name = decode_percent(pair[0])?;
        let (name, base64) = match raw_name.strip_suffix(BASE64_SUFFIX) {
            Some(name) => (name, true),
            None => (raw_name.as_str(), false),
        };
        if i == 0 && name != "job" {
            return Err(format!("a push path starts /metrics/job/, not {path:?}"));
        }
        if !super::model::is_label_name(name) || name.starts_with("__") {
            return Err(format!(
                "{name:?} is not a label name a grouping key may use"
            ));
        }
        if RESERVED.contains(&name) {
            return Err(format!(
                "the grouping key may not set {name:?}{}",
                if name == TENANT_LABEL {
                    ": tallyd sets it from the token (or X-Tenant-ID)"
                } else {
                    ""
                }
            ));
        }
        if labels.iter().any(|(n, _)| n == name) {
            return Err(format!("label {name:?} appears twice in the grouping key"));
        }
        let value = decode_percent(pair[1])?;
        let value = if base64 {
            decode_base64(&value)
                .map_err(|reason| format!("the value of {name}@base64, {value:?}: {reason}"))?
        } else {
            value
        };
        if name == "job" && value.is_empty() {
            return Err("the job name is required (empty here)".into());
        }
        labels.push((name.to_owned(), value));
    }
    labels.sort();
    Ok(labels)
}

/// `%XX` escapes decoded; the result must be UTF-8.
fn decode_percent(segment: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map(|text| text.into_owned())
        .map_err(|_| format!("path segment {segment:?} is not UTF-8 once percent-decoded"))
}

/// URL-safe base64, padding optional (trailing `=` are ignored, as Pushgateway ignores them);
/// the bytes must be UTF-8.
fn decode_base64(value: &str) -> Result<String, String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(value.trim_end_matches('='))
        .map_err(|e| format!("not URL-safe base64 ({e})"))?;
    String::from_utf8(bytes).map_err(|_| "not UTF-8 once decoded".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::pairs;

    fn key(path: &str) -> Vec<(String, String)> {
        grouping_key(path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    // Pushgateway's `TestSplitLabels` scenarios, after its job segment.
    #[test]
    fn pushgateway_split_labels_scenarios() {
        let ok = [
            (
                "/label_name1/label_value1/label_name2/label_value2",
                [
                    ("label_name1", "label_value1"),
                    ("label_name2", "label_value2"),
                ],
            ),
            (
                "/label_name1@base64/bGFiZWwvdmFsdWUx/label_name2/label_value2",
                [
                    ("label_name1", "label/value1"),
                    ("label_name2", "label_value2"),
                ],
            ),
            (
                "/label_name1/label_value1/label_name2@base64/bGFiZWwvdmFsdWUy",
                [
                    ("label_name1", "label_value1"),
                    ("label_name2", "label/value2"),
                ],
            ),
            (
                "/label_name1/label_value1/label_name2@base64/bGFiZWwvdmFsdWUy==",
                [
                    ("label_name1", "label_value1"),
                    ("label_name2", "label/value2"),
                ],
            ),
        ];
        for (labels, expected) in ok {
            let mut expected = pairs(&expected);
            expected.push(("job".into(), "j".into()));
            expected.sort();
            assert_eq!(
                key(&format!("/metrics/job/j{labels}")),
                expected,
                "{labels}"
            );
        }
        for bad in [
            "/label_name1/label_value1/a=b/label_value2",
            "/label_name1/label_value1/__label_name2/label_value2",
            "/label_name1/label_value1/label_name2/label/value2",
            "/label_name1@base64/foo.bar/label_name2/label_value2",
        ] {
            assert!(
                grouping_key(&format!("/metrics/job/j{bad}")).is_err(),
                "{bad}"
            );
        }
    }

    // Pushgateway's `TestPush`/`TestDelete`: a base64 job and instance.
    #[test]
    fn a_base64_job_and_label_are_decoded() {
        assert_eq!(
            key("/metrics/job@base64/dGVzdC9qb2I=/instance@base64/dGVzdGluc3RhbmNl"),
            pairs(&[("instance", "testinstance"), ("job", "test/job")])
        );
    }

    #[test]
    fn what_prometheus_client_sends_is_read_back() {
        // `_escape_grouping_key`: "" → `@base64/=`, a value with / → urlsafe base64 (padded),
        // anything else → quote_plus, whose `+` for a space Pushgateway keeps as a `+`.
        assert_eq!(
            key("/metrics/job/batch/empty@base64/=/path@base64/YS9iL2M=/q/x%3Dy%26z%2Bw/s/a+b"),
            pairs(&[
                ("empty", ""),
                ("job", "batch"),
                ("path", "a/b/c"),
                ("q", "x=y&z+w"),
                ("s", "a+b"),
            ])
        );
        // urlsafe_b64encode uses - and _ where standard base64 has + and /.
        assert_eq!(key("/metrics/job/j/v@base64/w6kvw7w_")[1].1, "é/ü?");
        assert_eq!(key("/metrics/job/j/v@base64/fn5-")[1].1, "~~~");
    }

    #[test]
    fn a_trailing_slash_is_allowed_and_labels_are_sorted() {
        assert_eq!(
            key("/metrics/job/j/z/1/a/2/"),
            pairs(&[("a", "2"), ("job", "j"), ("z", "1")])
        );
    }

    #[test]
    fn bad_keys_are_refused_with_the_reason() {
        for (path, words) in [
            ("/metrics/job/", "job name is required"),
            ("/metrics/job@base64/=", "job name is required"),
            ("/metrics/job/j/instance", "odd number"),
            ("/metrics/job/j/tenant/t", "tallyd sets it"),
            ("/metrics/job/j/le/1", "may not set"),
            ("/metrics/job/j/quantile/1", "may not set"),
            ("/metrics/job/j/a/1/a/2", "twice"),
            ("/metrics/job/j/job/k", "twice"),
            ("/metrics/job/j/a@base64/!!", "base64"),
            ("/metrics/job/j/a@base64/_w", "UTF-8"),
            ("/metrics/job/j/a/%ff", "UTF-8"),
            ("/metrics/other/j", "starts /metrics/job/"),
            ("/metrics/job/j/1a/x", "label name"),
        ] {
            let error = grouping_key(path).unwrap_err();
            assert!(error.contains(words), "{path}: {error}");
        }
    }
}
