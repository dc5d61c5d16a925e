//! The query API as HTTP + JSON, on the same socket as gRPC, for `curl
//! --unix-socket` and languages without gRPC stubs:
//!
//! | Request | gRPC method | Answer |
//! |---|---|---|
//! | `GET /v1/processes/{pid}[?start_time=T]` | `Resolve` | a record |
//! | `GET /v1/processes?pid=P[:T]&pid=…` | `ResolveBatch` | an array of records, in request order |
//! | `GET /v1/containers[?namespace=&pod=&pod_namespace=&label=K=V&all=true]` | `ListContainers` | an array of containers |
//! | `GET /v1/containers/{id}/processes[?namespace=]` | `ListProcesses` | an array of records |
//! | `GET /v1/whoami` | `WhoAmI` | the caller's record |
//! | `GET /v1/status` | `Status` | readiness and counters |
//! | `GET /v1/watch` | `Watch` | newline-delimited JSON: the snapshot, then changes |
//!
//! Records and containers have exactly the keys of `pidmap … -o json`
//! ([`super::json`]); `?format=otel` gives OpenTelemetry resource
//! attributes instead. Every request passes the same [`Policy`] as gRPC
//! (readiness, `restrict_peers`, request metrics) and the same limits;
//! errors are `{"error": {"code", "message"}}` with the gRPC code's name
//! (`InvalidArgument`, as the request metrics name it) and a matching HTTP
//! status (400, 403, 404, 413, 503, …).

use std::{convert::Infallible, sync::Arc, time::Instant};

use bytes::Bytes;
use http::{Method as HttpMethod, Request, Response, StatusCode, header, request::Parts};
use http_body_util::{Full, StreamBody};
use hyper::body::Frame;
use serde_json::Value;
use tokio_stream::StreamExt as _;
use tonic::{Code, Status};

use super::{
    budget::ndjson_error_line,
    json,
    peer::Peer,
    policy::{Method, Policy},
    proto,
    service::{PidmapService, check_batch},
};

/// Response bodies (the gRPC routes' type, so both share one server).
pub(crate) type Body = tonic::body::Body;

/// An HTTP request that is answered with an error.
#[derive(Debug)]
pub struct HttpError {
    status: StatusCode,
    code: Code,
    message: String,
}

impl HttpError {
    fn new(status: StatusCode, code: Code, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// The error as its JSON response.
    pub fn response(&self) -> Response<Body> {
        let mut response = json_response(self.status, &json::error(self.code, &self.message));
        if self.status == StatusCode::METHOD_NOT_ALLOWED {
            response
                .headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
        }
        response
    }
}

impl From<Status> for HttpError {
    fn from(s: Status) -> Self {
        Self::new(http_status(s.code()), s.code(), s.message())
    }
}

/// The HTTP status that answers a gRPC status code.
pub(crate) fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
            StatusCode::BAD_REQUEST
        }
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded | Code::Cancelled => StatusCode::GATEWAY_TIMEOUT,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// One HTTP endpoint: its path under `/v1/` (a `{…}` segment captures
/// one, percent-decoded), the RPC it is (its policy and its metrics) and
/// the query parameters it takes. The one list of the HTTP routes.
#[derive(Debug, PartialEq, Eq)]
struct Endpoint {
    path: &'static [&'static str],
    method: Method,
    parameters: &'static [&'static str],
}

const ENDPOINTS: [Endpoint; 7] = [
    Endpoint {
        path: &["processes", "{pid}"],
        method: Method::Resolve,
        parameters: &["start_time", "format"],
    },
    Endpoint {
        path: &["processes"],
        method: Method::ResolveBatch,
        parameters: &["pid", "format"],
    },
    Endpoint {
        path: &["containers"],
        method: Method::ListContainers,
        parameters: &[
            "namespace",
            "pod",
            "pod_namespace",
            "label",
            "all",
            "format",
        ],
    },
    Endpoint {
        path: &["containers", "{id}", "processes"],
        method: Method::ListProcesses,
        parameters: &["namespace", "format"],
    },
    Endpoint {
        path: &["whoami"],
        method: Method::WhoAmI,
        parameters: &["format"],
    },
    Endpoint {
        path: &["status"],
        method: Method::Status,
        parameters: &[],
    },
    Endpoint {
        path: &["watch"],
        method: Method::Watch,
        parameters: &[],
    },
];

/// The endpoints, for the answer to an unknown path.
fn endpoint_list() -> String {
    let paths: Vec<String> = ENDPOINTS
        .iter()
        .map(|e| format!("/v1/{}", e.path.join("/")))
        .collect();
    format!("GET {}", paths.join(", "))
}

/// What a path asks for: its endpoint, and the segment it captured.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Route {
    endpoint: &'static Endpoint,
    capture: Option<String>,
}

impl Route {
    fn parse(path: &str) -> Option<Self> {
        let rest = path.strip_prefix("/v1/")?;
        let parts: Vec<&str> = rest.split('/').collect();
        ENDPOINTS.iter().find_map(|endpoint| {
            if endpoint.path.len() != parts.len() {
                return None;
            }
            let mut capture = None;
            for (want, got) in endpoint.path.iter().zip(&parts) {
                if want.starts_with('{') {
                    if got.is_empty() {
                        return None;
                    }
                    capture = Some(decode(got).ok()?);
                } else if want != got {
                    return None;
                }
            }
            Some(Self { endpoint, capture })
        })
    }

    /// The gRPC method this route is.
    fn method(&self) -> Method {
        self.endpoint.method
    }
}

/// How records are rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Otel,
}

/// A request's query parameters, decoded.
#[derive(Debug, Default)]
struct Query(Vec<(String, String)>);

impl Query {
    /// Parses `a=1&b=x%2Fy` (`+` is a space, as in HTML forms).
    fn parse(query: Option<&str>) -> Result<Self, Status> {
        let mut pairs = Vec::new();
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let (name, value) = (decode(name), decode(value));
            match (name, value) {
                (Ok(name), Ok(value)) => pairs.push((name, value)),
                _ => {
                    return Err(Status::invalid_argument(
                        "the query is not valid percent-encoded UTF-8",
                    ));
                }
            }
        }
        Ok(Self(pairs))
    }

    /// Refuses parameters the route does not take (a typo would otherwise
    /// be silently ignored).
    fn only(&self, allowed: &[&str]) -> Result<(), Status> {
        match self.0.iter().find(|(n, _)| !allowed.contains(&n.as_str())) {
            Some((name, _)) if allowed.is_empty() => Err(Status::invalid_argument(format!(
                "unknown query parameter {name:?}: this endpoint takes none"
            ))),
            Some((name, _)) => Err(Status::invalid_argument(format!(
                "unknown query parameter {name:?}; this endpoint takes {}",
                allowed.join(", ")
            ))),
            None => Ok(()),
        }
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A parameter given at most once.
    fn one(&self, name: &str) -> Result<Option<&str>, Status> {
        let mut values = self.0.iter().filter(|(n, _)| n == name).map(|(_, v)| v);
        let first = values.next().map(String::as_str);
        if values.next().is_some() {
            return Err(Status::invalid_argument(format!(
                "query parameter {name:?} given more than once"
            )));
        }
        Ok(first)
    }

    /// A yes/no parameter: absent or `false`/`0` is no; present, `true` or
    /// `1` is yes.
    fn flag(&self, name: &str) -> Result<bool, Status> {
        match self.one(name)? {
            None | Some("false" | "0") => Ok(false),
            Some("" | "true" | "1") => Ok(true),
            Some(other) => Err(Status::invalid_argument(format!(
                "{name}={other:?}: expected true or false"
            ))),
        }
    }

    fn format(&self) -> Result<Format, Status> {
        match self.one("format")? {
            None | Some("json") => Ok(Format::Json),
            Some("otel") => Ok(Format::Otel),
            Some(other) => Err(Status::invalid_argument(format!(
                "format={other:?}: expected json or otel"
            ))),
        }
    }
}

/// Percent-decodes one path segment or query component.
fn decode(s: &str) -> Result<String, std::str::Utf8Error> {
    let spaced = s.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(std::borrow::Cow::into_owned)
}

/// A pid as a path or query gives it: `PID`, or `PID:START_TIME`.
fn pid_and_start(text: &str) -> Result<proto::ResolveRequest, Status> {
    let (pid, start) = match text.split_once(':') {
        Some((pid, start)) => (pid, Some(start)),
        None => (text, None),
    };
    let pid = pid.parse::<i64>().map_err(|_| {
        Status::invalid_argument(format!("pid must be a positive process id, got {text:?}"))
    })?;
    let start_time = start.map(start_time).transpose()?;
    Ok(proto::ResolveRequest { pid, start_time })
}

fn start_time(text: &str) -> Result<u64, Status> {
    text.parse().map_err(|_| {
        Status::invalid_argument(format!(
            "start_time must be clock ticks since boot (field 22 of /proc/PID/stat), got {text:?}"
        ))
    })
}

/// What an HTTP request asks, parsed and checked before anything is
/// answered: a path it does not serve, a method other than GET, an
/// oversized target, an unknown or repeated parameter, a malformed pid or
/// an oversized batch are refused here.
#[derive(Debug, Clone, PartialEq)]
pub enum Ask {
    Process {
        request: proto::ResolveRequest,
        format: Format,
    },
    Processes {
        requests: Vec<proto::ResolveRequest>,
        format: Format,
    },
    Containers {
        filter: proto::ListContainersRequest,
        format: Format,
    },
    ContainerProcesses {
        request: proto::ListProcessesRequest,
        format: Format,
    },
    WhoAmI {
        format: Format,
    },
    Status,
    Watch,
}

/// A request [`Ask::parse`] refused, and the method it named, if any (for
/// the request metrics).
#[derive(Debug)]
pub struct BadRequest {
    pub method: Option<Method>,
    pub error: HttpError,
}

impl Ask {
    /// Parses a request's method and target. `max_request_bytes` bounds
    /// the target (path and query), `batch_limit` the pids of one request.
    pub fn parse(
        method: &HttpMethod,
        uri: &http::Uri,
        max_request_bytes: usize,
        batch_limit: usize,
    ) -> Result<Self, BadRequest> {
        let refuse = |error| BadRequest {
            method: None,
            error,
        };
        let target = uri.path_and_query().map_or(0, |p| p.as_str().len());
        if target > max_request_bytes {
            return Err(refuse(HttpError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                Code::InvalidArgument,
                format!(
                    "request of {target} bytes is over the limit of {max_request_bytes}; ask for fewer pids at once"
                ),
            )));
        }
        let route = Route::parse(uri.path()).ok_or_else(|| {
            refuse(HttpError::new(
                StatusCode::NOT_FOUND,
                Code::NotFound,
                format!("no endpoint {}; there are {}", uri.path(), endpoint_list()),
            ))
        })?;
        if method != HttpMethod::GET {
            return Err(refuse(HttpError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                Code::Unimplemented,
                format!("{method} is not answered; every endpoint is GET"),
            )));
        }
        let rpc = route.method();
        Self::of(route, uri.query(), batch_limit).map_err(|error| BadRequest {
            method: Some(rpc),
            error,
        })
    }

    /// What `route` asks with the query `query`.
    fn of(route: Route, query: Option<&str>, batch_limit: usize) -> Result<Self, HttpError> {
        let query = Query::parse(query)?;
        query.only(route.endpoint.parameters)?;
        let format = query.format()?;
        let capture = route.capture.unwrap_or_default();
        Ok(match route.endpoint.method {
            Method::Resolve => {
                let mut request = pid_and_start(&capture)?;
                if let Some(start) = query.one("start_time")? {
                    request.start_time = Some(start_time(start)?);
                }
                Self::Process { request, format }
            }
            Method::ResolveBatch => {
                let requests = query
                    .all("pid")
                    .map(pid_and_start)
                    .collect::<Result<Vec<_>, _>>()?;
                if requests.is_empty() {
                    return Err(Status::invalid_argument(
                        "no pid given: /v1/processes?pid=1&pid=2…",
                    )
                    .into());
                }
                if let Err(status) = check_batch(requests.len(), batch_limit) {
                    // The gRPC code of an oversized batch, with the HTTP
                    // status that says what is wrong with it.
                    let mut e = HttpError::from(status);
                    e.status = StatusCode::PAYLOAD_TOO_LARGE;
                    return Err(e);
                }
                Self::Processes { requests, format }
            }
            Method::ListContainers => Self::Containers {
                filter: proto::ListContainersRequest {
                    runtime_namespace: query.one("namespace")?.map(str::to_owned),
                    pod_name: query.one("pod")?.map(str::to_owned),
                    pod_namespace: query.one("pod_namespace")?.map(str::to_owned),
                    labels: query.all("label").map(str::to_owned).collect(),
                    include_deleted: query.flag("all")?,
                },
                format,
            },
            Method::ListProcesses => Self::ContainerProcesses {
                request: proto::ListProcessesRequest {
                    container_id: capture,
                    runtime_namespace: query.one("namespace")?.map(str::to_owned),
                },
                format,
            },
            Method::WhoAmI => Self::WhoAmI { format },
            Method::Status => Self::Status,
            Method::Watch => Self::Watch,
        })
    }

    /// The gRPC method this request is: its policy and its metrics.
    pub fn method(&self) -> Method {
        match self {
            Self::Process { .. } => Method::Resolve,
            Self::Processes { .. } => Method::ResolveBatch,
            Self::Containers { .. } => Method::ListContainers,
            Self::ContainerProcesses { .. } => Method::ListProcesses,
            Self::WhoAmI { .. } => Method::WhoAmI,
            Self::Status => Method::Status,
            Self::Watch => Method::Watch,
        }
    }
}

/// The HTTP side of the API.
pub(crate) struct HttpApi {
    service: Arc<PidmapService>,
    policy: Policy,
    /// Longest request target (path and query) answered.
    max_request_bytes: usize,
}

impl HttpApi {
    pub(crate) fn new(
        service: Arc<PidmapService>,
        policy: Policy,
        max_request_bytes: usize,
    ) -> Self {
        Self {
            service,
            policy,
            max_request_bytes,
        }
    }

    /// Answers one request; every error is a JSON answer.
    pub(crate) async fn handle<B>(&self, req: Request<B>) -> Response<Body> {
        let started = Instant::now();
        // No endpoint takes a body: it is never read.
        let (req, _) = req.into_parts();
        let parsed = Ask::parse(
            &req.method,
            &req.uri,
            self.max_request_bytes,
            self.service.batch_limit(),
        );
        let (method, answer) = match parsed {
            Ok(ask) => {
                let method = ask.method();
                let answer = match self.policy.check(method, req.extensions.get::<Peer>()) {
                    Ok(()) => self.answer(ask, &req).await,
                    Err(status) => Err(status.into()),
                };
                (Some(method), answer)
            }
            Err(BadRequest { method, error }) => (method, Err(error)),
        };
        let (code, response) = match answer {
            Ok(response) => (Code::Ok, response),
            Err(e) => (e.code, e.response()),
        };
        if let Some(method) = method {
            self.policy.record(method, code, started);
        }
        response
    }

    async fn answer(&self, ask: Ask, req: &Parts) -> Result<Response<Body>, HttpError> {
        let service = &self.service;
        let value = match ask {
            Ask::Process { request, format } => {
                let records = service.resolve_all(std::slice::from_ref(&request)).await?;
                let record = records.first().cloned().unwrap_or_default();
                render_record(&record, format)
            }
            Ask::Processes { requests, format } => {
                let records = service.resolve_all(&requests).await?;
                render_records(&records, format)
            }
            Ask::Containers { filter, format } => Value::Array(
                service
                    .containers(&filter)
                    .iter()
                    .map(|c| match format {
                        Format::Json => json::container(c),
                        Format::Otel => json::otel_container(c),
                    })
                    .collect(),
            ),
            Ask::ContainerProcesses { request, format } => {
                render_records(&service.processes(&request)?, format)
            }
            Ask::WhoAmI { format } => {
                let record = service.who_is(req.extensions.get::<Peer>()).await?;
                render_record(&record, format)
            }
            Ask::Status => json::status(&service.status()),
            Ask::Watch => return Ok(self.watch()),
        };
        Ok(json_response(StatusCode::OK, &value))
    }

    /// `GET /v1/watch`: one JSON line per event; a stream cut off (a slow
    /// reader, the agent shutting down) ends with an error line.
    fn watch(&self) -> Response<Body> {
        let lines = self.service.watch().map(|item| {
            let value = match item {
                Ok(proto::WatchEvent { event: Some(event) }) => json::watch_event(&event),
                Ok(proto::WatchEvent { event: None }) => Value::Null,
                Err(status) => return Ok(Frame::data(ndjson_error_line(&status))),
            };
            Ok::<_, Infallible>(Frame::data(line(&value)))
        });
        let mut response = Response::new(Body::new(StreamBody::new(lines)));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/x-ndjson"),
        );
        response
    }
}

fn render_record(r: &proto::ProcessRecord, format: Format) -> Value {
    match format {
        Format::Json => json::record(r),
        Format::Otel => json::otel_record(r),
    }
}

fn render_records(records: &[proto::ProcessRecord], format: Format) -> Value {
    Value::Array(records.iter().map(|r| render_record(r, format)).collect())
}

/// `value` and a newline.
fn line(value: &Value) -> Bytes {
    let mut bytes = value.to_string().into_bytes();
    bytes.push(b'\n');
    Bytes::from(bytes)
}

fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(Body::new(Full::new(line(value))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_has_one_endpoint_and_the_list_names_them_all() {
        for method in Method::ALL {
            let n = ENDPOINTS.iter().filter(|e| e.method == method).count();
            assert_eq!(n, 1, "{method:?}");
        }
        let list = endpoint_list();
        assert!(
            list.starts_with("GET /v1/processes/{pid}, /v1/processes,"),
            "{list}"
        );
        assert!(list.ends_with("/v1/status, /v1/watch"), "{list}");
    }

    #[test]
    fn routes_are_found_by_their_paths() {
        let parsed = |path| Route::parse(path).map(|r| (r.method(), r.capture));
        assert_eq!(parsed("/v1/processes"), Some((Method::ResolveBatch, None)));
        assert_eq!(
            parsed("/v1/processes/4711"),
            Some((Method::Resolve, Some("4711".into())))
        );
        assert_eq!(
            parsed("/v1/containers/a%2Fb/processes"),
            Some((Method::ListProcesses, Some("a/b".into())))
        );
        for path in ["/v1/status", "/v1/whoami", "/v1/watch", "/v1/containers"] {
            assert!(Route::parse(path).is_some(), "{path}");
        }
        for path in [
            "/",
            "/v1",
            "/v1/",
            "/v1/processes/",
            "/v1/status/x",
            "/v2/status",
        ] {
            assert_eq!(Route::parse(path), None, "{path}");
        }
    }

    #[test]
    fn queries_are_decoded_and_checked() {
        let q = Query::parse(Some("pid=1&pid=2%3A5&label=a%3Db&all&namespace=k8s.io+x")).unwrap();
        assert_eq!(q.all("pid").collect::<Vec<_>>(), ["1", "2:5"]);
        assert_eq!(q.one("label").unwrap(), Some("a=b"));
        assert_eq!(q.one("namespace").unwrap(), Some("k8s.io x"));
        assert!(q.flag("all").unwrap());
        assert!(q.one("pid").is_err(), "given twice");
        assert!(q.only(&["pid", "label", "all", "namespace"]).is_ok());
        let err = q.only(&["pid"]).unwrap_err();
        assert!(err.message().contains("\"label\""), "{}", err.message());
        assert!(Query::parse(Some("a=%ff")).is_err());
        assert!(
            Query::parse(Some("all=maybe"))
                .unwrap()
                .flag("all")
                .is_err()
        );
        assert_eq!(Query::parse(None).unwrap().format().unwrap(), Format::Json);
        assert_eq!(
            Query::parse(Some("format=otel")).unwrap().format().unwrap(),
            Format::Otel
        );
        assert!(Query::parse(Some("format=xml")).unwrap().format().is_err());
    }

    #[test]
    fn pids_may_carry_a_start_time() {
        let r = pid_and_start("4711:812345").unwrap();
        assert_eq!((r.pid, r.start_time), (4711, Some(812_345)));
        assert_eq!(
            pid_and_start("-3").unwrap().pid,
            -3,
            "the service refuses it"
        );
        for bad in ["abc", "1:x", "", ":5"] {
            assert_eq!(
                pid_and_start(bad).unwrap_err().code(),
                Code::InvalidArgument,
                "{bad}"
            );
        }
    }

    fn ask(method: &HttpMethod, target: &str) -> Result<Ask, BadRequest> {
        Ask::parse(method, &target.parse().expect("a target"), 256, 3)
    }

    #[test]
    fn requests_are_parsed_whole_before_anything_is_answered() {
        let get = &HttpMethod::GET;
        assert_eq!(
            ask(get, "/v1/processes/7:99?format=otel").unwrap(),
            Ask::Process {
                request: proto::ResolveRequest {
                    pid: 7,
                    start_time: Some(99)
                },
                format: Format::Otel
            }
        );
        let Ask::Processes { requests, .. } = ask(get, "/v1/processes?pid=1&pid=2").unwrap() else {
            panic!("a batch");
        };
        assert_eq!(requests.len(), 2);
        let Ask::Containers { filter, .. } =
            ask(get, "/v1/containers?label=a%3Db&all=1&namespace=k8s.io").unwrap()
        else {
            panic!("containers");
        };
        assert_eq!(filter.labels, ["a=b"]);
        assert!(filter.include_deleted);
        assert_eq!(ask(get, "/v1/status").unwrap().method(), Method::Status);

        let refused = |method, target: &str| {
            let e = ask(method, target).unwrap_err();
            (e.method, e.error.status)
        };
        assert_eq!(refused(get, "/v2/x"), (None, StatusCode::NOT_FOUND));
        assert_eq!(
            refused(&HttpMethod::POST, "/v1/status"),
            (None, StatusCode::METHOD_NOT_ALLOWED)
        );
        assert_eq!(
            refused(get, &format!("/v1/processes?pid={}", "1".repeat(300))),
            (None, StatusCode::PAYLOAD_TOO_LARGE)
        );
        assert_eq!(
            refused(get, "/v1/processes?pid=1&pid=2&pid=3&pid=4"),
            (Some(Method::ResolveBatch), StatusCode::PAYLOAD_TOO_LARGE)
        );
        assert_eq!(
            refused(get, "/v1/status?format=json"),
            (Some(Method::Status), StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            refused(get, "/v1/processes/x"),
            (Some(Method::Resolve), StatusCode::BAD_REQUEST)
        );
    }

    #[test]
    fn statuses_match_the_grpc_codes() {
        assert_eq!(http_status(Code::InvalidArgument), StatusCode::BAD_REQUEST);
        assert_eq!(http_status(Code::PermissionDenied), StatusCode::FORBIDDEN);
        assert_eq!(
            http_status(Code::Unavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(http_status(Code::NotFound), StatusCode::NOT_FOUND);
    }
}
