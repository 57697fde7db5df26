//! The one-line JSON object writer both reports (`send`, `floor`) are printed with: flat
//! objects of strings, integers and floats (non-finite ones as `null`), plus a raw value for a
//! nested object. `benches/e2e.rs` reads these lines by key, so key names and number spelling
//! are part of the tool's interface.

use std::io::{self, Write};

/// A one-line JSON object writer: enough for flat objects of numbers and strings.
pub(crate) struct Json {
    text: String,
}

impl Json {
    pub(crate) fn object() -> Self {
        Json {
            text: String::from("{"),
        }
    }

    fn key(&mut self, key: &str) -> &mut Self {
        if self.text.len() > 1 {
            self.text.push(',');
        }
        self.string(key);
        self.text.push(':');
        self
    }

    fn string(&mut self, value: &str) {
        self.text.push('"');
        for c in value.chars() {
            match c {
                '"' => self.text.push_str("\\\""),
                '\\' => self.text.push_str("\\\\"),
                c if (c as u32) < 0x20 => self.text.push_str(&format!("\\u{:04x}", c as u32)),
                c => self.text.push(c),
            }
        }
        self.text.push('"');
    }

    pub(crate) fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key).string(value);
        self
    }

    pub(crate) fn u64(&mut self, key: &str, value: u64) -> &mut Self {
        self.key(key).text.push_str(&value.to_string());
        self
    }

    pub(crate) fn f64(&mut self, key: &str, value: f64) -> &mut Self {
        let text = if value.is_finite() {
            format!("{value}")
        } else {
            "null".into()
        };
        self.key(key).text.push_str(&text);
        self
    }

    pub(crate) fn opt_u64(&mut self, key: &str, value: Option<u64>) -> &mut Self {
        match value {
            Some(v) => self.u64(key, v),
            None => self.raw(key, "null"),
        }
    }

    pub(crate) fn opt_f64(&mut self, key: &str, value: Option<f64>) -> &mut Self {
        match value {
            Some(v) => self.f64(key, v),
            None => self.raw(key, "null"),
        }
    }

    pub(crate) fn raw(&mut self, key: &str, json: &str) -> &mut Self {
        self.key(key).text.push_str(json);
        self
    }

    pub(crate) fn finish(&mut self) -> String {
        let mut text = std::mem::take(&mut self.text);
        text.push('}');
        text
    }

    /// Finishes the object and writes it as one line on stdout.
    pub(crate) fn print(&mut self) -> Result<(), String> {
        let mut stdout = io::stdout().lock();
        writeln!(stdout, "{}", self.finish()).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_are_one_line_with_escaped_strings_and_null_for_missing_or_non_finite() {
        let mut inner = Json::object();
        inner.u64("x{a=\"1\"}", 2);
        let mut out = Json::object();
        out.str("s", "a\"b\\c\n")
            .u64("n", 42)
            .f64("f", 0.5)
            .f64("inf", f64::INFINITY)
            .opt_u64("none", None)
            .opt_f64("some", Some(2.0))
            .raw("inner", &inner.finish());
        assert_eq!(
            out.finish(),
            r#"{"s":"a\"b\\c\u000a","n":42,"f":0.5,"inf":null,"none":null,"some":2,"inner":{"x{a=\"1\"}":2}}"#
        );
    }
}
