//! etcdctl's `txn` syntax: compares, a blank line, the success ops, a
//! blank line, the failure ops. A compare is `target("key") op "operand"`
//! (targets value, mod, create, version, lease, with etcdctl's short forms;
//! operators = != < >); an op is a `put`, `get` or `del` line with the
//! command's own arguments.

use kvstore_proto::kv::v1 as pb;

use crate::args::RangeArgs;
use crate::kv::{range_end_for, range_request};

/// A line that does not parse, with its number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// 1-based line number in the input.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for SyntaxError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "txn line {}: {}", self.line, self.reason)
    }
}

/// Splits a line into words: whitespace separates them, `"..."` quotes one
/// (with `\"` and `\\` escapes), `'...'` quotes one literally.
pub fn words(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut characters = line.chars();
    while let Some(character) = characters.next() {
        match character {
            '"' => {
                in_word = true;
                loop {
                    match characters.next() {
                        None => return Err("an unterminated \" quote".into()),
                        Some('"') => break,
                        Some('\\') => match characters.next() {
                            Some('n') => current.push('\n'),
                            Some('t') => current.push('\t'),
                            Some(escaped) => current.push(escaped),
                            None => return Err("a \\ at the end of the line".into()),
                        },
                        Some(other) => current.push(other),
                    }
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match characters.next() {
                        None => return Err("an unterminated ' quote".into()),
                        Some('\'') => break,
                        Some(other) => current.push(other),
                    }
                }
            }
            whitespace if whitespace.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            other => {
                in_word = true;
                current.push(other);
            }
        }
    }
    if in_word {
        words.push(current);
    }
    Ok(words)
}

fn compare(line: &str) -> Result<pb::Compare, String> {
    let open = line
        .find('(')
        .ok_or("a compare is target(\"key\") op \"value\"")?;
    let close = line.rfind(')').ok_or("a compare needs a closing )")?;
    if close < open {
        return Err("a compare is target(\"key\") op \"value\"".into());
    }
    let target_name = line[..open].trim().to_ascii_lowercase();
    let key_words = words(&line[open + 1..close])?;
    let rest = words(&line[close + 1..])?;
    let [key] = key_words.as_slice() else {
        return Err("a compare names one key".into());
    };
    let [operator, operand] = rest.as_slice() else {
        return Err("a compare is target(\"key\") op \"value\"".into());
    };
    let result = match operator.as_str() {
        "=" | "==" => pb::CompareResult::Equal,
        "!=" => pb::CompareResult::NotEqual,
        "<" => pb::CompareResult::Less,
        ">" => pb::CompareResult::Greater,
        other => return Err(format!("unknown operator {other:?} (= != < >)")),
    };
    let number = || {
        operand
            .parse::<i64>()
            .map_err(|_| format!("{operand:?} is not a number"))
    };
    use pb::compare::TargetUnion;
    let (target, union) = match target_name.as_str() {
        "value" | "val" => (
            pb::CompareTarget::Value,
            TargetUnion::Value(operand.as_bytes().to_vec()),
        ),
        "mod" | "m" => (pb::CompareTarget::Mod, TargetUnion::ModRevision(number()?)),
        "create" | "c" => (
            pb::CompareTarget::Create,
            TargetUnion::CreateRevision(number()?),
        ),
        "version" | "ver" => (pb::CompareTarget::Version, TargetUnion::Version(number()?)),
        "lease" => (pb::CompareTarget::Lease, TargetUnion::Lease(number()?)),
        other => {
            return Err(format!(
                "unknown compare target {other:?} (value, mod, create, version, lease)"
            ))
        }
    };
    Ok(pb::Compare {
        result: result as i32,
        target: target as i32,
        key: key.as_bytes().to_vec(),
        target_union: Some(union),
        range_end: Vec::new(),
    })
}

/// A txn op's flags: each name, with its value when it takes one.
type Flags<'a> = Vec<(&'a str, Option<&'a str>)>;

/// Parses the words of a txn op into positional words and flags (`--name`,
/// `--name value` or `--name=value`).
fn flags<'a>(words: &'a [String], valued: &[&str]) -> Result<(Vec<&'a str>, Flags<'a>), String> {
    let mut positional = Vec::new();
    let mut found = Vec::new();
    let mut position = 0;
    while position < words.len() {
        let word = words[position].as_str();
        if let Some(flag) = word.strip_prefix("--") {
            let (name, inline) = match flag.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (flag, None),
            };
            if valued.contains(&name) {
                let value = match inline {
                    Some(value) => value,
                    None => {
                        position += 1;
                        words
                            .get(position)
                            .map(String::as_str)
                            .ok_or_else(|| format!("--{name} needs a value"))?
                    }
                };
                found.push((name, Some(value)));
            } else {
                found.push((name, inline));
            }
        } else {
            positional.push(word);
        }
        position += 1;
    }
    Ok((positional, found))
}

fn op(line: &str) -> Result<pb::RequestOp, String> {
    use pb::request_op::Request;
    let words = words(line)?;
    let Some((command, arguments)) = words.split_first() else {
        return Err("an empty op".into());
    };
    let request = match command.as_str() {
        "put" => {
            let (positional, found) = flags(arguments, &[])?;
            let [key, value] = positional.as_slice() else {
                return Err("put KEY VALUE [--prev-kv]".into());
            };
            let mut request = pb::PutRequest {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
                ..pb::PutRequest::default()
            };
            for (name, _) in found {
                match name {
                    "prev-kv" => request.prev_kv = true,
                    other => return Err(format!("put takes no --{other}")),
                }
            }
            Request::RequestPut(request)
        }
        "get" => {
            let (positional, found) = flags(arguments, &["limit", "rev"])?;
            let (key, range_end) = match positional.as_slice() {
                [key] => (*key, None),
                [key, end] => (*key, Some(end.as_bytes().to_vec())),
                _ => return Err("get KEY [RANGE_END] [options]".into()),
            };
            let mut range = RangeArgs::default();
            for (name, value) in found {
                let number = || {
                    value
                        .unwrap_or_default()
                        .parse::<i64>()
                        .map_err(|_| format!("--{name} needs a number"))
                };
                match name {
                    "prefix" => range.prefix = true,
                    "from-key" => range.from_key = true,
                    "keys-only" => range.keys_only = true,
                    "count-only" => range.count_only = true,
                    "limit" => range.limit = Some(number()?),
                    "rev" => range.rev = Some(number()?),
                    other => return Err(format!("get takes no --{other} in a txn")),
                }
            }
            let key = key.as_bytes().to_vec();
            let end = range_end_for(&key, range_end, range.prefix, range.from_key);
            Request::RequestRange(range_request(
                key,
                end,
                &range,
                pb::Consistency::Unspecified,
            ))
        }
        "del" | "delete" => {
            let (positional, found) = flags(arguments, &[])?;
            let (key, range_end) = match positional.as_slice() {
                [key] => (*key, None),
                [key, end] => (*key, Some(end.as_bytes().to_vec())),
                _ => return Err("del KEY [RANGE_END] [--prefix] [--from-key] [--prev-kv]".into()),
            };
            let (mut prefix, mut from_key, mut prev_kv) = (false, false, false);
            for (name, _) in found {
                match name {
                    "prefix" => prefix = true,
                    "from-key" => from_key = true,
                    "prev-kv" => prev_kv = true,
                    other => return Err(format!("del takes no --{other}")),
                }
            }
            let key = key.as_bytes().to_vec();
            let range_end = range_end_for(&key, range_end, prefix, from_key);
            Request::RequestDeleteRange(pb::DeleteRangeRequest {
                key,
                range_end,
                prev_kv,
            })
        }
        other => return Err(format!("unknown op {other:?} (put, get, del)")),
    };
    Ok(pb::RequestOp {
        request: Some(request),
    })
}

/// Parses a whole txn.
pub fn parse(input: &str) -> Result<pb::TxnRequest, SyntaxError> {
    let mut request = pb::TxnRequest::default();
    let mut part = 0;
    for (number, line) in input.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            // A blank line ends a part (etcdctl): two in a row leave the
            // success ops empty.
            part += 1;
            continue;
        }
        let error = |reason: String| SyntaxError {
            line: number + 1,
            reason,
        };
        match part {
            0 => request.compare.push(compare(line).map_err(error)?),
            1 => request.success.push(op(line).map_err(error)?),
            2 => request.failure.push(op(line).map_err(error)?),
            _ => return Err(error("text after the failure ops".into())),
        }
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_honour_quotes_and_escapes() {
        assert_eq!(
            words(r#"put "a b" 'c\d' e"#).unwrap(),
            ["put", "a b", r"c\d", "e"]
        );
        assert_eq!(words(r#""say \"hi\"""#).unwrap(), [r#"say "hi""#]);
        assert_eq!(words(r#""""#).unwrap(), [""]);
        assert!(words(r#""open"#).is_err());
    }

    #[test]
    fn a_cas_parses_like_etcdctl() {
        let input = "mod(\"counter\") = \"7\"\nvalue(\"owner\") != \"me\"\n\nput counter 8 --prev-kv\nget counter --keys-only\n\ndel a z\nget p --prefix --limit=2\n";
        let request = parse(input).unwrap();
        assert_eq!(request.compare.len(), 2);
        assert_eq!(request.compare[0].target, pb::CompareTarget::Mod as i32);
        assert_eq!(
            request.compare[0].target_union,
            Some(pb::compare::TargetUnion::ModRevision(7))
        );
        assert_eq!(
            request.compare[1].result,
            pb::CompareResult::NotEqual as i32
        );
        assert_eq!(request.success.len(), 2);
        match &request.success[0].request {
            Some(pb::request_op::Request::RequestPut(put)) => {
                assert_eq!(
                    (put.key.as_slice(), put.value.as_slice(), put.prev_kv),
                    (&b"counter"[..], &b"8"[..], true)
                )
            }
            other => panic!("{other:?}"),
        }
        match &request.failure[1].request {
            Some(pb::request_op::Request::RequestRange(range)) => {
                assert_eq!((range.range_end.as_slice(), range.limit), (&b"q"[..], 2))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn mistakes_name_their_line() {
        let error = parse("mod(\"k\") ~ \"1\"\n").unwrap_err();
        assert_eq!(error.line, 1);
        let error = parse("\n\nfrob x\n").unwrap_err();
        assert_eq!(error.line, 3);
        assert!(error.reason.contains("unknown op"));
        assert!(parse("create(\"k\") = \"x\"\n").is_err(), "not a number");
        assert!(
            parse("\n\n\n\n").unwrap().compare.is_empty(),
            "blank lines alone"
        );
        let no_success = parse("create(\"k\") = \"0\"\n\n\nget k\n").unwrap();
        assert_eq!((no_success.success.len(), no_success.failure.len()), (0, 1));
    }
}
