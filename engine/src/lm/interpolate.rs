//! The subset of OmegaConf interpolation that the reference's `config.yaml` files use.
//!
//! Upstream configs compute values in place, e.g. the prompt conditioner's length is
//! `${eval:${prompt_len}*${audio_tokenizer_frame_rate}+2}` and the structure tags come from
//! `${load_yaml:conf/vocab.yaml}`. This module resolves, over a JSON tree:
//! - `${a.b.c}`: the value at that key path of the same config;
//! - `${eval:EXPR}`: integer/float arithmetic (`+ - * / // % **`, parentheses, unary minus);
//! - `${load_yaml:PATH}`: a YAML file looked up in the given search folders.
//!
//! As in OmegaConf, a string that is exactly one interpolation takes the resolved value's type;
//! interpolations embedded in longer text are formatted into the string.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

/// Files that `${load_yaml:...}` may name but that live in the reference's source tree rather
/// than in a model folder; used when no search folder holds them.
fn builtin_file(rel: &str) -> Option<String> {
    match rel {
        // `conf/vocab.yaml` of the reference: the lyric structure tags, in id order.
        "conf/vocab.yaml" => Some(
            crate::lyrics::SECTION_TAGS
                .iter()
                .map(|t| format!("- '{t}'\n"))
                .collect(),
        ),
        _ => None,
    }
}

/// Nesting limit for key references that point at other interpolations.
const MAX_DEPTH: usize = 32;

/// Resolves every interpolation in `tree`. `search` lists the folders `load_yaml` looks in.
pub fn resolve(tree: &Value, search: &[PathBuf]) -> Result<Value> {
    let ctx = Ctx { root: tree, search };
    ctx.walk(tree, 0)
}

/// Reads a YAML file into a JSON tree and resolves its interpolations, looking up
/// `load_yaml` files next to it and in `search`.
pub fn load_yaml_file(path: &Path, search: &[PathBuf]) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let yaml: serde_yaml::Value =
        serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let tree = serde_json::to_value(yaml)
        .with_context(|| format!("{}: not a plain config tree", path.display()))?;
    let mut dirs: Vec<PathBuf> = path.parent().map(Path::to_path_buf).into_iter().collect();
    dirs.extend(search.iter().cloned());
    resolve(&tree, &dirs).with_context(|| format!("resolving {}", path.display()))
}

struct Ctx<'a> {
    root: &'a Value,
    search: &'a [PathBuf],
}

impl Ctx<'_> {
    fn walk(&self, v: &Value, depth: usize) -> Result<Value> {
        if depth > MAX_DEPTH {
            bail!("interpolations nest deeper than {MAX_DEPTH} levels (a reference cycle?)");
        }
        Ok(match v {
            Value::String(s) if s.contains("${") => self.string(s, depth)?,
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|i| self.walk(i, depth))
                    .collect::<Result<_>>()?,
            ),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| {
                        Ok((
                            k.clone(),
                            self.walk(v, depth).with_context(|| format!("key {k}"))?,
                        ))
                    })
                    .collect::<Result<_>>()?,
            ),
            other => other.clone(),
        })
    }

    /// Resolves a string holding interpolations.
    fn string(&self, s: &str, depth: usize) -> Result<Value> {
        let mut pieces = Vec::new();
        let mut rest = s;
        while let Some(start) = rest.find("${") {
            let len = matching_brace(&rest[start..])
                .ok_or_else(|| anyhow!("unclosed interpolation in {s:?}"))?;
            pieces.push(Piece::Text(&rest[..start]));
            pieces.push(Piece::Interp(&rest[start + 2..start + len - 1]));
            rest = &rest[start + len..];
        }
        pieces.push(Piece::Text(rest));
        pieces.retain(|p| !matches!(p, Piece::Text("")));
        if let [Piece::Interp(body)] = pieces.as_slice() {
            return self.interpolation(body, depth);
        }
        let mut out = String::new();
        for piece in pieces {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Interp(body) => match self.interpolation(body, depth)? {
                    Value::String(v) => out.push_str(&v),
                    v => out.push_str(&v.to_string()),
                },
            }
        }
        Ok(Value::String(out))
    }

    /// Resolves the body of one `${...}`.
    fn interpolation(&self, body: &str, depth: usize) -> Result<Value> {
        let body = match self.string(body, depth + 1)? {
            Value::String(b) => b,
            v => v.to_string(),
        };
        if let Some((name, arg)) = resolver_call(&body) {
            return match name {
                "eval" => eval(arg).with_context(|| format!("${{eval:{arg}}}")),
                "load_yaml" => self.load_yaml(arg),
                other => bail!("unsupported resolver `{other}` in ${{{body}}}"),
            };
        }
        let mut node = self.root;
        for key in body.trim().split('.') {
            node = node
                .get(key)
                .ok_or_else(|| anyhow!("${{{body}}} refers to a missing key"))?;
        }
        self.walk(node, depth + 1)
    }

    fn load_yaml(&self, rel: &str) -> Result<Value> {
        let rel = rel.trim();
        let text = match self
            .search
            .iter()
            .map(|d| d.join(rel))
            .find(|p| p.is_file())
        {
            Some(path) => std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?,
            None => {
                builtin_file(rel).ok_or_else(|| anyhow!("${{load_yaml:{rel}}}: file not found"))?
            }
        };
        let yaml: serde_yaml::Value =
            serde_yaml::from_str(&text).with_context(|| format!("parsing {rel}"))?;
        Ok(serde_json::to_value(yaml)?)
    }
}

enum Piece<'a> {
    Text(&'a str),
    Interp(&'a str),
}

/// Length of the `${...}` at the start of `s`, braces balanced.
fn matching_brace(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// `name:args` when `body` calls a resolver (an identifier followed by a colon).
fn resolver_call(body: &str) -> Option<(&str, &str)> {
    let (name, arg) = body.split_once(':')?;
    let ident = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    ident.then_some((name, arg))
}

/// A number of an arithmetic expression: Python semantics, ints stay ints except under `/`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    fn f(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }
}

/// Evaluates `+ - * / // % **` arithmetic with parentheses, as Python would.
fn eval(expr: &str) -> Result<Value> {
    let mut p = Parser {
        s: expr.as_bytes(),
        pos: 0,
    };
    let n = p.sum()?;
    p.skip_ws();
    if p.pos != p.s.len() {
        bail!("unexpected text at offset {} of {expr:?}", p.pos);
    }
    Ok(match n {
        Num::Int(i) => Value::from(i),
        Num::Float(f) => Value::from(f),
    })
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn skip_ws(&mut self) {
        while self
            .s
            .get(self.pos)
            .is_some_and(|c| c.is_ascii_whitespace())
        {
            self.pos += 1;
        }
    }

    fn eat(&mut self, tok: &str) -> bool {
        self.skip_ws();
        if self.s[self.pos..].starts_with(tok.as_bytes()) {
            self.pos += tok.len();
            true
        } else {
            false
        }
    }

    fn sum(&mut self) -> Result<Num> {
        let mut acc = self.product()?;
        loop {
            if self.eat("+") {
                acc = arith(acc, self.product()?, |a, b| a.checked_add(b), |a, b| a + b)?;
            } else if self.eat("-") {
                acc = arith(acc, self.product()?, |a, b| a.checked_sub(b), |a, b| a - b)?;
            } else {
                return Ok(acc);
            }
        }
    }

    fn product(&mut self) -> Result<Num> {
        let mut acc = self.unary()?;
        loop {
            if self.eat("//") {
                let b = self.unary()?;
                acc = match (acc, b) {
                    (_, Num::Int(0)) => bail!("division by zero"),
                    (Num::Int(a), Num::Int(b)) => Num::Int(a.div_euclid(b)),
                    (a, b) => Num::Float((a.f() / b.f()).floor()),
                };
            } else if self.eat("*") {
                acc = arith(acc, self.unary()?, |a, b| a.checked_mul(b), |a, b| a * b)?;
            } else if self.eat("/") {
                let b = self.unary()?;
                if b.f() == 0.0 {
                    bail!("division by zero");
                }
                acc = Num::Float(acc.f() / b.f());
            } else if self.eat("%") {
                let b = self.unary()?;
                acc = match (acc, b) {
                    (_, Num::Int(0)) => bail!("modulo by zero"),
                    (Num::Int(a), Num::Int(b)) => Num::Int(a.rem_euclid(b)),
                    (a, b) => Num::Float(a.f() - b.f() * (a.f() / b.f()).floor()),
                };
            } else {
                return Ok(acc);
            }
        }
    }

    fn unary(&mut self) -> Result<Num> {
        if self.eat("-") {
            return Ok(match self.unary()? {
                Num::Int(i) => Num::Int(-i),
                Num::Float(f) => Num::Float(-f),
            });
        }
        if self.eat("+") {
            return self.unary();
        }
        let base = self.atom()?;
        if self.eat("**") {
            let exp = self.unary()?;
            return Ok(match (base, exp) {
                (Num::Int(b), Num::Int(e)) if e >= 0 => Num::Int(
                    b.checked_pow(u32::try_from(e)?)
                        .ok_or_else(|| anyhow!("overflow"))?,
                ),
                (b, e) => Num::Float(b.f().powf(e.f())),
            });
        }
        Ok(base)
    }

    fn atom(&mut self) -> Result<Num> {
        if self.eat("(") {
            let n = self.sum()?;
            if !self.eat(")") {
                bail!("missing `)`");
            }
            return Ok(n);
        }
        self.skip_ws();
        let start = self.pos;
        while self
            .s
            .get(self.pos)
            .is_some_and(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'_'))
        {
            self.pos += 1;
        }
        let text = std::str::from_utf8(&self.s[start..self.pos])?.replace('_', "");
        if text.is_empty() {
            bail!("expected a number at offset {start}");
        }
        if let Ok(i) = text.parse::<i64>() {
            return Ok(Num::Int(i));
        }
        Ok(Num::Float(
            text.parse::<f64>()
                .with_context(|| format!("bad number {text:?}"))?,
        ))
    }
}

fn arith(
    a: Num,
    b: Num,
    int: impl Fn(i64, i64) -> Option<i64>,
    float: impl Fn(f64, f64) -> f64,
) -> Result<Num> {
    Ok(match (a, b) {
        (Num::Int(a), Num::Int(b)) => Num::Int(int(a, b).ok_or_else(|| anyhow!("overflow"))?),
        (a, b) => Num::Float(float(a.f(), b.f())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn evaluates_python_arithmetic() {
        assert_eq!(eval("10*25+2").unwrap(), json!(252));
        assert_eq!(eval("(1 + 2) * -3").unwrap(), json!(-9));
        assert_eq!(eval("7 // 2 + 7 % 4").unwrap(), json!(6));
        assert_eq!(eval("3 / 2").unwrap(), json!(1.5));
        assert_eq!(eval("2 ** 3 ** 2").unwrap(), json!(512));
        assert_eq!(eval("270 * 25.0").unwrap(), json!(6750.0));
        assert!(eval("1 / 0").is_err());
        assert!(eval("2 +").is_err());
    }

    #[test]
    fn resolves_references_resolvers_and_embedded_text() {
        let tree = json!({
            "prompt_len": 10,
            "rate": "${audio.fr}",
            "audio": {"fr": 25},
            "max_len": "${eval:${prompt_len}*${rate}+2}",
            "name": "len=${max_len}",
            "tags": "${load_yaml:conf/vocab.yaml}",
        });
        let out = resolve(&tree, &[]).unwrap();
        assert_eq!(out["max_len"], json!(252));
        assert_eq!(out["rate"], json!(25));
        assert_eq!(out["name"], json!("len=252"));
        assert_eq!(out["tags"][0], json!("[verse]"));
        assert_eq!(out["tags"].as_array().unwrap().len(), 13);
        let err = resolve(&json!({"a": "${b.c}"}), &[]).unwrap_err();
        assert!(
            format!("{err:#}").contains("${b.c} refers to a missing key"),
            "{err:#}"
        );
        let err = resolve(&json!({"a": "${a}"}), &[]).unwrap_err();
        assert!(format!("{err:#}").contains("nest deeper"), "{err:#}");
    }
}
