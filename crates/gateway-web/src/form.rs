//! `application/x-www-form-urlencoded` bodies, as browsers post forms.

/// The fields of a form body, in order; `+` is a space and `%XX` a byte. A field that is not
/// valid UTF-8 after decoding is dropped.
pub fn parse(body: &[u8]) -> Vec<(String, String)> {
    body.split(|b| *b == b'&')
        .filter(|pair| !pair.is_empty())
        .filter_map(|pair| {
            let mut parts = pair.splitn(2, |b| *b == b'=');
            let name = decode(parts.next().unwrap_or_default())?;
            let value = decode(parts.next().unwrap_or_default())?;
            Some((name, value))
        })
        .collect()
}

/// The first value of `name`.
pub fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

/// Every value of `name` (checkboxes).
pub fn all<'a>(fields: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    fields.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect()
}

/// `text` form-encoded for a query string (letters, digits and `-_.~` as they are).
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => {
                use std::fmt::Write as _;
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// One form-encoded component: `+` is a space, `%XX` a byte; `None` when it is not UTF-8
/// afterwards or a `%` is not followed by two hex digits.
pub fn decode(bytes: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_decode_as_browsers_encode_them() {
        let f = parse(b"email=a%40b.example&name=My+key&scopes=models&scopes=embeddings&bad=%ZZ");
        assert_eq!(field(&f, "email"), Some("a@b.example"));
        assert_eq!(field(&f, "name"), Some("My key"));
        assert_eq!(all(&f, "scopes"), ["models", "embeddings"]);
        assert_eq!(field(&f, "bad"), None, "an undecodable field is dropped");
        assert!(parse(b"").is_empty());
        let odd = "gpt-4 turbo/<&>=ü";
        assert_eq!(decode(encode(odd).as_bytes()).as_deref(), Some(odd));
    }
}
