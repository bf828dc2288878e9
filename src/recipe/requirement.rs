//! The pip requirement grammar a `pip` layer accepts.

/// A PEP 508 requirement without markers, URLs or options:
/// `name`, `name[extra,...]`, each optionally with version clauses.
pub fn valid_requirement(r: &str) -> bool {
    let name_len = r
        .bytes()
        .take_while(|b| b.is_ascii_alphanumeric() || b"._-".contains(b))
        .count();
    if name_len == 0 || !r.as_bytes()[0].is_ascii_alphanumeric() {
        return false;
    }
    let mut rest = &r[name_len..];
    if let Some(after) = rest.strip_prefix('[') {
        let Some(end) = after.find(']') else {
            return false;
        };
        let extras = &after[..end];
        if extras.is_empty()
            || !extras
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-,".contains(&b))
        {
            return false;
        }
        rest = &after[end + 1..];
    }
    if rest.is_empty() {
        return true;
    }
    rest.split(',').all(|clause| {
        let op = ["===", "==", ">=", "<=", "~=", "!=", "<", ">"]
            .iter()
            .find(|op| clause.starts_with(**op));
        match op {
            Some(op) => {
                let v = &clause[op.len()..];
                !v.is_empty()
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".*+!_-".contains(&b))
            }
            None => false,
        }
    })
}
