//! Form-encoded bodies (`application/x-www-form-urlencoded`), read as a flat
//! JSON object so that the route's JSON pointers apply to them too.

use serde_json::Value;

use super::ExtractError;
use crate::routes::percent_decode;

/// Parses a form body into a flat object of strings. A repeated field or a
/// `qs`-style bracketed key is refused: the upstream may read it otherwise.
pub fn parse(body: &[u8]) -> Result<Value, ExtractError> {
    let mut map = serde_json::Map::new();
    for pair in body.split(|&b| b == b'&').filter(|p| !p.is_empty()) {
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        let dec = |s: &[u8]| -> Result<String, ExtractError> {
            let plus: Vec<u8> = s
                .iter()
                .map(|&b| if b == b'+' { b' ' } else { b })
                .collect();
            let text = std::str::from_utf8(&plus)
                .map_err(|_| ExtractError::Malformed("form body is not UTF-8".into()))?;
            let bytes = percent_decode(text).map_err(|e| ExtractError::Malformed(e.into()))?;
            String::from_utf8(bytes)
                .map_err(|_| ExtractError::Malformed("form value is not UTF-8".into()))
        };
        let key = dec(k)?;
        // `qs`-style parsers (Express's default) nest `a[b]=` into objects;
        // read flat, such a key hides the field poolgate reads: refused.
        if key.contains(['[', ']']) {
            return Err(ExtractError::Malformed(format!(
                "form field {key:?}: bracket syntax is not accepted on guarded routes"
            )));
        }
        // A repeated field is ambiguous: which one will the upstream read?
        if map.insert(key.clone(), Value::String(dec(v)?)).is_some() {
            return Err(ExtractError::Malformed(format!(
                "field {key:?} appears twice"
            )));
        }
    }
    Ok(Value::Object(map))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn form_bodies() {
        let v = parse(b"account=A%40x.com&password=p+w").unwrap();
        assert_eq!(v["account"], "A@x.com");
        assert_eq!(v["password"], "p w");
        assert!(parse(b"a=1&a=2").is_err());
        assert!(parse(b"passwordPayload[account]=victim").is_err());
        assert!(parse(b"passwordPayload%5Baccount%5D=victim").is_err());
        assert!(parse(b"a=%zz").is_err());
    }
}
