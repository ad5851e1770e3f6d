//! APISIX's `anonymous_consumer` on the auth plugins (key-auth,
//! basic-auth, jwt-auth, hmac-auth): when a request's credential is
//! missing or refused, it runs as the named consumer instead of getting
//! 401, with that consumer's plugins (a tighter `limit-count`, say).
//!
//! The name must be one of `consumers[]` when the config loads. As in
//! APISIX, a wrong credential falls back too, not only a missing one: the
//! anonymous consumer is what any unauthenticated caller gets.

use std::sync::Arc;

use http::{Response, StatusCode};

use super::{reject, Ctx, Env, Fault, Flow};
use crate::body::Body;

/// Who a request runs as when its credential fails, if anyone.
#[derive(Debug, Clone, Default)]
pub(crate) struct Anonymous(Option<Arc<str>>);

impl Anonymous {
    /// Checks `anonymous_consumer` against the config's consumers.
    pub(crate) fn compile(name: Option<String>, env: &Env) -> Result<Self, Fault> {
        match name {
            None => Ok(Anonymous(None)),
            Some(name) if env.has_consumer(&name) => Ok(Anonymous(Some(Arc::from(name)))),
            Some(name) => Err(Fault::new(
                "anonymous_consumer",
                format!("{name:?} is not one of consumers[].username"),
            )),
        }
    }

    /// `refusal`, unless an anonymous consumer is configured: then the
    /// request goes on as that consumer.
    pub(crate) fn or_refuse(&self, ctx: &mut Ctx<'_>, refusal: Response<Body>) -> Flow {
        let Some(name) = &self.0 else {
            return Flow::Respond(refusal);
        };
        match ctx.consumers().by_name.get(name).cloned() {
            Some(consumer) => {
                ctx.consumer = Some(consumer);
                Flow::Continue
            }
            // The config named it when it loaded; a consumer that is gone
            // since is APISIX's failure case.
            None => Flow::Respond(reject(
                StatusCode::UNAUTHORIZED,
                "Invalid user authorization",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{consumers, env_naming, request, run_rewrite};
    use super::super::{basic_auth, hmac_auth, jwt_auth, key_auth};

    #[test]
    fn a_missing_or_refused_credential_runs_as_the_anonymous_consumer() {
        let compiled = consumers(&[
            ("jack", serde_json::json!({"key-auth": {"key": "k-jack"}})),
            ("guest", serde_json::json!({})),
        ]);
        let env = env_naming(&[], &["jack", "guest"]);
        let config = serde_json::json!({"anonymous_consumer": "guest"});
        for d in [
            key_auth::DESCRIPTOR,
            basic_auth::DESCRIPTOR,
            jwt_auth::DESCRIPTOR,
            hmac_auth::DESCRIPTOR,
        ] {
            let p = (d.compile)(&config, &env).expect("valid");
            for headers in [
                &[][..],
                &[("apikey", "wrong"), ("authorization", "Basic !!!")][..],
                &[("authorization", "Bearer not.a.jwt")][..],
            ] {
                let mut req = request("/x", headers);
                let (flow, consumer) = run_rewrite(&p, &compiled, &mut req);
                assert!(
                    matches!(flow, super::Flow::Continue),
                    "{}: {flow:?}",
                    d.name
                );
                assert_eq!(consumer.as_deref(), Some("guest"), "{}", d.name);
            }
        }
        // A valid credential still names its own consumer.
        let p = (key_auth::DESCRIPTOR.compile)(&config, &env).expect("valid");
        let mut req = request("/x", &[("apikey", "k-jack")]);
        assert_eq!(
            run_rewrite(&p, &compiled, &mut req).1.as_deref(),
            Some("jack")
        );
    }

    #[test]
    fn the_anonymous_consumer_must_be_a_consumer() {
        let env = env_naming(&[], &["jack"]);
        for d in [
            key_auth::DESCRIPTOR,
            basic_auth::DESCRIPTOR,
            jwt_auth::DESCRIPTOR,
            hmac_auth::DESCRIPTOR,
        ] {
            let fault = (d.compile)(&serde_json::json!({"anonymous_consumer": "ghost"}), &env)
                .expect_err("no such consumer");
            assert_eq!(
                (fault.field.as_str(), fault.message.as_str()),
                (
                    ".anonymous_consumer",
                    "\"ghost\" is not one of consumers[].username"
                ),
                "{}",
                d.name
            );
            let fault = (d.compile)(&serde_json::json!({"anonymous_consumer": 5}), &env)
                .expect_err("wrong type");
            assert_eq!(fault.field, ".anonymous_consumer", "{}", d.name);
        }
    }
}
