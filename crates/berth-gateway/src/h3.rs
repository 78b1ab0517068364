//! HTTP/3: one QUIC endpoint (quinn) on the HTTPS port over UDP, sharing the HTTPS certificate resolver,
//! with h3 on top. Each request goes through the same `proxy::handle` as HTTP/1.1 and HTTP/2: the request
//! body streams in as a boxed body, and the response (head, body, trailers) streams back.
//!
//! Every quinn and h3 type stays inside this module: h3 is 0.0.x, and its API changes between releases.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf as _, Bytes};
use http::{HeaderMap, Response};
use http_body::{Body, Frame};
use http_body_util::{BodyExt as _, Either};
use tracing::debug;

use crate::gateway::Shared;
use crate::proxy::{self, Ingress};
use crate::upstream::UpstreamClient;

/// A started QUIC endpoint. Dropping it (or the future of `serve`) closes every HTTP/3 connection.
pub(crate) struct Server {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    ingress: Arc<Ingress>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type RecvStream = ::h3::server::RequestStream<h3_quinn::RecvStream, Bytes>;
type SendStream = ::h3::server::RequestStream<h3_quinn::SendStream<Bytes>, Bytes>;

impl Server {
    /// Binds the endpoint on `socket` (must run inside a tokio runtime).
    pub(crate) fn start(
        shared: Arc<Shared>,
        socket: std::net::UdpSocket,
        tls: rustls::ServerConfig,
        ingress: Arc<Ingress>,
    ) -> std::io::Result<Server> {
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(std::io::Error::other)?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        // Idle clients are dropped like idle HTTP/1.1 connections; the client may keep one alive with pings.
        transport.max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(30_000))));
        transport.max_concurrent_bidi_streams(quinn::VarInt::from_u32(256));
        config.transport_config(Arc::new(transport));
        socket.set_nonblocking(true)?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )?;
        Ok(Server { endpoint, shared, ingress })
    }

    /// Accepts connections until dropped.
    pub(crate) async fn serve(self) -> std::io::Result<()> {
        let client = UpstreamClient::new(self.shared.config.upstream_idle_timeout);
        while let Some(incoming) = self.endpoint.accept().await {
            let shared = self.shared.clone();
            let client = client.clone();
            let ingress = self.ingress.clone();
            tokio::spawn(async move {
                match incoming.await {
                    Ok(connection) => serve_connection(shared, client, ingress, connection).await,
                    Err(error) => debug!(error = %error, "QUIC handshake failed"),
                }
            });
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.endpoint.close(quinn::VarInt::from_u32(0x100), b"gateway stopping");
    }
}

async fn serve_connection(
    shared: Arc<Shared>,
    client: UpstreamClient,
    ingress: Arc<Ingress>,
    connection: quinn::Connection,
) {
    let peer = connection.remote_address();
    let mut h3_conn = match ::h3::server::Connection::<_, Bytes>::new(h3_quinn::Connection::new(connection)).await {
        Ok(h3_conn) => h3_conn,
        Err(error) => return debug!(peer = %peer, error = %error, "HTTP/3 connection setup failed"),
    };
    loop {
        match h3_conn.accept().await {
            Ok(Some(resolver)) => {
                let shared = shared.clone();
                let client = client.clone();
                let ingress = ingress.clone();
                tokio::spawn(async move {
                    let (req, stream) = match resolver.resolve_request().await {
                        Ok(resolved) => resolved,
                        Err(error) => return debug!(peer = %peer, error = %error, "bad HTTP/3 request"),
                    };
                    let (send, recv) = stream.split();
                    let body = request_body(recv).await;
                    let res = match proxy::handle(&shared, &client, &ingress, peer, req.map(|()| body)).await {
                        Ok(res) => res,
                        Err(never) => match never {},
                    };
                    if let Err(error) = send_response(send, res).await {
                        debug!(peer = %peer, error = %error, "HTTP/3 response not sent whole");
                    }
                });
            }
            Ok(None) => return,
            Err(error) => return debug!(peer = %peer, error = %error, "HTTP/3 connection ended"),
        }
    }
}

/// The request body as the proxy takes it. The first read tells an empty body (a GET's stream ends with its
/// headers) from one still coming, so that an empty body counts as buffered and its request can be retried.
async fn request_body(recv: RecvStream) -> proxy::ClientBody {
    let mut body = RequestBody { recv, first: None, trailers: None, error: None, data_done: false, done: false };
    match std::future::poll_fn(|cx| body.poll_data(cx)).await {
        Ok(Some(first)) => body.first = Some(first),
        Ok(None) => {
            body.data_done = true;
            match std::future::poll_fn(|cx| body.recv.poll_recv_trailers(cx)).await {
                Ok(None) => {
                    let empty = http_body_util::Empty::new().map_err(|never: std::convert::Infallible| match never {});
                    return Either::Right(empty.boxed_unsync());
                }
                Ok(Some(trailers)) => body.trailers = Some(trailers),
                Err(error) => body.error = Some(error),
            }
        }
        Err(error) => body.error = Some(error),
    }
    Either::Right(body.boxed_unsync())
}

/// Streams the response back: head, data frames, trailers, then the end of the stream.
async fn send_response(mut send: SendStream, res: Response<proxy::ResBody>) -> Result<(), BoxError> {
    let (parts, mut body) = res.into_parts();
    send.send_response(Response::from_parts(parts, ())).await?;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => {
                // The replica broke off: the client must not take a cut body for a whole one.
                send.stop_stream(::h3::error::Code::H3_INTERNAL_ERROR);
                return Err(error);
            }
        };
        match frame.into_data() {
            Ok(data) => send.send_data(data).await?,
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    send.send_trailers(trailers).await?;
                }
            }
        }
    }
    send.finish().await?;
    Ok(())
}

/// An h3 request stream as an `http_body::Body`: data frames, then trailers. A broken stream ends the body
/// with an error, so that a cut body is never forwarded as a whole one.
struct RequestBody {
    recv: RecvStream,
    /// Read ahead by `request_body`, handed out first.
    first: Option<Bytes>,
    /// Trailers read ahead by `request_body`.
    trailers: Option<HeaderMap>,
    error: Option<::h3::error::StreamError>,
    data_done: bool,
    done: bool,
}

impl RequestBody {
    fn poll_data(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, ::h3::error::StreamError>> {
        match ready!(self.recv.poll_recv_data(cx)) {
            Ok(Some(mut buf)) => Poll::Ready(Ok(Some(buf.copy_to_bytes(buf.remaining())))),
            Ok(None) => Poll::Ready(Ok(None)),
            Err(error) => Poll::Ready(Err(error)),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        if let Some(error) = this.error.take() {
            this.done = true;
            return Poll::Ready(Some(Err(std::io::Error::other(error))));
        }
        if let Some(trailers) = this.trailers.take() {
            this.done = true;
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        if this.done {
            return Poll::Ready(None);
        }
        if !this.data_done {
            match ready!(this.poll_data(cx)) {
                Ok(Some(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(None) => this.data_done = true,
                Err(error) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(std::io::Error::other(error))));
                }
            }
        }
        let trailers = ready!(this.recv.poll_recv_trailers(cx));
        this.done = true;
        match trailers {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(error) => Poll::Ready(Some(Err(std::io::Error::other(error)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.first.is_none() && self.trailers.is_none() && self.error.is_none()
    }
}
