//! The HTTPS front: TLS with optional client certificates, HTTP/1.1 and
//! HTTP/2, authentication, and dispatch to discovery, health and the REST
//! verbs. Every failure leaves as a `metav1.Status`.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::{
    authn::{Authenticator, is_token_request},
    authz::{Rbac, User},
    body::{Reply, ResponseBody},
    discovery,
    kubelet::KubeletClient,
    request::{Query, Route, Verb, route},
    rest::{Body, Format, Resources},
    status::ApiError,
};

/// Largest request body accepted, as Kubernetes' limit.
pub const MAX_BODY: usize = 3 * 1024 * 1024;

/// The API server: resources plus who may do what.
pub struct ApiServer {
    /// The REST verbs.
    pub resources: Resources,
    /// Who may do what.
    pub authorizer: Arc<Rbac>,
    /// Who is asking: certificates and service-account tokens.
    pub authn: Authenticator,
    /// Node agents, for logs and exec.
    pub kubelet: KubeletClient,
    /// New control-plane members' `POST /shoal/v1/server-join`.
    pub server_join: Option<crate::server_join::ServerJoin>,
}

impl ApiServer {
    /// Accepts TLS connections until `shutdown` completes.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        let acceptor = TlsAcceptor::from(tls);
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a connection");
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let api = self.clone();
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                };
                let certs = tls.get_ref().1.peer_certificates();
                let user = certs.and_then(shoal_ca::identity_from_peer).map(|id| User {
                    name: id.user,
                    groups: id.groups,
                });
                // The handshake checked the certificate's dates; a connection
                // that outlives them stops authenticating, as kube-apiserver
                // verifies the certificate on every request.
                let expires = certs
                    .and_then(shoal_ca::certificate_validity)
                    .map(|(_, not_after)| not_after);
                let service = hyper::service::service_fn(move |req| {
                    let api = api.clone();
                    let user = user.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(
                            api.handle(req, user.as_ref(), expires, peer).await,
                        )
                    }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if let Err(e) = builder
                    .serve_connection_with_upgrades(TokioIo::new(tls), service)
                    .await
                {
                    tracing::debug!(%peer, error = %e, "connection ended");
                }
            });
        }
    }

    /// Answers one request; `cert` is the client certificate's user, valid
    /// until `cert_expires`: past it the request is 401 Unauthorized.
    pub async fn handle(
        &self,
        req: Request<Incoming>,
        cert: Option<&User>,
        cert_expires: Option<std::time::SystemTime>,
        peer: SocketAddr,
    ) -> Response<ResponseBody> {
        let started = Instant::now();
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let expired =
            cert.is_some() && cert_expires.is_some_and(|at| std::time::SystemTime::now() > at);
        let (user, result) = if expired {
            tracing::info!(user = ?cert.map(|u| &u.name), %peer, "rejected an expired client certificate");
            (None, Err(ApiError::unauthorized()))
        } else {
            match self.authn.authenticate(cert, req.headers()).await {
                Ok(user) => {
                    let result = self.dispatch(req, user.as_ref()).await;
                    (user, result)
                }
                Err(e) => (None, Err(e)),
            }
        };
        let user = user.as_ref();
        let reply = match result {
            Ok(r) => r,
            Err(e) => Reply::json(e.code, &e.to_status()),
        };
        tracing::debug!(
            %method,
            path,
            user = user.map_or("system:anonymous", |u| u.name.as_str()),
            %peer,
            code = reply.code,
            ms = started.elapsed().as_millis() as u64,
            "request"
        );
        let mut resp = Response::new(reply.body);
        *resp.status_mut() =
            StatusCode::from_u16(reply.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if reply.code != 101 {
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(reply.content_type),
            );
        }
        resp.headers_mut().extend(reply.headers);
        if reply.streaming {
            resp.headers_mut().insert(
                header::CACHE_CONTROL,
                HeaderValue::from_static("no-cache, private"),
            );
        }
        resp
    }

    async fn dispatch(
        &self,
        req: Request<Incoming>,
        user: Option<&User>,
    ) -> Result<Reply, ApiError> {
        if req.uri().path() == crate::server_join::SERVER_JOIN_PATH {
            // Its own check (the token's group), not RBAC: no Role can
            // grant the CA's key.
            return self.server_join(req, user).await;
        }
        let query = Query::parse(req.uri().query())?;
        let route = route(req.method(), req.uri().path(), &query)?;
        let accept = header_str(&req, header::ACCEPT).to_string();
        // Health and version are public, as Kubernetes'
        // system:public-info-viewer makes them; everything else needs a
        // user.
        match &route {
            Route::Health(check) => return Ok(self.health(check)),
            Route::Version => return Ok(Reply::json(200, &discovery::version())),
            _ => {}
        }
        let anonymous;
        let user = match user {
            Some(user) => user,
            None if crate::cluster_info::is_cluster_info_read(&route) => {
                anonymous = crate::cluster_info::anonymous_user();
                &anonymous
            }
            None => return Err(ApiError::unauthorized()),
        };
        if !matches!(route, Route::Resource(_)) {
            self.authorizer.authorize_path(
                user,
                &req.method().as_str().to_ascii_lowercase(),
                req.uri().path(),
            )?;
        }
        match route {
            Route::Health(_) | Route::Version => Err(ApiError::no_route(req.uri().path())),
            Route::CoreVersions if discovery::wants_aggregated(&accept) => Ok(aggregated(true)),
            Route::Groups if discovery::wants_aggregated(&accept) => Ok(aggregated(false)),
            Route::CoreVersions => Ok(Reply::json(200, &discovery::core_versions())),
            Route::Groups => Ok(Reply::json(200, &discovery::group_list())),
            Route::Group(g) => discovery::group(&g)
                .map(|v| Reply::json(200, &v))
                .ok_or_else(|| ApiError::no_route(req.uri().path())),
            Route::ResourceList(g, v) => discovery::resource_list(&g, &v)
                .map(|v| Reply::json(200, &v))
                .ok_or_else(|| ApiError::no_route(req.uri().path())),
            Route::OpenApi(rest) => crate::openapi::serve(&rest)
                .map(|bytes| Reply::raw(200, bytes))
                .ok_or_else(|| ApiError::no_route(req.uri().path())),
            Route::Metrics => Ok(self.metrics()),
            Route::Resource(r) => {
                crate::authz::Authorizer::authorize(self.authorizer.as_ref(), user, &r)?;
                let format = if accept.contains("as=Table") {
                    Format::Table
                } else {
                    Format::Json
                };
                if r.group == crate::resource_metrics::GROUP {
                    return crate::resource_metrics::serve(
                        &self.kubelet,
                        &self.resources.storage,
                        &r,
                        &query,
                    )
                    .await;
                }
                if r.group.is_empty() && r.resource == "pods" {
                    match r.subresource.as_deref() {
                        Some("log") if r.verb == Verb::Get => {
                            return self
                                .kubelet
                                .pod_log(&self.resources.storage, &r, req.uri().query())
                                .await;
                        }
                        Some("exec") if matches!(r.verb, Verb::Get | Verb::Create) => {
                            return self
                                .kubelet
                                .pod_exec(&self.resources.storage, &r, req)
                                .await;
                        }
                        Some("attach") if matches!(r.verb, Verb::Get | Verb::Create) => {
                            return self
                                .kubelet
                                .pod_attach(&self.resources.storage, &r, req)
                                .await;
                        }
                        Some("portforward") if matches!(r.verb, Verb::Get | Verb::Create) => {
                            return self
                                .kubelet
                                .pod_portforward(&self.resources.storage, &r, req)
                                .await;
                        }
                        _ => {}
                    }
                }
                let content_type = header_str(&req, header::CONTENT_TYPE).to_string();
                let bytes = read_body(req).await?;
                let body = Body {
                    content_type: &content_type,
                    bytes: &bytes,
                };
                if is_token_request(&r) {
                    return self.authn.token_request(&r, body).await;
                }
                if r.verb == Verb::Create
                    && r.subresource.is_none()
                    && r.group == crate::certificates::GROUP
                    && r.resource == crate::certificates::RESOURCE
                {
                    let stamped = crate::certificates::stamp_requester(
                        crate::rest::decode_body(&body)?,
                        user,
                    )?;
                    let body = Body {
                        content_type: "application/json",
                        bytes: &stamped,
                    };
                    return self.resources.handle(&r, &query, body, format).await;
                }
                self.resources.handle(&r, &query, body, format).await
            }
        }
    }

    /// `POST /shoal/v1/server-join` (see `server_join`).
    async fn server_join(
        &self,
        req: Request<Incoming>,
        user: Option<&User>,
    ) -> Result<Reply, ApiError> {
        let Some(user) = user else {
            return Err(ApiError::unauthorized());
        };
        if req.method() != Method::POST {
            return Err(ApiError::method_not_supported(
                "server-join",
                req.method().as_str(),
            ));
        }
        let Some(join) = &self.server_join else {
            return Err(ApiError::bad_request(
                "this server cannot add control-plane members: it runs over an external store (--store-endpoints)",
            ));
        };
        let body = read_body(req).await?;
        let answer = join.join(user, &body).await?;
        let answer = serde_json::to_value(&answer)
            .map_err(|e| ApiError::internal(format!("encoding the server-join answer: {e}")))?;
        Ok(Reply::json(200, &answer))
    }

    fn health(&self, check: &str) -> Reply {
        let ready = self.resources.cache.ready();
        let ok = !check.starts_with("readyz") || ready;
        let text = if ok {
            "ok"
        } else {
            "[-]informer-sync failed: the watch cache is loading\nreadyz check failed"
        };
        Reply {
            code: if ok { 200 } else { 500 },
            content_type: "text/plain; charset=utf-8",
            body: Full::new(Bytes::from(text)).map_err(|e| match e {}).boxed(),
            streaming: false,
            headers: http::HeaderMap::new(),
        }
    }

    fn metrics(&self) -> Reply {
        let text = format!(
            "# HELP shoal_apiserver_store_watches Store watches held open by the watch cache.\n# TYPE shoal_apiserver_store_watches gauge\nshoal_apiserver_store_watches {}\n",
            self.resources.cache.store_watches()
        );
        Reply {
            code: 200,
            content_type: "text/plain; version=0.0.4",
            body: Full::new(Bytes::from(text)).map_err(|e| match e {}).boxed(),
            streaming: false,
            headers: http::HeaderMap::new(),
        }
    }
}

fn aggregated(core: bool) -> Reply {
    Reply {
        content_type: discovery::AGGREGATED_V2,
        ..Reply::json(200, &discovery::aggregated(core))
    }
}

fn header_str(req: &Request<Incoming>, name: header::HeaderName) -> &str {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

async fn read_body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return Ok(Bytes::new());
    }
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::too_large(MAX_BODY))
        }
        Err(e) => Err(ApiError::bad_request(format!(
            "reading the request body: {e}"
        ))),
    }
}
