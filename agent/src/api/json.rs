//! The JSON shape of the API's answers, in one place: what `pidmap … -o
//! json` prints and what the HTTP API answers. Every key is always present
//! (null when not known). [`otel_record`] and [`otel_container`] give the
//! same facts under the OpenTelemetry semantic conventions' resource
//! attribute names (`-o otel`, `?format=otel`).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::{
    convert::{source_name, state_name},
    proto::{self, watch_event::Event},
};

/// A process record, flat.
pub(crate) fn record(r: &proto::ProcessRecord) -> Value {
    let c = r.container.as_ref();
    let labels: BTreeMap<&str, &str> = c
        .map(|c| {
            c.labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "pid": r.pid,
        "start_time": r.start_time,
        "state": state_name(r.state),
        "source": source_name(r.source),
        "container_id": c.map(|c| c.id.clone()).or_else(|| r.path_container_id.clone()),
        "runtime_namespace": c.map(|c| c.runtime_namespace.clone()),
        "image": c.map(|c| c.image.clone()).filter(|i| !i.is_empty()),
        "pod_name": c.and_then(|c| c.pod_name.clone()),
        "pod_namespace": c.and_then(|c| c.pod_namespace.clone()),
        "pod_uid": c.and_then(|c| c.pod_uid.clone()).or_else(|| r.path_pod_uid.clone()),
        "container_name": c.and_then(|c| c.container_name.clone()),
        "cgroup_id": r.cgroup_id,
        "cgroup_hierarchy": r.cgroup_hierarchy,
        "cgroup_path": r.cgroup_path,
        "ppid": r.ppid,
        "comm": r.comm,
        "exit_status": r.exit_status,
        "labels": labels,
    })
}

/// A container, flat.
pub(crate) fn container(c: &proto::Container) -> Value {
    json!({
        "container_id": c.id,
        "runtime_namespace": c.runtime_namespace,
        "image": (!c.image.is_empty()).then_some(&c.image),
        "status": c.status,
        "task_pid": c.task_pid,
        "exit_code": c.exit_code,
        "created_at": c.created_at,
        "deleted": c.deleted,
        "pod_name": c.pod_name,
        "pod_namespace": c.pod_namespace,
        "pod_uid": c.pod_uid,
        "container_name": c.container_name,
        "sandbox_id": c.sandbox_id,
        "is_sandbox": c.is_sandbox,
        "cgroup_id": c.cgroup_id,
        "cgroup_hierarchy": c.cgroup_hierarchy,
        "cgroup_path": c.cgroup_path,
        "runtime": (!c.runtime.is_empty()).then_some(&c.runtime),
        "source": source_name(c.source),
        "labels": c.labels.iter().collect::<BTreeMap<_, _>>(),
    })
}

/// The agent's readiness and counters.
pub(crate) fn status(s: &proto::StatusResponse) -> Value {
    serde_json::to_value(s).unwrap_or_else(|e| error(tonic::Code::Internal, &e.to_string()))
}

/// A `Watch` event as one JSON line: `{"event": KIND, "record"|"container": …}`.
pub(crate) fn watch_event(event: &Event) -> Value {
    match event {
        Event::Process(r) => json!({"event": "process", "record": record(r)}),
        Event::ProcessChanged(r) => json!({"event": "process_changed", "record": record(r)}),
        Event::Container(c) => json!({"event": "container", "container": container(c)}),
        Event::ContainerChanged(c) => {
            json!({"event": "container_changed", "container": container(c)})
        }
        Event::ContainerDeleted(c) => {
            json!({"event": "container_deleted", "container": container(c)})
        }
        Event::SnapshotDone(_) => json!({"event": "snapshot_done"}),
    }
}

/// An error: `{"error": {"code": "InvalidArgument", "message": …}}`, the
/// code named as in the request metrics (grpc-go's names).
pub(crate) fn error(code: tonic::Code, message: &str) -> Value {
    json!({"error": {"code": crate::util::code_name(code), "message": message}})
}

/// A process record as OpenTelemetry resource attributes (semantic
/// conventions: `process.*`, `container.*`, `k8s.*`); attributes that are
/// not known are left out, as the conventions want.
pub(crate) fn otel_record(r: &proto::ProcessRecord) -> Value {
    let mut attrs = Map::new();
    attrs.insert("process.pid".into(), r.pid.into());
    put(&mut attrs, "process.parent_pid", r.ppid);
    put(&mut attrs, "process.executable.name", r.comm.clone());
    match &r.container {
        Some(c) => container_attributes(&mut attrs, c),
        None => {
            put(&mut attrs, "container.id", r.path_container_id.clone());
            put(&mut attrs, "k8s.pod.uid", r.path_pod_uid.clone());
            let runtime = r.path_runtime.as_deref().and_then(otel_runtime);
            put(&mut attrs, "container.runtime", runtime);
        }
    }
    Value::Object(attrs)
}

/// A container as OpenTelemetry resource attributes.
pub(crate) fn otel_container(c: &proto::Container) -> Value {
    let mut attrs = Map::new();
    container_attributes(&mut attrs, c);
    Value::Object(attrs)
}

fn container_attributes(attrs: &mut Map<String, Value>, c: &proto::Container) {
    attrs.insert("container.id".into(), c.id.clone().into());
    // The name the runtime knows the container by: for CRI containers the
    // name in the pod spec (CRI's ContainerMetadata.name), which is also
    // `k8s.container.name`.
    put(attrs, "container.name", c.container_name.clone());
    if let Some((name, tag)) = split_image(&c.image) {
        attrs.insert("container.image.name".into(), name.into());
        if let Some(tag) = tag {
            attrs.insert("container.image.tags".into(), json!([tag]));
        }
    }
    let runtime = if c.source == proto::Source::CgroupPath as i32 {
        otel_runtime(&c.runtime)
    } else {
        Some("containerd")
    };
    put(attrs, "container.runtime", runtime);
    put(attrs, "k8s.pod.name", c.pod_name.clone());
    put(attrs, "k8s.pod.uid", c.pod_uid.clone());
    put(attrs, "k8s.namespace.name", c.pod_namespace.clone());
    put(attrs, "k8s.container.name", c.container_name.clone());
}

fn put(attrs: &mut Map<String, Value>, key: &str, value: Option<impl Into<Value>>) {
    if let Some(value) = value {
        attrs.insert(key.to_owned(), value.into());
    }
}

/// `container.runtime` for a runtime recognised from a cgroup path; none
/// for a kubelet layout that does not say which runtime it is.
fn otel_runtime(path_runtime: &str) -> Option<&str> {
    (!path_runtime.is_empty() && path_runtime != "kubepods").then_some(path_runtime)
}

/// An image reference's name and tag: `registry:5000/ns/app:1.2` →
/// (`registry:5000/ns/app`, `1.2`); a digest (`@sha256:…`) is dropped, since
/// it is not a tag. `None` for an empty reference.
fn split_image(image: &str) -> Option<(&str, Option<&str>)> {
    let name = image.split('@').next().unwrap_or(image);
    if name.is_empty() {
        return None;
    }
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    Some(match name[last_slash..].rfind(':') {
        Some(colon) => {
            let at = last_slash + colon;
            (&name[..at], Some(&name[at + 1..]).filter(|t| !t.is_empty()))
        }
        None => (name, None),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_has_every_field_of_the_message_by_its_proto_name() {
        use prost::Message as _;
        let s = proto::StatusResponse {
            ready: true,
            version: "1.2.3".into(),
            catch_up_timeouts: 7,
            ..Default::default()
        };
        let v = status(&s);
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        // Every field the descriptor the agent serves (reflection) names.
        let set = prost_types::FileDescriptorSet::decode(proto::FILE_DESCRIPTOR_SET).unwrap();
        let fields: Vec<String> = set
            .file
            .iter()
            .flat_map(|f| &f.message_type)
            .filter(|m| m.name() == "StatusResponse")
            .flat_map(|m| m.field.iter().map(|f| f.name().to_owned()))
            .collect();
        assert!(!fields.is_empty());
        let mut want: Vec<&str> = fields.iter().map(String::as_str).collect();
        want.sort_unstable();
        let mut got = keys.clone();
        got.sort_unstable();
        assert_eq!(got, want);
        assert_eq!(
            (v["ready"].as_bool(), v["catch_up_timeouts"].as_u64()),
            (Some(true), Some(7))
        );
        assert_eq!(v["version"], "1.2.3");
    }

    #[test]
    fn image_references_split_into_name_and_tag() {
        assert_eq!(
            split_image("registry.test/nginx:1.27"),
            Some(("registry.test/nginx", Some("1.27")))
        );
        assert_eq!(
            split_image("registry:5000/ns/app"),
            Some(("registry:5000/ns/app", None))
        );
        assert_eq!(
            split_image("registry:5000/app:v2@sha256:abc"),
            Some(("registry:5000/app", Some("v2")))
        );
        assert_eq!(split_image("busybox"), Some(("busybox", None)));
        assert_eq!(split_image("app@sha256:abc"), Some(("app", None)));
        assert_eq!(split_image(""), None);
    }

    fn k8s_record() -> proto::ProcessRecord {
        proto::ProcessRecord {
            pid: 4711,
            start_time: Some(812_345),
            state: proto::ProcessState::Running as i32,
            source: proto::Source::Containerd as i32,
            ppid: Some(4690),
            comm: Some("nginx".into()),
            container: Some(proto::Container {
                id: "3f1a".into(),
                runtime_namespace: "k8s.io".into(),
                image: "registry.test/nginx:1.27".into(),
                runtime: "io.containerd.runc.v2".into(),
                pod_name: Some("web-0".into()),
                pod_namespace: Some("shop".into()),
                pod_uid: Some("0b8f".into()),
                container_name: Some("nginx".into()),
                source: proto::Source::Containerd as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn records_keep_every_key() {
        let v = record(&k8s_record());
        assert_eq!(v["container_id"], "3f1a");
        assert_eq!(v["state"], "running");
        assert_eq!(v["cgroup_id"], Value::Null);
        assert_eq!(v["exit_status"], Value::Null, "running");
        assert_eq!(v.as_object().map(Map::len), Some(18));
        let exited = record(&proto::ProcessRecord {
            state: proto::ProcessState::Exited as i32,
            exit_status: Some(256),
            ..k8s_record()
        });
        assert_eq!(exited["exit_status"], 256);
    }

    #[test]
    fn containers_say_when_they_were_created_and_whether_deleted() {
        let c = proto::Container {
            id: "3f1a".into(),
            created_at: Some(1_700_000_000),
            deleted: true,
            ..Default::default()
        };
        let v = container(&c);
        assert_eq!(
            (&v["created_at"], &v["deleted"]),
            (&json!(1_700_000_000), &json!(true))
        );
        assert_eq!(
            container(&proto::Container::default())["created_at"],
            Value::Null
        );
    }

    #[test]
    fn otel_names_follow_the_semantic_conventions() {
        let v = otel_record(&k8s_record());
        let expected = json!({
            "process.pid": 4711,
            "process.parent_pid": 4690,
            "process.executable.name": "nginx",
            "container.id": "3f1a",
            "container.name": "nginx",
            "container.image.name": "registry.test/nginx",
            "container.image.tags": ["1.27"],
            "container.runtime": "containerd",
            "k8s.pod.name": "web-0",
            "k8s.pod.uid": "0b8f",
            "k8s.namespace.name": "shop",
            "k8s.container.name": "nginx",
        });
        assert_eq!(v, expected);
    }

    #[test]
    fn otel_of_a_host_process_and_a_path_known_container() {
        let host = proto::ProcessRecord {
            pid: 1,
            comm: Some("init".into()),
            ..Default::default()
        };
        assert_eq!(
            otel_record(&host),
            json!({"process.pid": 1, "process.executable.name": "init"})
        );
        let crio = proto::ProcessRecord {
            pid: 9,
            path_container_id: Some("abc".into()),
            path_runtime: Some("cri-o".into()),
            path_pod_uid: Some("u1".into()),
            ..Default::default()
        };
        assert_eq!(
            otel_record(&crio),
            json!({"process.pid": 9, "container.id": "abc", "container.runtime": "cri-o", "k8s.pod.uid": "u1"})
        );
    }

    #[test]
    fn errors_name_their_code() {
        let e = error(tonic::Code::Unavailable, "starting");
        assert_eq!(
            e,
            json!({"error": {"code": "Unavailable", "message": "starting"}})
        );
    }
}
