//! A gRPC app and client for pods: a real tonic server (`echo.Echo`, from
//! `proto/echo.proto`) listening in a pod, and tonic channels whose
//! connections are created inside a pod, so they are captured like an app's.
//!
//! This module owns the app side only; what the mesh does to the calls is
//! asserted in `tests/grpc.rs`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use hyper_util::rt::TokioIo;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Request, Response, Status, Streaming};

use crate::netns::Pod;

/// The generated `echo` package: messages, `echo_client` and `echo_server`.
#[allow(
    unreachable_pub,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]
pub mod pb {
    tonic::include_proto!("echo");
}

use pb::echo_server::{Echo, EchoServer};
use pb::{ChatMessage, SayReply, SayRequest};

/// A tonic echo server running in a pod on the test's runtime; stopped on drop.
#[derive(Debug)]
pub struct GrpcApp {
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    task: JoinHandle<()>,
}

impl GrpcApp {
    /// The peer address of every call the app answered so far, in order.
    pub fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().expect("peer list poisoned").clone()
    }
}

impl Drop for GrpcApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Pod {
    /// Starts the `echo.Echo` gRPC app on `0.0.0.0:port` inside the pod,
    /// served by tonic's own HTTP/2 server.
    pub fn spawn_grpc_echo_server(&self, port: u16) -> GrpcApp {
        let listener = self.listen_tcp(port);
        let peers = Arc::new(Mutex::new(Vec::new()));
        let service = EchoServer::new(EchoService {
            peers: peers.clone(),
        });
        let task = tokio::spawn(async move {
            let incoming = TcpListenerStream::new(listener);
            if let Err(e) = Server::builder()
                .serve_with_incoming(service, incoming)
                .await
            {
                eprintln!("gRPC echo app stopped: {e}");
            }
        });
        GrpcApp { peers, task }
    }

    /// A tonic channel to `addr` over one connection created inside this
    /// pod (so the pod's capture rules apply to it, as to an app's).
    pub async fn grpc_channel(&self, addr: SocketAddr) -> Result<Channel, tonic::transport::Error> {
        let pod = self.clone();
        let connector = tower::service_fn(move |_: http::Uri| {
            let pod = pod.clone();
            async move { pod.connect(addr).await.map(TokioIo::new) }
        });
        Endpoint::from_shared(format!("http://{addr}"))
            .expect("a socket address makes a valid URI")
            .connect_with_connector(connector)
            .await
    }
}

/// The app's behaviour. A request can ask for a failure, so the tests can
/// check that a status the app returns reaches the client intact.
#[derive(Debug)]
struct EchoService {
    peers: Arc<Mutex<Vec<SocketAddr>>>,
}

impl EchoService {
    fn record_peer<T>(&self, request: &Request<T>) -> String {
        let Some(peer) = request.remote_addr() else {
            return String::new();
        };
        self.peers.lock().expect("peer list poisoned").push(peer);
        peer.ip().to_string()
    }
}

type ChatStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<ChatMessage, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn say(&self, request: Request<SayRequest>) -> Result<Response<SayReply>, Status> {
        let peer = self.record_peer(&request);
        let request = request.into_inner();
        if request.fail_with != 0 {
            return Err(Status::new(Code::from(request.fail_with), request.text));
        }
        Ok(Response::new(SayReply {
            text: request.text,
            peer,
        }))
    }

    type ChatStream = ChatStream;

    async fn chat(
        &self,
        request: Request<Streaming<ChatMessage>>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        self.record_peer(&request);
        let mut inbound = request.into_inner();
        let (replies, stream) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            loop {
                let reply = match inbound.message().await {
                    Ok(Some(message)) if message.fail_with != 0 => {
                        // Ends the response stream with a status after the
                        // messages already sent: it travels in trailers.
                        Err(Status::new(Code::from(message.fail_with), message.text))
                    }
                    Ok(Some(message)) => Ok(message),
                    Ok(None) => return,
                    Err(status) => Err(status),
                };
                let last = reply.is_err();
                if replies.send(reply).await.is_err() || last {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(stream))))
    }
}

/// A tonic `echo.Echo` app that fails the first attempts of every call: for
/// each distinct `SayRequest.text` it answers the first `failures` calls
/// with a status of `code` and the later ones with the echo. It counts the
/// attempts per text, so a test sees how many times a retrying proxy sent
/// each call, and that each retry carried the whole request message (an
/// empty or truncated message would be counted under another text).
#[derive(Debug)]
pub struct FlakyGrpcApp {
    attempts: Arc<Mutex<BTreeMap<String, u32>>>,
    task: JoinHandle<()>,
}

impl FlakyGrpcApp {
    /// How many `Say` attempts arrived for each request text.
    pub fn attempts(&self) -> BTreeMap<String, u32> {
        self.attempts.lock().expect("attempts poisoned").clone()
    }
}

impl Drop for FlakyGrpcApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Pod {
    /// Starts a [`FlakyGrpcApp`] on `0.0.0.0:port` inside the pod.
    pub fn spawn_grpc_flaky_server(&self, port: u16, failures: u32, code: Code) -> FlakyGrpcApp {
        let listener = self.listen_tcp(port);
        let attempts = Arc::new(Mutex::new(BTreeMap::new()));
        let service = EchoServer::new(FlakyEchoService {
            attempts: attempts.clone(),
            failures,
            code,
        });
        let task = tokio::spawn(async move {
            let incoming = TcpListenerStream::new(listener);
            if let Err(e) = Server::builder()
                .serve_with_incoming(service, incoming)
                .await
            {
                eprintln!("flaky gRPC app stopped: {e}");
            }
        });
        FlakyGrpcApp { attempts, task }
    }
}

#[derive(Debug)]
struct FlakyEchoService {
    attempts: Arc<Mutex<BTreeMap<String, u32>>>,
    failures: u32,
    code: Code,
}

#[tonic::async_trait]
impl Echo for FlakyEchoService {
    async fn say(&self, request: Request<SayRequest>) -> Result<Response<SayReply>, Status> {
        let peer = request
            .remote_addr()
            .map(|p| p.ip().to_string())
            .unwrap_or_default();
        let request = request.into_inner();
        let attempt = {
            let mut attempts = self.attempts.lock().expect("attempts poisoned");
            let n = attempts.entry(request.text.clone()).or_insert(0);
            *n += 1;
            *n
        };
        if attempt <= self.failures {
            return Err(Status::new(
                self.code,
                format!("attempt {attempt} of {:?} fails", request.text),
            ));
        }
        Ok(Response::new(SayReply {
            text: request.text,
            peer,
        }))
    }

    type ChatStream = ChatStream;

    async fn chat(
        &self,
        _request: Request<Streaming<ChatMessage>>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        Err(Status::unimplemented("the flaky app only answers Say"))
    }
}
