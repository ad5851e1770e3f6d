//! APISIX's `vars` conditions (lua-resty-expr): `[var, op, value]`
//! comparisons, AND'ed in a list, with `"!"` before the operator to negate
//! and `["OR", ...]` / `["AND", ...]` (or `"!OR"`, `"!AND"`) to group.
//!
//! Operators: `==`, `~=`, `>`, `<`, `>=`, `<=` (numbers), `~~` (regex),
//! `~*` (regex, any case), `in` (one of a list), `has` (a comma-separated
//! value, such as a list header, that contains it), `ipmatch` (CIDRs). Compiled once (variables, regexes, CIDRs, numbers); evaluated
//! against a lookup the caller gives, so a plugin decides which variables
//! exist where (request variables, or the response `status`).

use std::borrow::Cow;
use std::net::IpAddr;

use ipnet::IpNet;
use regex::Regex;
use serde_json::Value;

use super::vars::Var;
use super::Fault;

/// A compiled condition list: every entry must hold.
#[derive(Debug, Clone)]
pub(crate) struct Expr<V = Var>(Vec<Cond<V>>);

#[derive(Debug, Clone)]
enum Cond<V> {
    Compare {
        var: V,
        negate: bool,
        op: Op,
    },
    Group {
        any: bool,
        negate: bool,
        items: Vec<Cond<V>>,
    },
}

#[derive(Debug, Clone)]
enum Op {
    Eq(String),
    Ne(String),
    Gt(f64),
    Lt(f64),
    Ge(f64),
    Le(f64),
    Regex(Regex),
    In(Vec<String>),
    Has(String),
    IpMatch(Vec<IpNet>),
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

impl<V> Expr<V> {
    /// Compiles a condition list at `field`; `parse` makes a variable of a
    /// name, or says it may not be named (`None`).
    pub(crate) fn compile(
        field: &str,
        value: &Value,
        parse: fn(&str) -> Option<V>,
    ) -> Result<Self, Fault> {
        let Value::Array(items) = value else {
            return Err(Fault::new(
                field,
                "must be a list of [var, operator, value] conditions",
            ));
        };
        let mut conds = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            conds.push(cond(&format!("{field}[{i}]"), item, parse)?);
        }
        Ok(Expr(conds))
    }

    /// Whether every condition holds.
    pub(crate) fn eval<'v>(&self, lookup: &dyn Fn(&V) -> Option<Cow<'v, str>>) -> bool {
        self.0.iter().all(|c| c.eval(lookup))
    }
}

fn cond<V>(field: &str, value: &Value, parse: fn(&str) -> Option<V>) -> Result<Cond<V>, Fault> {
    let Value::Array(parts) = value else {
        return Err(Fault::new(
            field,
            "a condition is a list: [var, operator, value]",
        ));
    };
    let word = parts.first().and_then(Value::as_str).unwrap_or("");
    if let Some(kind) = ["AND", "OR", "!AND", "!OR"].iter().find(|k| **k == word) {
        let mut items = Vec::with_capacity(parts.len() - 1);
        for (i, item) in parts.iter().enumerate().skip(1) {
            items.push(cond(&format!("{field}[{i}]"), item, parse)?);
        }
        return Ok(Cond::Group {
            any: kind.ends_with("OR"),
            negate: kind.starts_with('!'),
            items,
        });
    }
    let (negate, op_at) = match parts.get(1).and_then(Value::as_str) {
        Some("!") => (true, 2),
        _ => (false, 1),
    };
    if parts.len() != op_at + 2 {
        return Err(Fault::new(
            field,
            "a condition is [var, operator, value] or [var, \"!\", operator, value]",
        ));
    }
    let Some(var) = parse(word) else {
        return Err(Fault::new(
            field,
            format!("{word:?} is not a variable this condition can read"),
        ));
    };
    let op_name = parts[op_at].as_str().unwrap_or("");
    let operand = &parts[op_at + 1];
    let bad = |why: &str| Fault::new(field, format!("operator {op_name:?}: {why}"));
    let number = || {
        operand
            .as_f64()
            .or_else(|| operand.as_str().and_then(|s| s.parse().ok()))
            .ok_or_else(|| bad("needs a number"))
    };
    let string = || text(operand).ok_or_else(|| bad("needs a string or number"));
    let regex = |case_insensitive: bool| {
        let pattern = operand.as_str().ok_or_else(|| bad("needs a regex"))?;
        regex::RegexBuilder::new(pattern)
            .case_insensitive(case_insensitive)
            .size_limit(1 << 20)
            .build()
            .map_err(|e| bad(&format!("regex does not compile: {e}")))
    };
    let op = match op_name {
        "==" => Op::Eq(string()?),
        "~=" => Op::Ne(string()?),
        ">" => Op::Gt(number()?),
        "<" => Op::Lt(number()?),
        ">=" => Op::Ge(number()?),
        "<=" => Op::Le(number()?),
        "~~" => Op::Regex(regex(false)?),
        "~*" => Op::Regex(regex(true)?),
        "in" => Op::In(
            operand
                .as_array()
                .ok_or_else(|| bad("needs a list"))?
                .iter()
                .map(|v| text(v).ok_or_else(|| bad("needs a list of strings or numbers")))
                .collect::<Result<_, _>>()?,
        ),
        "has" => Op::Has(string()?),
        "ipmatch" => {
            let list: Vec<&Value> = match operand {
                Value::Array(list) => list.iter().collect(),
                one => vec![one],
            };
            let nets = list
                .iter()
                .map(|v| {
                    let s = v.as_str().ok_or_else(|| bad("needs CIDRs"))?;
                    s.parse::<IpNet>()
                        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                        .map_err(|_| bad(&format!("{s:?} is not an IP address or CIDR")))
                })
                .collect::<Result<_, _>>()?;
            Op::IpMatch(nets)
        }
        other => {
            return Err(Fault::new(
                field,
                format!(
                    "{other:?} is not an operator (==, ~=, >, <, >=, <=, ~~, ~*, in, has, ipmatch)"
                ),
            ))
        }
    };
    Ok(Cond::Compare { var, negate, op })
}

impl<V> Cond<V> {
    fn eval<'v>(&self, lookup: &dyn Fn(&V) -> Option<Cow<'v, str>>) -> bool {
        match self {
            Cond::Group { any, negate, items } => {
                let held = if *any {
                    items.iter().any(|c| c.eval(lookup))
                } else {
                    items.iter().all(|c| c.eval(lookup))
                };
                held != *negate
            }
            Cond::Compare { var, negate, op } => {
                let value = lookup(var);
                let held = match (op, value.as_deref()) {
                    // An unset variable equals nothing and differs from
                    // everything, as in lua-resty-expr.
                    (Op::Ne(_), None) => true,
                    (_, None) => false,
                    (Op::Eq(want), Some(v)) => v == want,
                    (Op::Ne(want), Some(v)) => v != want,
                    (Op::Gt(n), Some(v)) => v.parse::<f64>().is_ok_and(|x| x > *n),
                    (Op::Lt(n), Some(v)) => v.parse::<f64>().is_ok_and(|x| x < *n),
                    (Op::Ge(n), Some(v)) => v.parse::<f64>().is_ok_and(|x| x >= *n),
                    (Op::Le(n), Some(v)) => v.parse::<f64>().is_ok_and(|x| x <= *n),
                    (Op::Regex(re), Some(v)) => re.is_match(v),
                    (Op::In(list), Some(v)) => list.iter().any(|w| w == v),
                    (Op::Has(want), Some(v)) => v.split(',').any(|p| p.trim() == want),
                    (Op::IpMatch(nets), Some(v)) => v
                        .parse::<IpAddr>()
                        .is_ok_and(|ip| nets.iter().any(|n| n.contains(&ip.to_canonical()))),
                };
                held != *negate
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn holds(expr: Value, vars: &[(&str, &str)]) -> bool {
        let e = Expr::compile("vars", &expr, |n| Some(n.to_owned())).expect("compiles");
        e.eval(&|name| {
            vars.iter()
                .find(|(k, _)| *k == name.as_str())
                .map(|(_, v)| Cow::Borrowed(*v))
        })
    }

    #[test]
    fn each_operator_compares_as_apisix_does() {
        let v = [
            ("arg_name", "jack"),
            ("status", "503"),
            ("remote_addr", "10.1.2.3"),
            ("http_x_tags", "a, b"),
        ];
        for (expr, want) in [
            (json!([["arg_name", "==", "jack"]]), true),
            (json!([["arg_name", "~=", "jack"]]), false),
            (json!([["arg_name", "!", "==", "jack"]]), false),
            (json!([["status", "==", 503]]), true),
            (json!([["status", ">=", 500], ["status", "<", 600]]), true),
            (json!([["status", ">", "503"]]), false),
            (json!([["status", "<=", 503]]), true),
            (json!([["arg_name", "~~", "^ja"]]), true),
            (json!([["arg_name", "~~", "^JA"]]), false),
            (json!([["arg_name", "~*", "^JA"]]), true),
            (json!([["arg_name", "in", ["rose", "jack"]]]), true),
            (json!([["status", "in", [500, 502]]]), false),
            (json!([["http_x_tags", "has", "b"]]), true),
            (json!([["remote_addr", "ipmatch", ["10.0.0.0/8"]]]), true),
            (json!([["remote_addr", "ipmatch", "192.168.0.0/16"]]), false),
            (json!([["arg_none", "==", "x"]]), false),
            (json!([["arg_none", "~=", "x"]]), true),
            (
                json!([["OR", ["arg_name", "==", "rose"], ["status", "==", 503]]]),
                true,
            ),
            (
                json!([["AND", ["arg_name", "==", "rose"], ["status", "==", 503]]]),
                false,
            ),
            (
                json!([["!AND", ["arg_name", "==", "rose"], ["status", "==", 503]]]),
                true,
            ),
            (json!([]), true),
        ] {
            assert_eq!(holds(expr.clone(), &v), want, "{expr}");
        }
    }

    #[test]
    fn bad_conditions_name_their_index() {
        for (expr, field, message) in [
            (json!("x"), ".vars", "must be a list"),
            (json!(["x"]), ".vars[0]", "a condition is a list"),
            (json!([["a", "=="]]), ".vars[0]", "[var, operator, value]"),
            (json!([["a", "===", 1]]), ".vars[0]", "not an operator"),
            (json!([["a", ">", "x"]]), ".vars[0]", "needs a number"),
            (json!([["a", "~~", "("]]), ".vars[0]", "does not compile"),
            (json!([["a", "in", "x"]]), ".vars[0]", "needs a list"),
            (
                json!([["a", "ipmatch", ["nope"]]]),
                ".vars[0]",
                "not an IP address",
            ),
            (
                json!([["OR", ["a", "==", 1], ["b"]]]),
                ".vars[0][2]",
                "[var, operator, value]",
            ),
        ] {
            let e = Expr::<String>::compile("vars", &expr, |n| Some(n.to_owned()))
                .expect_err("rejected");
            assert_eq!(e.field, field, "{expr}");
            assert!(e.message.contains(message), "{expr}: {}", e.message);
        }
        let e = Expr::compile("vars", &json!([["nope", "==", 1]]), |v| {
            (v == "status").then_some(())
        })
        .expect_err("unknown var");
        assert!(
            e.message.contains("\"nope\" is not a variable"),
            "{}",
            e.message
        );
    }
}
