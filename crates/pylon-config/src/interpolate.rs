//! `${VAR}` and `${VAR:-default}` expansion, line-preserving so diagnostics keep their line;
//! `${file:/path}` is a file's contents without its trailing newline (secrets mounted as files,
//! as Docker and Kubernetes do).
//!
//! `$${` writes a literal `${`. References inside comments are left alone, so a commented-out
//! line never fails on a variable nobody set.

/// Expands references; on failure returns every unresolved reference with its byte offset.
pub(crate) fn expand(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, Vec<(usize, String)>> {
    let mut out = String::with_capacity(text.len());
    let mut errors = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let code_end = comment_start(line).unwrap_or(line.len());
        let (code, comment) = line.split_at(code_end);
        expand_line(code, offset, env, &mut out, &mut errors);
        out.push_str(comment);
        offset += line.len();
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn expand_line(
    code: &str,
    base: usize,
    env: &dyn Fn(&str) -> Option<String>,
    out: &mut String,
    errors: &mut Vec<(usize, String)>,
) {
    let mut rest = code;
    let mut pos = base;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        if let Some(tail) = after.strip_prefix("$${") {
            out.push_str("${");
            rest = tail;
            pos += i + 3;
            continue;
        }
        if !after.starts_with("${") {
            out.push('$');
            rest = &after[1..];
            pos += i + 1;
            continue;
        }
        let Some(close) = after.find('}') else {
            errors.push((pos + i, "`${` has no closing `}`".to_owned()));
            out.push_str(after);
            return;
        };
        let inner = &after[2..close];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        let file = name.strip_prefix("file:").filter(|p| p.starts_with('/'));
        let valid = file.is_some()
            || !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.starts_with(|c: char| c.is_ascii_digit());
        if !valid {
            errors.push((
                pos + i,
                format!("`${{{inner}}}` is not a valid variable reference"),
            ));
        } else {
            match env(name).or_else(|| default.map(str::to_owned)) {
                // The value lands inside a TOML string, so quotes and backslashes are escaped.
                Some(v) => out.push_str(&v.replace('\\', "\\\\").replace('"', "\\\"")),
                None => errors.push((
                    pos + i,
                    match file {
                        Some(path) => format!("cannot read the secret file `{path}`"),
                        None => format!(
                            "environment variable `{name}` is not set (set it, or write `${{{name}:-default}}`)"
                        ),
                    },
                )),
            }
        }
        rest = &after[close + 1..];
        pos += i + close + 1;
    }
    out.push_str(rest);
}

/// Byte index of a `#` that starts a comment (not one inside a string).
fn comment_start(line: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match quote {
            Some('"') if escaped => escaped = false,
            Some('"') if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' => return Some(i),
            None => {}
        }
    }
    None
}
