//! `ip-restriction`: allows or denies requests by the client's address
//! against CIDR lists (IPv4 and IPv6), as APISIX's plugin of that name.
//!
//! Exactly one of `whitelist` and `blacklist`; each entry an address or a
//! CIDR. An IPv4 client seen as an IPv4-mapped IPv6 address matches IPv4
//! entries. A refused client gets `rejected_code` (403) with
//! `{"message": rejected_msg}`, by default "Your IP address is not
//! allowed". The lists are parsed and merged at config load.

use std::net::IpAddr;
use std::sync::Arc;

use http::{request, StatusCode};
use ipnet::IpNet;
use schemars::JsonSchema;
use serde::Deserialize;

use super::{in_range, parse, reject, Ctx, Descriptor, Env, Fault, Flow, Plugin};

pub(super) const DESCRIPTOR: Descriptor =
    Descriptor::new("ip-restriction", 3000, super::schema_of::<Config>, compile);

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// Addresses or CIDRs allowed; everyone else is refused.
    #[serde(default)]
    whitelist: Option<Vec<String>>,
    /// Addresses or CIDRs refused; everyone else is allowed.
    #[serde(default)]
    blacklist: Option<Vec<String>>,
    /// 200 to 599.
    #[serde(default = "default_code")]
    #[schemars(range(min = 200, max = 599))]
    rejected_code: u16,
    #[serde(default = "default_msg")]
    message: String,
}

fn default_code() -> u16 {
    403
}

fn default_msg() -> String {
    "Your IP address is not allowed".to_owned()
}

#[derive(Debug)]
struct IpRestriction {
    nets: Vec<IpNet>,
    /// Whether the listed nets are the allowed ones.
    allow: bool,
    rejected: StatusCode,
    message: String,
}

fn compile(value: &serde_json::Value, _env: &Env) -> Result<Arc<dyn Plugin>, Fault> {
    Ok(Arc::new(build(parse(value)?)?))
}

fn build(config: Config) -> Result<IpRestriction, Fault> {
    in_range("rejected_code", config.rejected_code, 200..=599)?;
    let (field, list, allow) = match (config.whitelist, config.blacklist) {
        (Some(list), None) => ("whitelist", list, true),
        (None, Some(list)) => ("blacklist", list, false),
        _ => {
            return Err(Fault::new(
                "",
                "needs exactly one of whitelist and blacklist",
            ))
        }
    };
    if list.is_empty() {
        return Err(Fault::new(field, "must list at least one address or CIDR"));
    }
    let mut nets = Vec::with_capacity(list.len());
    for (i, entry) in list.iter().enumerate() {
        let net = entry
            .parse::<IpNet>()
            .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| {
                Fault::new(
                    &format!("{field}[{i}]"),
                    format!("{entry:?} is not an IP address or CIDR"),
                )
            })?;
        nets.push(net.trunc());
    }
    let nets = IpNet::aggregate(&nets);
    if config.message.is_empty() || config.message.len() > 1024 {
        return Err(Fault::new("message", "must be 1 to 1024 characters"));
    }
    Ok(IpRestriction {
        nets,
        allow,
        rejected: StatusCode::from_u16(config.rejected_code)
            .map_err(|_| Fault::new("rejected_code", "not a status code"))?,
        message: config.message,
    })
}

impl IpRestriction {
    fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let listed = self.nets.iter().any(|n| n.contains(&ip));
        listed == self.allow
    }
}

impl Plugin for IpRestriction {
    fn access(&self, ctx: &mut Ctx<'_>, _req: &mut request::Parts) -> Flow {
        if self.allows(ctx.remote_addr.ip()) {
            Flow::Continue
        } else {
            Flow::Respond(reject(self.rejected, &self.message))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::assert_faults;
    use super::*;

    fn restriction(config: serde_json::Value) -> IpRestriction {
        build(parse(&config).expect("parses")).expect("builds")
    }

    #[test]
    fn whitelists_and_blacklists_match_v4_v6_and_mapped_addresses() {
        let white = restriction(
            serde_json::json!({"whitelist": ["10.0.0.0/8", "192.168.1.7", "fd00::/64"]}),
        );
        for (ip, allowed) in [
            ("10.1.2.3", true),
            ("11.0.0.1", false),
            ("192.168.1.7", true),
            ("192.168.1.8", false),
            ("::ffff:10.9.9.9", true),
            ("fd00::1", true),
            ("fd00:0:0:1::1", false),
            ("::1", false),
        ] {
            assert_eq!(white.allows(ip.parse().unwrap()), allowed, "{ip}");
        }
        let black = restriction(serde_json::json!({"blacklist": ["127.0.0.1", "2001:db8::/32"]}));
        assert!(!black.allows("127.0.0.1".parse().unwrap()));
        assert!(black.allows("127.0.0.2".parse().unwrap()));
        assert!(!black.allows("2001:db8:1::5".parse().unwrap()));
    }

    #[test]
    fn a_refused_client_gets_the_message() {
        let p = compile(
            &serde_json::json!({"whitelist": ["10.9.0.0/16"], "rejected_code": 401, "message": "no"}),
            &super::super::testing::env(),
        )
        .expect("valid");
        let compiled = super::super::testing::consumers(&[]);
        let mut ctx = super::super::testing::ctx(&compiled);
        let Flow::Respond(r) = p.access(&mut ctx, &mut super::super::testing::request("/", &[]))
        else {
            panic!("10.0.0.7 is not in 10.9.0.0/16")
        };
        assert_eq!(r.status(), 401);
        assert_eq!(
            super::super::testing::body_text(r),
            "{\"message\":\"no\"}\n"
        );
    }

    #[test]
    fn bad_configs_name_their_field() {
        assert_faults(
            compile,
            &[
                (serde_json::json!({}), "", "exactly one"),
                (
                    serde_json::json!({"whitelist": ["1.1.1.1"], "blacklist": ["2.2.2.2"]}),
                    "",
                    "exactly one",
                ),
                (
                    serde_json::json!({"whitelist": []}),
                    ".whitelist",
                    "at least one",
                ),
                (
                    serde_json::json!({"whitelist": ["10.0.0.0/33"]}),
                    ".whitelist[0]",
                    "not an IP address",
                ),
                (
                    serde_json::json!({"blacklist": ["1.1.1.1", "example.com"]}),
                    ".blacklist[1]",
                    "not an IP address",
                ),
                (
                    serde_json::json!({"whitelist": "1.1.1.1"}),
                    ".whitelist",
                    "invalid type",
                ),
                (
                    serde_json::json!({"whitelist": ["1.1.1.1"], "rejected_code": 700}),
                    ".rejected_code",
                    "out of range",
                ),
                (
                    serde_json::json!({"whitelist": ["1.1.1.1"], "message": ""}),
                    ".message",
                    "1 to 1024",
                ),
            ],
        );
    }
}
