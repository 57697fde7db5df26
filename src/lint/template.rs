//! A mapping `name` template split into literal text and `$` references, the way
//! `rules::template` reads it, so that the checks can see the literal text.

/// Pieces of a mapping `name` template.
#[derive(Debug, PartialEq)]
pub(super) enum Piece<'t> {
    /// Literal text, unescaped (`$$` is `$`).
    Text(String),
    /// A `$` reference as written (`$1`, `${name}`).
    Reference(&'t str),
}

pub(super) fn has_reference(pieces: &[Piece<'_>]) -> bool {
    pieces.iter().any(|p| matches!(p, Piece::Reference(_)))
}

/// Splits a template the way `rules::template` reads it (`$$`, `${ref}`, `$ref`).
pub(super) fn pieces(template: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut text = String::new();
    let bytes = template.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' {
            let next = template[i..].find('$').map_or(template.len(), |n| i + n);
            text.push_str(&template[i..next]);
            i = next;
            continue;
        }
        if bytes.get(i + 1) == Some(&b'$') {
            text.push('$');
            i += 2;
            continue;
        }
        if !text.is_empty() {
            out.push(Piece::Text(std::mem::take(&mut text)));
        }
        let start = i;
        i += 1;
        if bytes.get(i) == Some(&b'{') {
            i = template[i..]
                .find('}')
                .map_or(template.len(), |n| i + n + 1);
        } else {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
        }
        out.push(Piece::Reference(&template[start..i]));
    }
    if !text.is_empty() {
        out.push(Piece::Text(text));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_split_into_text_and_references() {
        assert_eq!(
            pieces("a$$b${1}_c$name_x"),
            [
                Piece::Text("a$b".into()),
                Piece::Reference("${1}"),
                Piece::Text("_c".into()),
                Piece::Reference("$name_x"),
            ]
        );
        assert_eq!(pieces("$$"), [Piece::Text("$".into())]);
    }
}
