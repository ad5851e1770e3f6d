//! remora-injector: the mutating admission webhook that injects `remora-init`
//! and `remora-proxy` into pods (docs/injector.md).
//!
//! The crate is a pure core and a thin edge. `inject` and `uninject` turn a
//! Pod into a JSON patch and back, with no I/O, for the webhook here and for
//! the CLI and the demo later; `review` maps an AdmissionReview to an answer;
//! `server` and `tls` are the only parts that touch the network, with
//! `ca_bundle`, which keeps the webhook configuration trusting a generated
//! certificate through the Kubernetes API, and `native_sidecar`, which asks
//! the API server's version at start.

pub mod annotations;
pub mod ca_bundle;
pub mod config;
pub mod inject;
#[cfg(any(test, feature = "kube-mock"))]
pub mod kube_mock;
pub mod native_sidecar;
pub mod probes;
pub mod quantity;
pub mod review;
pub mod server;
pub mod settings;
pub mod status;
pub mod tls;
pub mod uninject;

pub use inject::{inject, injected_pod, Decision, InjectError, Injection, Skip};
pub use settings::Settings;
pub use uninject::{uninject, UninjectError};
